//! The gRPC API against the real service: GetProcess errors with details, list filters,
//! AIP-158 paging (stable while events arrive, tokens bound to their filter), reflection v1
//! and v1alpha, and standard health checking.

use crate::common::{TestApp, TestDb, config};
use process_state::api::pb::{
    GetProcessRequest, ListProcessesRequest, ListTasksRequest, ProcessStatus, TaskStatus, TaskType,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tonic::Code;
use tonic_types::StatusExt;

fn event(id: &str, event_type: &str, time: i64, body: Value) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": id, "event_type": event_type, "create_time": time.to_string(),
                   "token": crate::common::VERIFICATION_TOKEN, "tenant_key": "t", "app_id": "cli_a1b2c3d4e5f60718"},
        "event": body,
    })
}

fn task_event(n: usize, process: &str, status: i32, biz: &str) -> Value {
    let approver = format!("{:019}", 7_000_000_000_000_000_000u64 + n as u64);
    event(
        &format!("task-{n}-{status}"),
        "corehr.process.approver.updated_v2",
        1_000 + n as i64,
        json!({"process_id": process, "approver_id": approver, "type": if n.is_multiple_of(5) { 5 } else { 1 }, "status": status,
               "biz_type": biz, "flow_definition_id": "people_1_2", "node_definition_id": format!("approval_{}", n % 3),
               "node_id_str": "n1"}),
    )
}

