//! Out-of-order and duplicate delivery (ARCHITECTURE.md invariants 2 and 3): for realistic
//! process sequences with optional fields dropped at random, every delivery order, with
//! duplicates and concurrency, ends in the same state as in-order delivery. Two services on two databases: one fed in order, one fed a
//! shuffled, duplicated stream; their GetProcess answers must agree.

use crate::common::{TestApp, TestDb, VERIFICATION_TOKEN, config, counts};
use futures::StreamExt;
use process_state::api::pb::{self, GetProcessRequest};
use process_state::simulate::scenario::{Tenant, process_events};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rand::{SeedableRng, rngs::StdRng, seq::IndexedRandom, seq::SliceRandom};
use serde_json::Value;

/// Revision and change time say when a row was written, which depends on delivery order by
/// design; everything else must match.
fn comparable(mut p: pb::Process) -> pb::Process {
    p.revision = 0;
    p.change_time = None;
    for n in &mut p.nodes {
        n.revision = 0;
        n.change_time = None;
    }
    for t in &mut p.tasks {
        t.revision = 0;
        t.change_time = None;
    }
    for c in &mut p.cc_tasks {
        c.revision = 0;
        c.change_time = None;
    }
    p
}

async fn state(app: &TestApp, process_id: &str) -> pb::Process {
    let response = app
        .api()
        .await
        .get_process(GetProcessRequest {
            process_id: process_id.into(),
            ..Default::default()
        })
        .await;
    comparable(response.unwrap().into_inner().process.unwrap())
}

/// Removes each optional field of the event body with probability 0.3 (ids stay: without
/// them an event is about nothing).
fn drop_optional_fields(event: &mut Value, rng: &mut StdRng) {
    const OPTIONAL: &[&str] = &[
        "status",
        "biz_type",
        "flow_definition_id",
        "properties",
        "node_definition_id",
        "node_type",
        "node_status",
        "type",
        "node_id",
        "node_id_str",
    ];
    if let Some(body) = event["event"].as_object_mut() {
        for key in OPTIONAL {
            if rand::Rng::random_bool(rng, 0.3) {
                body.remove(*key);
            }
        }
    }
}

mod any_delivery_order_with_duplicates_ends_in_the_in_order_state {
    use crate::common::Backend;

    #[test]
    fn sqlite() {
        super::ordering(Backend::Sqlite);
    }

    #[test]
    fn postgres() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        if rt.block_on(Backend::postgres_runs()) {
            super::ordering(Backend::Postgres);
        }
    }
}

fn ordering(backend: crate::common::Backend) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (in_order_db, shuffled_db) =
        rt.block_on(async { (TestDb::on(backend).await, TestDb::on(backend).await) });
    let in_order = rt.block_on(TestApp::spawn(config(&in_order_db)));
    let shuffled = rt.block_on(TestApp::spawn(config(&shuffled_db)));
    let tenant = Tenant {
        app_id: "cli_a1b2c3d4e5f60718".into(),
        tenant_key: "2ca1d211f64f6438".into(),
        verification_token: Some(VERIFICATION_TOKEN.into()),
    };

    let cases = std::env::var("ORDERING_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let strategy = (
        any::<u64>(),
        any::<u64>(),
        1usize..=3,
        0u32..=100,
        any::<u64>(),
    );
    runner
        .run(
            &strategy,
            |(scenario_seed, order_seed, processes, duplicate_percent, sparse_seed)| {
                rt.block_on(async {
                    let mut rng = StdRng::seed_from_u64(scenario_seed);
                    let mut events: Vec<Value> = Vec::new();
                    let mut process_ids = Vec::new();
                    for _ in 0..processes {
                        let (e, _) = process_events(&mut rng, &tenant, 1_719_391_068_000);
                        process_ids.push(e[0]["event"]["process_id"].as_str().unwrap().to_owned());
                        events.extend(e);
                    }
                    // Every field is optional on the wire: drop some at random.
                    let mut sparse = StdRng::seed_from_u64(sparse_seed);
                    for event in &mut events {
                        drop_optional_fields(event, &mut sparse);
                    }
                    for event in &events {
                        assert_eq!(in_order.deliver(event).await.0, 200);
                    }

                    let mut order_rng = StdRng::seed_from_u64(order_seed);
                    let mut stream = events.clone();
                    let duplicates = events.len() * duplicate_percent as usize / 100;
                    stream.extend(events.choose_multiple(&mut order_rng, duplicates).cloned());
                    stream.shuffle(&mut order_rng);
                    let answers: Vec<u16> = futures::stream::iter(&stream)
                        .map(|e| async { shuffled.deliver(e).await.0 })
                        .buffer_unordered(8)
                        .collect()
                        .await;
                    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");

                    for id in &process_ids {
                        let (want, got) = (state(&in_order, id).await, state(&shuffled, id).await);
                        prop_assert_eq!(want, got, "process {}", id);
                    }
                    Ok(())
                })
            },
        )
        .unwrap();

    // Duplicates changed nothing: both sides stored every event once.
    rt.block_on(async {
        let (a, b) = (counts(&in_order_db).await, counts(&shuffled_db).await);
        assert_eq!(a.inbox, b.inbox);
        assert_eq!(
            (a.processes, a.nodes, a.tasks, a.cc_tasks),
            (b.processes, b.nodes, b.tasks, b.cc_tasks)
        );
        in_order.stop().await;
        shuffled.stop().await;
    });
}
