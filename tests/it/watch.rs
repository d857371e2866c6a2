//! WatchProcess / WatchProcesses against real services on one real database: ordered,
//! gap-free, duplicate-free streams across replicas, resumable (also across a restart),
//! surviving a killed LISTEN connection and a stalled client, with retention, limits,
//! heartbeats and shutdown behaving as documented.

use crate::common::{TestApp, TestDb, VERIFICATION_TOKEN, config};
use process_state::api::pb::process_service_client::ProcessServiceClient;
use process_state::api::pb::{
    self, GetProcessRequest, WatchEvent, WatchProcessRequest, WatchProcessesRequest,
    watch_event::Kind,
};
use process_state::simulate::scenario::process_events;
use rand::{SeedableRng, rngs::StdRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(20);

/// Realistic events for `n` processes (seeded), and the process ids.
fn scenario(seed: u64, n: usize) -> (Vec<Vec<Value>>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let per_process: Vec<Vec<Value>> = (0..n)
        .map(|_| process_events(&mut rng, &crate::common::tenant(), 1_719_391_068_000).0)
        .collect();
    let ids = per_process
        .iter()
        .map(|e| e[0]["event"]["process_id"].as_str().unwrap().to_owned())
        .collect();
    (per_process, ids)
}

/// Delivers each process's events in order, processes concurrently. A 503 (the event not
/// committed within the webhook's budget: hundreds of senders on a loaded test machine) is
/// redelivered, as Feishu does; any other answer fails the test.
async fn deliver_all(app: &TestApp, per_process: &[Vec<Value>]) {
    futures::future::join_all(per_process.iter().map(|events| async move {
        for e in events {
            let mut status = app.deliver(e).await.0;
            for _ in 0..5 {
                if status != 503 {
                    break;
                }
                eprintln!("503: redelivered");
                status = app.deliver(e).await.0;
            }
            assert_eq!(status, 200);
        }
    }))
    .await;
}

async fn watch_all(
    api: &mut ProcessServiceClient<Channel>,
    start_revision: Option<i64>,
) -> Streaming<pb::WatchProcessesResponse> {
    api.watch_processes(WatchProcessesRequest {
        start_revision,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn next(stream: &mut Streaming<pb::WatchProcessesResponse>) -> WatchEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a message in time")
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

async fn current_revision(db: &TestDb) -> i64 {
    db.counts().await.2
}

/// Reads until a message at `revision` or later arrived; returns all messages read.
async fn read_until(
    stream: &mut Streaming<pb::WatchProcessesResponse>,
    revision: i64,
) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    loop {
        let e = next(stream).await;
        let done = e.revision >= revision
            && matches!(e.kind, Some(Kind::Change(_)) | Some(Kind::Heartbeat(_)));
        events.push(e);
        if done {
            return events;
        }
    }
}

fn change_revisions(events: &[WatchEvent]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Change(_))))
        .map(|e| e.revision)
        .collect()
}

/// Folds watch messages into processes, as a client would.
#[derive(Default)]
struct Fold(BTreeMap<String, pb::Process>);

impl Fold {
    fn apply(&mut self, event: &WatchEvent) {
        match event.kind.as_ref().unwrap() {
            Kind::Reset(_) => self.0.clear(),
            Kind::Snapshot(p) => {
                self.0.insert(p.process_id.clone(), p.clone());
            }
            Kind::Change(c) => {
                let p = self.0.entry(c.process_id.clone()).or_default();
                if let Some(new) = &c.process {
                    *p = pb::Process {
                        nodes: std::mem::take(&mut p.nodes),
                        tasks: std::mem::take(&mut p.tasks),
                        cc_tasks: std::mem::take(&mut p.cc_tasks),
                        ..new.clone()
                    };
                }
                fn put<T: Clone>(rows: &mut Vec<T>, new: &Option<T>, id: impl Fn(&T) -> String) {
                    if let Some(new) = new {
                        rows.retain(|r| id(r) != id(new));
                        rows.push(new.clone());
                        rows.sort_by_key(|r| id(r));
                    }
                }
                put(&mut p.nodes, &c.node, |n| n.process_node_id.clone());
                put(&mut p.tasks, &c.task, |t| t.approver_id.clone());
                put(&mut p.cc_tasks, &c.cc_task, |t| t.approver_id.clone());
            }
            Kind::SnapshotEnd(_) | Kind::Heartbeat(_) => {}
        }
    }
}