crate::on_both_stores! {
    #[tokio::test]
    async fn get_process_errors_carry_details(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let mut api = app.api().await;

        let status = api
            .get_process(GetProcessRequest {
                process_id: "123".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("PROCESS_NOT_FOUND", "processstate.v1")
        );
        assert_eq!(info.metadata["process_id"], "123");

        for bad in ["", "12 3", "x".repeat(65).as_str()] {
            let status = api
                .get_process(GetProcessRequest {
                    process_id: bad.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
            let violations = status
                .get_details_bad_request()
                .expect("BadRequest")
                .field_violations;
            assert_eq!(violations[0].field, "process_id");
        }
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn get_process_returns_children_and_unknown_status_for_child_only_processes(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let events = [
            task_event(1, "900", 1, "leave"),
            event(
                "n1",
                "corehr.process.node.updated_v2",
                5,
                json!({"process_id": "900", "process_node_id": "n1", "node_type": 1, "node_status": 1, "node_definition_id": "approval_1"}),
            ),
            event(
                "c1",
                "corehr.process.cc.updated_v2",
                6,
                json!({"process_id": "900", "approver_id": "cc1", "status": 5}),
            ),
        ];
        for e in &events {
            assert_eq!(app.deliver(e).await.0, 200);
        }
        let mut api = app.api().await;
        let response = api
            .get_process(GetProcessRequest {
                process_id: "900".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let p = response.process.unwrap();
        assert_eq!(p.status(), ProcessStatus::Unspecified);
        assert_eq!(p.event_time, None);
        assert_eq!(p.biz_type, "leave");
        assert_eq!((p.nodes.len(), p.tasks.len(), p.cc_tasks.len()), (1, 1, 1));
        assert_eq!(p.tasks[0].status(), TaskStatus::Todo);
        assert_eq!(p.tasks[0].process_node_id, "n1");
        assert_eq!(response.revision, 3);

        // A process event now fills the status in.
        let e = event(
            "p1",
            "corehr.process.status.update_v2",
            7,
            json!({"process_id": "900", "status": 15}),
        );
        assert_eq!(app.deliver(&e).await.0, 200);
        let p = api
            .get_process(GetProcessRequest {
                process_id: "900".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .process
            .unwrap();
        assert_eq!(p.status(), ProcessStatus::Revoking);
        assert_eq!(p.revision, 4);
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn list_filters(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        for n in 0..30 {
            let process = format!("{}", 100 + n % 4);
            let status = if n % 2 == 0 { 1 } else { 3 };
            let biz = if n < 15 { "leave" } else { "onboarding" };
            assert_eq!(
                app.deliver(&task_event(n, &process, status, biz)).await.0,
                200
            );
        }
        let e = event(
            "ps",
            "corehr.process.status.update_v2",
            9_999,
            json!({"process_id": "101", "status": 9, "biz_type": "leave"}),
        );
        assert_eq!(app.deliver(&e).await.0, 200);
        let mut api = app.api().await;
        let list = |req: ListTasksRequest| {
            let mut api = api.clone();
            async move { api.list_tasks(req).await.unwrap().into_inner() }
        };

        let all = list(ListTasksRequest::default()).await;
        assert_eq!(all.tasks.len(), 30);
        assert_eq!(all.next_page_token, "");
        assert_eq!(all.revision, 31);
        let ids: Vec<_> = all.tasks.iter().map(|t| t.approver_id.clone()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by id");

        let r = list(ListTasksRequest {
            process_id: "101".into(),
            ..Default::default()
        })
        .await;
        assert!(r.tasks.iter().all(|t| t.process_id == "101") && r.tasks.len() == 8);
        let r = list(ListTasksRequest {
            statuses: vec![TaskStatus::Done as i32],
            ..Default::default()
        })
        .await;
        assert_eq!(r.tasks.len(), 15);
        let r = list(ListTasksRequest {
            types: vec![TaskType::Form as i32],
            ..Default::default()
        })
        .await;
        assert_eq!(r.tasks.len(), 6);
        let r = list(ListTasksRequest {
            biz_type: "onboarding".into(),
            statuses: vec![1, 3],
            ..Default::default()
        })
        .await;
        assert_eq!(r.tasks.len(), 15);
        let r = list(ListTasksRequest {
            node_definition_id: "approval_0".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(r.tasks.len(), 10);
        let r = list(ListTasksRequest {
            flow_definition_id: "people_9_9".into(),
            ..Default::default()
        })
        .await;
        assert!(r.tasks.is_empty());
        let future = prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 3600,
            nanos: 0,
        };
        let r = list(ListTasksRequest {
            changed_since: Some(future),
            ..Default::default()
        })
        .await;
        assert!(r.tasks.is_empty());
        let past = prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() - 3600,
            nanos: 0,
        };
        let r = list(ListTasksRequest {
            changed_since: Some(past),
            ..Default::default()
        })
        .await;
        assert_eq!(r.tasks.len(), 30);

        let processes = api
            .list_processes(ListProcessesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(processes.processes.len(), 4);
        assert!(processes.processes.iter().all(|p| p.tasks.is_empty()));
        let done = api
            .list_processes(ListProcessesRequest {
                statuses: vec![ProcessStatus::Completed as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            done.processes
                .iter()
                .map(|p| p.process_id.as_str())
                .collect::<Vec<_>>(),
            ["101"]
        );
        let leave = api
            .list_processes(ListProcessesRequest {
                biz_type: "leave".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // A process's business type is that of the newest event carrying one (per-field merge):
        // 101's process event; the others' newest tasks were onboarding tasks.
        assert_eq!(
            leave
                .processes
                .iter()
                .map(|p| p.process_id.as_str())
                .collect::<Vec<_>>(),
            ["101"],
            "only 101's newest event says leave"
        );
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn paging_is_stable_while_events_arrive_and_tokens_are_bound(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        // Even-numbered tasks exist before paging starts; odd ones arrive while paging.
        for n in (0..60).step_by(2) {
            assert_eq!(app.deliver(&task_event(n, "500", 1, "leave")).await.0, 200);
        }
        let before: BTreeSet<String> = (0..60)
            .step_by(2)
            .map(|n| format!("{:019}", 7_000_000_000_000_000_000u64 + n))
            .collect();
        let mut api = app.api().await;
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut arriving = (1..60).step_by(2);
        loop {
            let page = api
                .list_tasks(ListTasksRequest {
                    page_size: 7,
                    page_token: token.clone(),
                    biz_type: "leave".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.tasks.len() <= 7);
            seen.extend(page.tasks.iter().map(|t| t.approver_id.clone()));
            // New tasks and changes to existing ones arrive between pages.
            for n in arriving.by_ref().take(3) {
                assert_eq!(app.deliver(&task_event(n, "500", 1, "leave")).await.0, 200);
                assert_eq!(
                    app.deliver(&task_event(n - 1, "500", 3, "leave")).await.0,
                    200
                );
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        for n in arriving {
            assert_eq!(app.deliver(&task_event(n, "500", 1, "leave")).await.0, 200);
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no item repeated");
        assert!(
            before.is_subset(&unique),
            "no item that existed before paging was skipped"
        );

        // A token is bound to its filter.
        let first = api
            .list_tasks(ListTasksRequest {
                page_size: 5,
                biz_type: "leave".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let status = api
            .list_tasks(ListTasksRequest {
                page_size: 5,
                page_token: first.next_page_token.clone(),
                biz_type: "onboarding".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "page_token"
        );
        // ...but page size may change between pages.
        api.list_tasks(ListTasksRequest {
            page_size: 9,
            page_token: first.next_page_token,
            biz_type: "leave".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let status = api
            .list_tasks(ListTasksRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = api
            .list_processes(ListProcessesRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let big = api
            .list_tasks(ListTasksRequest {
                page_size: 5000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(big.tasks.len(), 60);
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn reflection_v1_and_v1alpha_and_health(backend) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        use tonic_reflection::pb::{v1, v1alpha};

        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let channel = app.grpc_channel().await;

        let mut health = HealthClient::new(channel.clone());
        for service in ["", "processstate.v1.ProcessService"] {
            let mut status = ServingStatus::Unknown;
            for _ in 0..50 {
                match health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().status() == ServingStatus::Serving => {
                        status = ServingStatus::Serving;
                        break;
                    }
                    _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
            assert_eq!(status, ServingStatus::Serving, "{service:?}");
        }

        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let mut stream = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("v1 reflection did not list services")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"processstate.v1.ProcessService")
                && names.contains(&"grpc.health.v1.Health"),
            "{names:?}"
        );

        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "processstate.v1.ProcessService".into(),
                ),
            ),
        };
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let mut stream = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .message_response
            .unwrap();
        assert!(
            matches!(response, v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(f) if !f.file_descriptor_proto.is_empty())
        );
        app.stop().await;
    }
}

crate::on_both_stores! {
    /// gzip and zstd are accepted and sent, negotiated as gRPC does: a compressed request is
    /// served, and an answer is compressed only for a client that accepts it.
    #[tokio::test]
    async fn gzip_and_zstd_are_negotiated(backend) {
        use process_state::api::pb::process_service_client::ProcessServiceClient;
        use tonic::codec::CompressionEncoding::{Gzip, Zstd};
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let events: Vec<Value> = (0..50).map(|n| task_event(n, "77", 1, "leave")).collect();
        for e in &events {
            assert_eq!(app.deliver(e).await.0, 200);
        }
        for encoding in [Gzip, Zstd] {
            let mut api = ProcessServiceClient::new(app.grpc_channel().await)
                .send_compressed(encoding)
                .accept_compressed(encoding);
            let page = api
                .list_tasks(ListTasksRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("{encoding:?}: {s:?}"))
                .into_inner();
            assert_eq!(page.tasks.len(), 50, "{encoding:?}");
        }
        // On the wire: asked for gzip, the answer says gzip and its message is flagged compressed;
        // not asked, it is plain.
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        for (accept, want) in [(Some("gzip"), Some("gzip")), (None, None)] {
            let mut request = client
                .post(format!(
                    "http://{}/processstate.v1.ProcessService/ListTasks",
                    app.grpc
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(vec![0u8, 0, 0, 0, 0]);
            if let Some(accept) = accept {
                request = request.header("grpc-accept-encoding", accept);
            }
            let response = request.send().await.unwrap();
            let encoding = response
                .headers()
                .get("grpc-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(encoding.as_deref(), want);
            let body = response.bytes().await.unwrap();
            assert_eq!(body[0], u8::from(want.is_some()), "compressed-flag byte");
        }
        app.stop().await;
    }
}

crate::on_both_stores! {
    /// Inputs are bounded with a BadRequest naming the field; page tokens are bound to their RPC
    /// and to a canonical filter; an over-size request is RESOURCE_EXHAUSTED.
    #[tokio::test]
    async fn inputs_are_bounded_and_tokens_bound_to_rpc_and_canonical_filter(backend) {
        use process_state::api::pb::WatchProcessesRequest;
        use process_state::api::pb::process_service_client::ProcessServiceClient;
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        for n in 0..6 {
            assert_eq!(
                app.deliver(&task_event(n, &format!("{}", 810 + n), 1, "leave"))
                    .await
                    .0,
                200
            );
        }
        let mut api = app.api().await;
        let field_of = |status: &tonic::Status| {
            let details = status.get_details_bad_request().expect("a BadRequest");
            details.field_violations[0].field.clone()
        };
        let long_biz = "b".repeat(201);
        let cases: Vec<(&str, ListTasksRequest)> = vec![
            (
                "biz_type",
                ListTasksRequest {
                    biz_type: long_biz.clone(),
                    ..Default::default()
                },
            ),
            (
                "statuses",
                ListTasksRequest {
                    statuses: vec![1; 100],
                    ..Default::default()
                },
            ),
            (
                "types",
                ListTasksRequest {
                    types: vec![1; 100],
                    ..Default::default()
                },
            ),
            (
                "node_definition_id",
                ListTasksRequest {
                    node_definition_id: "n".repeat(65),
                    ..Default::default()
                },
            ),
        ];
        for (field, request) in cases {
            let status = api.list_tasks(request).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert_eq!(field_of(&status), field);
        }
        let status = api
            .list_processes(ListProcessesRequest {
                statuses: vec![1; 1_000_000],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), field_of(&status)),
            (Code::InvalidArgument, "statuses".into())
        );
        let status = api
            .watch_processes(WatchProcessesRequest {
                biz_type: long_biz,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), field_of(&status)),
            (Code::InvalidArgument, "biz_type".into())
        );

        // [A, B] and [B, A] are one filter: a token of one pages the other.
        let first = api
            .list_tasks(ListTasksRequest {
                page_size: 2,
                statuses: vec![1, 2],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let second = api
            .list_tasks(ListTasksRequest {
                page_size: 2,
                statuses: vec![2, 1, 2],
                page_token: first.next_page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("the same filter in another order")
            .into_inner();
        assert_eq!(second.tasks.len(), 2);
        assert_ne!(first.tasks[0].approver_id, second.tasks[0].approver_id);

        // A ListProcesses token is refused by ListTasks, even with the same (empty) filter.
        let processes = api
            .list_processes(ListProcessesRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let status = api
            .list_tasks(ListTasksRequest {
                page_size: 1,
                page_token: processes.next_page_token,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), field_of(&status)),
            (Code::InvalidArgument, "page_token".into())
        );

        // Over the request size limit: RESOURCE_EXHAUSTED, as the gRPC spec says.
        let mut big = ProcessServiceClient::new(app.grpc_channel().await);
        let status = big
            .list_tasks(ListTasksRequest {
                biz_type: "x".repeat(2 * 1024 * 1024),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        app.stop().await;
    }
}
