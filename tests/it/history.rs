//! `ListProcessChanges`: a process's history from the change log, oldest first, paged with
//! tokens bound to the process; each change names its event's type and source.

use crate::common::{TestApp, TestDb, config};
use process_state::api::pb::{EventSource, ListProcessChangesRequest};
use process_state::simulate::scenario::process_events;
use rand::{SeedableRng, rngs::StdRng};
use tonic::Code;

crate::on_both_stores! {
    #[tokio::test]
    async fn a_process_history_pages_through_every_change_it_had(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let tenant = crate::common::tenant();
        let mut rng = StdRng::seed_from_u64(11);
        let (mine, _) = process_events(&mut rng, &tenant, 1_719_391_068_000);
        let (other, _) = process_events(&mut rng, &tenant, 1_719_391_068_000);
        let process_id = mine[0]["event"]["process_id"].as_str().unwrap().to_owned();
        // Interleaved with another process's events, so the history has to pick its own.
        for (a, b) in mine.iter().zip(other.iter().chain(std::iter::repeat(&other[0]))) {
            assert_eq!(app.deliver(a).await.0, 200);
            app.deliver(b).await;
        }
        let expected = db.revisions_of(&process_id).await;
        assert!(expected.len() >= 8, "{expected:?}");

        let mut api = app.api().await;
        let (mut revisions, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = api
                .list_process_changes(ListProcessChangesRequest {
                    process_id: process_id.clone(),
                    page_size: 3,
                    page_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            for change in &page.changes {
                let c = change.change.as_ref().unwrap();
                assert_eq!(c.process_id, process_id);
                assert!(change.event_type.starts_with("corehr.process."), "{change:?}");
                assert_eq!(change.source, EventSource::Webhook as i32);
                assert!(c.change_time.is_some());
                revisions.push(change.revision);
            }
            assert!(page.revision >= revisions.last().copied().unwrap_or(0));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(revisions, expected, "every change, in order, once");
        assert_eq!(pages, expected.len().div_ceil(3) + usize::from(expected.len() % 3 == 0));

        // A token is bound to its process; the process id is required.
        let first = api
            .list_process_changes(ListProcessChangesRequest {
                process_id: process_id.clone(),
                page_size: 3,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let other_id = other[0]["event"]["process_id"].as_str().unwrap().to_owned();
        let err = api
            .list_process_changes(ListProcessChangesRequest {
                process_id: other_id,
                page_size: 3,
                page_token: first.next_page_token,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = api
            .list_process_changes(ListProcessChangesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("process_id"), "{err:?}");
        app.stop().await;
    }
}