#[tokio::test]
async fn a_watcher_on_another_replica_sees_every_change_once_in_order() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let a = TestApp::spawn(config(&db)).await;
    let b = TestApp::spawn(config(&db)).await;
    let (per_process, ids) = scenario(7, 12);
    // One process exists before the watchers start, so the snapshot is not empty.
    deliver_all(&a, &per_process[..1]).await;

    let mut api_b = b.api().await;
    let mut all = watch_all(&mut api_b, None).await;
    let mut one = api_b
        .watch_process(WatchProcessRequest {
            process_id: ids[5].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut fold = Fold::default();
    let mut events = Vec::new();
    loop {
        let e = next(&mut all).await;
        fold.apply(&e);
        let end = matches!(e.kind, Some(Kind::SnapshotEnd(ref s)) if s.process_count == 1);
        events.push(e);
        if end {
            break;
        }
    }
    let snapshot_revision = events.last().unwrap().revision;
    let first = tokio::time::timeout(WAIT, one.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    assert!(
        matches!(
            first.kind,
            Some(Kind::SnapshotEnd(pb::SnapshotEnd { process_count: 0 }))
        ),
        "process 5 is not known yet: {first:?}"
    );

    deliver_all(&a, &per_process[1..]).await;
    let last = current_revision(&db).await;
    let tail = read_until(&mut all, last).await;
    for e in &tail {
        fold.apply(e);
    }
    let revisions = change_revisions(&tail);
    assert_eq!(
        revisions,
        ((snapshot_revision + 1)..=last).collect::<Vec<_>>(),
        "every revision once, in order, no gap"
    );

    for id in &ids {
        let got = api_b
            .get_process(GetProcessRequest {
                process_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .process
            .unwrap();
        assert_eq!(
            fold.0.get(id),
            Some(&got),
            "folded stream equals GetProcess for {id}"
        );
    }

    // The single-process watcher saw exactly that process's revisions.
    let want = db.revisions_of(&ids[5]).await;
    let mut got = Vec::new();
    while got.last() != want.last() {
        let e = tokio::time::timeout(WAIT, one.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if let Some(Kind::Change(c)) = &e.kind {
            assert_eq!(c.process_id, ids[5]);
            got.push(e.revision);
        }
    }
    assert_eq!(got, want);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn resume_after_disconnect_and_after_restart_gives_the_full_sequence() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let a = TestApp::spawn(config(&db)).await;
    let b = TestApp::spawn(config(&db)).await;
    let (per_process, _) = scenario(11, 6);
    deliver_all(&a, &per_process).await;
    let total = current_revision(&db).await;

    let mut first = watch_all(&mut b.api().await, Some(0)).await;
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let e = next(&mut first).await;
        if matches!(e.kind, Some(Kind::Change(_))) {
            seen.push(e.revision);
        }
    }
    drop(first); // disconnect mid-stream
    let resume_at = *seen.last().unwrap();
    let mut second = watch_all(&mut b.api().await, Some(resume_at)).await;
    let more = change_revisions(&read_until(&mut second, 40.min(total)).await);
    seen.extend(&more);
    drop(second);

    // Restart the replica and resume there.
    b.stop().await;
    let b2 = TestApp::spawn(config(&db)).await;
    let resume_at = *seen.last().unwrap();
    let mut third = watch_all(&mut b2.api().await, Some(resume_at)).await;
    seen.extend(change_revisions(&read_until(&mut third, total).await));
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    a.stop().await;
    b2.stop().await;
}

#[tokio::test]
async fn killing_the_listen_connection_loses_nothing() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut cfg = config(&db);
    // Only the doorbell can deliver promptly: a lost LISTEN that never came back would
    // stall the test for a minute and fail it.
    cfg.feed_poll_interval = Duration::from_secs(60);
    let app = TestApp::spawn(cfg).await;
    let mut stream = watch_all(&mut app.api().await, None).await;
    assert!(matches!(
        next(&mut stream).await.kind,
        Some(Kind::SnapshotEnd(_))
    ));
    let pool = db.pool().await;
    let (per_process, _) = scenario(3, 6);
    let mut kills = 0;
    for events in &per_process {
        let killed: Vec<i32> = sqlx::query_scalar(
            "select pid from pg_stat_activity where datname = current_database() and query ilike 'listen%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for pid in &killed {
            sqlx::query("select pg_terminate_backend($1)")
                .bind(pid)
                .execute(&pool)
                .await
                .unwrap();
        }
        kills += killed.len();
        for e in events {
            assert_eq!(app.deliver(e).await.0, 200);
        }
    }
    assert!(
        kills >= 3,
        "the LISTEN connection was killed and came back: {kills} kills"
    );
    let last = current_revision(&db).await;
    let got = change_revisions(&read_until(&mut stream, last).await);
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
    app.stop().await;
}

crate::on_both_stores! {
    #[tokio::test]
    async fn a_stalled_client_neither_blocks_others_nor_loses_changes(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.feed_capacity = 8; // a tiny ring: the stalled stream must lag and catch up from the log
        let app = TestApp::spawn(cfg).await;
        let mut stalled = watch_all(&mut app.api().await, None).await;
        assert!(matches!(
            next(&mut stalled).await.kind,
            Some(Kind::SnapshotEnd(_))
        ));
        let mut healthy = watch_all(&mut app.api().await, None).await;
        assert!(matches!(
            next(&mut healthy).await.kind,
            Some(Kind::SnapshotEnd(_))
        ));

        let (per_process, _) = scenario(5, 15);
        deliver_all(&app, &per_process).await;
        let last = current_revision(&db).await;
        // The healthy watcher gets everything while the stalled one reads nothing.
        let got = change_revisions(
            &tokio::time::timeout(WAIT, read_until(&mut healthy, last))
                .await
                .unwrap(),
        );
        assert_eq!(got, (1..=last).collect::<Vec<_>>());
        // The stalled one, reading at last, gets everything too, in order.
        let got = change_revisions(&read_until(&mut stalled, last).await);
        assert_eq!(got, (1..=last).collect::<Vec<_>>());
        app.stop().await;
    }
}

#[tokio::test]
async fn compacted_start_revisions_get_a_reset_or_out_of_range() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut cfg = config(&db);
    cfg.retention.max_revisions = Some(5);
    cfg.prune_interval = Duration::from_millis(100);
    let app = TestApp::spawn(cfg).await;
    let (per_process, ids) = scenario(9, 2);
    deliver_all(&app, &per_process).await;
    let last = current_revision(&db).await;
    let pool = db.pool().await;
    let mut pruned = 0;
    for _ in 0..100 {
        pruned = sqlx::query_scalar("select pruned_through from change_log_horizon")
            .fetch_one(&pool)
            .await
            .unwrap();
        if pruned == last - 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pruned, last - 5);
    let mut api = app.api().await;

    // Default: an in-band reset, then a fresh snapshot, then changes.
    let mut stream = watch_all(&mut api, Some(2)).await;
    let reset = next(&mut stream).await;
    assert_eq!(
        reset.kind,
        Some(Kind::Reset(pb::Reset {
            oldest_revision: pruned
        }))
    );
    let mut fold = Fold::default();
    loop {
        let e = next(&mut stream).await;
        fold.apply(&e);
        if let Some(Kind::SnapshotEnd(end)) = e.kind {
            assert_eq!(end.process_count, 2);
            assert_eq!(e.revision, last);
            break;
        }
    }
    assert_eq!(fold.0.len(), 2);
    assert!(ids.iter().all(|id| fold.0.contains_key(id)));

    // On request: OUT_OF_RANGE naming the oldest revision.
    let status = api
        .watch_processes(WatchProcessesRequest {
            start_revision: Some(2),
            fail_if_compacted: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["oldest_revision"], pruned.to_string());

    // Resuming inside the retained log works; a future revision does not.
    let mut stream = watch_all(&mut api, Some(pruned)).await;
    assert_eq!(
        change_revisions(&read_until(&mut stream, last).await),
        ((pruned + 1)..=last).collect::<Vec<_>>()
    );
    let status = api
        .watch_processes(WatchProcessesRequest {
            start_revision: Some(last + 1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

crate::on_both_stores! {
    #[tokio::test]
    async fn heartbeats_limits_and_shutdown(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.watch.heartbeat = Duration::from_millis(200);
        cfg.watch.max_watchers = 2;
        let app = TestApp::spawn(cfg).await;
        let (per_process, _) = scenario(1, 1);
        deliver_all(&app, &per_process).await;
        let last = current_revision(&db).await;
        let mut api = app.api().await;

        let mut first = watch_all(&mut api, Some(last)).await;
        let beat = next(&mut first).await;
        assert_eq!(
            (beat.kind, beat.revision),
            (Some(Kind::Heartbeat(pb::Heartbeat {})), last),
            "idle streams get heartbeats at the latest revision"
        );

        let second = api
            .watch_process(WatchProcessRequest {
                process_id: "1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let status = api
            .watch_processes(WatchProcessesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        drop(second);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _third = api
            .watch_processes(WatchProcessesRequest::default())
            .await
            .unwrap();

        let status = api
            .watch_process(WatchProcessRequest {
                process_id: "not valid!".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);

        // Shutdown: a last heartbeat, then UNAVAILABLE; the server does not hang on the stream.
        let stopping = tokio::spawn(app.stop());
        let mut last_message = None;
        let status = loop {
            match tokio::time::timeout(WAIT, first.message()).await.unwrap() {
                Ok(Some(m)) => last_message = m.event,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(matches!(
            last_message.unwrap().kind,
            Some(Kind::Heartbeat(_))
        ));
        tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    }
}

/// Processes with large fields, so one snapshot cannot fit in the buffers between the reader
/// and a client that does not read.
async fn store_big_processes(app: &TestApp) {
    let events: Vec<Vec<Value>> = (0..400)
        .map(|n| {
            vec![serde_json::json!({
                "schema": "2.0",
                "header": {"event_id": format!("e{n}"), "event_type": "corehr.process.status.update_v2", "create_time": "1",
                           "token": VERIFICATION_TOKEN, "tenant_key": "t", "app_id": "cli_a1b2c3d4e5f60718"},
                "event": {"process_id": format!("{}", 7_000_000 + n), "status": 1, "biz_type": "b".repeat(500)},
            })]
        })
        .collect();
    for chunk in events.chunks(50) {
        deliver_all(app, chunk).await;
    }
}

/// A client with small HTTP/2 windows, so what it does not read stays on the server.
async fn small_window_client(app: &TestApp) -> ProcessServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    ProcessServiceClient::new(channel)
}

crate::on_both_stores! {
    #[tokio::test]
    async fn a_snapshot_the_client_does_not_read_is_cut_at_its_deadline(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.watch.snapshot_deadline = Duration::from_millis(500);
        let app = TestApp::spawn(cfg).await;
        store_big_processes(&app).await;
        let mut api = small_window_client(&app).await;
        let mut stream = watch_all(&mut api, None).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The service still stores events while the stalled snapshot is (or was) open.
        let (more, _) = scenario(2, 1);
        deliver_all(&app, &more).await;
        let status = loop {
            match tokio::time::timeout(WAIT, stream.message()).await.unwrap() {
                Ok(Some(m)) => assert!(
                    matches!(m.event.unwrap().kind, Some(Kind::Snapshot(_))),
                    "no snapshot_end for a cut snapshot"
                ),
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        app.stop().await;
    }
}

/// Clients that open a snapshot and never read it hold no slot, connection or transaction:
/// with 8 of them stalled (twice the slots), a good client's snapshot still completes at once,
/// and no database connection sits idle in a transaction.
#[tokio::test]
async fn stalled_snapshot_readers_do_not_hold_up_others() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = TestApp::spawn(config(&db)).await;
    store_big_processes(&app).await;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut api = small_window_client(&app).await;
        stalled.push((watch_all(&mut api, None).await, api));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_in_tx: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(idle_in_tx, 0, "a stalled snapshot holds a transaction open");
    let started = std::time::Instant::now();
    let mut api = app.api().await;
    let mut stream = watch_all(&mut api, None).await;
    let mut processes = 0;
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(m) = stream.message().await.unwrap() {
            match m.event.unwrap().kind {
                Some(Kind::Snapshot(_)) => processes += 1,
                Some(Kind::SnapshotEnd(end)) => return end.process_count,
                _ => {}
            }
        }
        panic!("the stream ended before its snapshot did")
    })
    .await
    .expect("a good client's snapshot completes within 2 s");
    assert_eq!((ended, processes), (400, 400));
    println!(
        "snapshot of 400 beside 8 stalled ones: {:?}",
        started.elapsed()
    );
    drop(stalled);
    app.stop().await;
}

crate::on_both_stores! {
    /// A snapshot's pages are read at different revisions; what changed between the first page
    /// and the last is replayed before `snapshot_end`, so a client that folds the stream ends with
    /// exactly what GetProcess says, for processes changed on pages already sent and on pages
    /// still to come.
    #[tokio::test]
    async fn a_paged_snapshot_with_writes_between_pages_folds_to_the_truth(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        store_big_processes(&app).await;
        let mut api = small_window_client(&app).await;
        let mut stream = watch_all(&mut api, None).await;
        let mut fold = Fold::default();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let e = next(&mut stream).await;
            fold.apply(&e);
            seen.push(e);
        }
        // The first page is out; change processes on it and on the last page.
        let changed: Vec<Vec<Value>> = (0..20)
            .chain(380..400)
            .map(|n| {
                vec![serde_json::json!({
                    "schema": "2.0",
                    "header": {"event_id": format!("between-{n}"), "event_type": "corehr.process.status.update_v2",
                               "create_time": "2", "token": VERIFICATION_TOKEN, "tenant_key": "t", "app_id": "cli_a1b2c3d4e5f60718"},
                    "event": {"process_id": format!("{}", 7_000_000 + n), "status": 9},
                })]
            })
            .collect();
        deliver_all(&app, &changed).await;
        loop {
            let e = next(&mut stream).await;
            fold.apply(&e);
            let end = matches!(e.kind, Some(Kind::SnapshotEnd(_)));
            seen.push(e);
            if end {
                break;
            }
        }
        let replayed = seen
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::Change(_))))
            .count();
        println!("replayed before snapshot_end: {replayed}");
        let last = current_revision(&db).await;
        if seen.last().unwrap().revision < last {
            for e in read_until(&mut stream, last).await {
                fold.apply(&e);
            }
        }
        let mut reader = app.api().await;
        for n in 0..400 {
            let id = format!("{}", 7_000_000 + n);
            let truth = reader
                .get_process(GetProcessRequest {
                    process_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .process
                .unwrap();
            assert_eq!(fold.0.get(&id), Some(&truth), "process {id}");
        }
        app.stop().await;
    }
}

/// Every process's state as GetProcess answers it.
async fn truth(app: &TestApp, ids: &[String]) -> BTreeMap<String, pb::Process> {
    let mut api = app.api().await;
    let mut all = BTreeMap::new();
    for id in ids {
        let response = api
            .get_process(GetProcessRequest {
                process_id: id.clone(),
                ..Default::default()
            })
            .await;
        if let Ok(response) = response {
            all.insert(id.clone(), response.into_inner().process.unwrap());
        }
    }
    all
}

crate::on_both_stores! {
    /// A client cut off after its k-th message, for k inside and after a multi-page snapshot,
    /// follows the documented rule (resume from the last message whose revision is not 0, else
    /// start again) while events keep arriving, and ends with exactly what GetProcess says.
    #[tokio::test]
    async fn resuming_after_any_message_of_a_snapshot_loses_nothing(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.watch.heartbeat = Duration::from_millis(200);
        let app = TestApp::spawn(cfg).await;
        let started = std::time::Instant::now();
        let (per_process, mut ids) = scenario(11, 260);
        deliver_all(&app, &per_process).await;
        println!("delivered in {:?}", started.elapsed());
        for (more_seed, k) in (100..).zip([1, 5, 199, 200, 201, 260, 261, 262, 300]) {
            let mut api = app.api().await;
            let mut fold = Fold::default();
            let mut resume = None;
            let mut stream = watch_all(&mut api, None).await;
            for _ in 0..k {
                let e = next(&mut stream).await;
                fold.apply(&e);
                match e.kind {
                    Some(Kind::Reset(_)) => resume = None,
                    _ if e.revision != 0 => resume = Some(e.revision),
                    _ => {}
                }
            }
            drop(stream);
            // Events arrive while the client is away.
            let (more, more_ids) = scenario(more_seed, 3);
            deliver_all(&app, &more).await;
            ids.extend(more_ids);
            if resume.is_none() {
                fold.0.clear();
            }
            let mut stream = watch_all(&mut api, resume).await;
            let last = current_revision(&db).await;
            loop {
                let e = next(&mut stream).await;
                fold.apply(&e);
                if e.revision >= last && !matches!(e.kind, Some(Kind::Snapshot(_))) {
                    break;
                }
            }
            assert_eq!(fold.0, truth(&app, &ids).await, "cut after message {k}");
        }
        app.stop().await;
    }
}

crate::on_both_stores! {
    /// With a status filter, a process that enters the scope arrives whole: the fold of a
    /// COMPLETED-only stream equals GetProcess for every process that is COMPLETED at the end.
    #[tokio::test]
    async fn a_process_entering_a_filtered_watch_arrives_with_its_children(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let mut api = app.api().await;
        let mut stream = api
            .watch_processes(WatchProcessesRequest {
                statuses: vec![pb::ProcessStatus::Completed as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut fold = Fold::default();
        fold.apply(&next(&mut stream).await); // the empty snapshot's end
        let (per_process, ids) = scenario(21, 20);
        deliver_all(&app, &per_process).await;
        let last = current_revision(&db).await;
        for e in read_until(&mut stream, last).await {
            fold.apply(&e);
        }
        let completed: BTreeMap<_, _> = truth(&app, &ids)
            .await
            .into_iter()
            .filter(|(_, p)| p.status == pb::ProcessStatus::Completed as i32)
            .collect();
        assert!(
            completed.len() >= 3,
            "the scenario completes some processes"
        );
        for (id, process) in &completed {
            assert!(!process.tasks.is_empty(), "{id} has tasks");
            assert_eq!(fold.0.get(id), Some(process), "process {id}");
        }
        app.stop().await;
    }
}
