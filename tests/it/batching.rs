//! Group commit changes nothing but speed: a shuffled, duplicated stream of realistic events
//! stored as ONE batch ends in exactly the rows, change log and outcomes of the same stream
//! stored one event per transaction (revisions included: both number in stream order). And a
//! failed batch fails only its poison event.

use crate::common::{TestDb, VERIFICATION_TOKEN};
use futures::future::join_all;
use process_state::domain::{Event, EventSource};
use process_state::feed::ProcessCache;
use process_state::feishu::envelope::{Payload, payload};
use process_state::ingest::{Ingest, IngestError, WriterConfig, normalize};
use process_state::metrics::Metrics;
use process_state::simulate::scenario::{Tenant, process_events};
use process_state::store::{Outcome, PgStore, Store};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use std::sync::Arc;
use std::time::Duration;

fn stream(seed: u64) -> Vec<Event> {
    let tenant = Tenant {
        app_id: "cli_a1b2c3d4e5f60718".into(),
        tenant_key: "2ca1d211f64f6438".into(),
        verification_token: Some(VERIFICATION_TOKEN.into()),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    for p in 0..12 {
        let (sequence, _) = process_events(&mut rng, &tenant, 1_719_391_068_000 + p * 10_000);
        events.extend(sequence);
    }
    let duplicates: Vec<_> = events.iter().step_by(3).cloned().collect();
    events.extend(duplicates);
    events.shuffle(&mut rng);
    events
        .into_iter()
        .map(|json| match payload(json).unwrap() {
            Payload::Event(envelope) => normalize(envelope, EventSource::Webhook),
            Payload::Challenge { .. } => unreachable!(),
        })
        .collect()
}

async fn store(db: &TestDb) -> PgStore {
    let store = PgStore::connect(db.options.clone(), 2, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Every state row and change-log row, as text, without the transaction times.
async fn dump(db: &TestDb) -> Vec<String> {
    let pool = db.pool().await;
    let mut rows = Vec::new();
    for (table, key) in [
        ("processes", "process_id"),
        ("nodes", "process_node_id"),
        ("tasks", "approver_id"),
        ("cc_tasks", "approver_id"),
        ("changes", "revision, entity, entity_id"),
    ] {
        let sql = format!(
            "select (to_jsonb(t) - 'change_time' - 'state'
                     || jsonb_build_object('state', t.state - 'change_time'))::text
             from {table} t order by {key}"
        );
        let sql = if table == "changes" {
            sql
        } else {
            sql.replace(
                " || jsonb_build_object('state', t.state - 'change_time')",
                "",
            )
        };
        let table_rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&pool).await.unwrap();
        rows.push(format!("{table}: {}", table_rows.len()));
        rows.extend(table_rows);
    }
    rows
}

#[tokio::test]
async fn one_batch_equals_one_event_per_transaction() {
    for seed in [1, 2, 3] {
        let events = stream(seed);
        let (Some(batched_db), Some(single_db)) =
            (TestDb::postgres().await, TestDb::postgres().await)
        else {
            return;
        };
        let (batched, single) = (store(&batched_db).await, store(&single_db).await);

        let batch_outcomes = batched.ingest(&events).await.unwrap();
        let mut single_outcomes = Vec::new();
        for event in &events {
            single_outcomes.extend(single.ingest(std::slice::from_ref(event)).await.unwrap());
        }
        assert_eq!(batch_outcomes, single_outcomes, "seed {seed}");
        let applied = batch_outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Applied { .. }))
            .count();
        let duplicates = batch_outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Duplicate))
            .count();
        assert!(
            applied > 20 && duplicates > 10,
            "seed {seed}: {applied} {duplicates}"
        );
        assert_eq!(
            dump(&batched_db).await,
            dump(&single_db).await,
            "seed {seed}"
        );

        // The same stream again: all duplicates, nothing changes.
        let again = batched.ingest(&events).await.unwrap();
        assert!(again.iter().all(|o| *o == Outcome::Duplicate));
    }
}

/// Deliveries announced together share one transaction; when it fails (an event id Postgres
/// cannot store), each is retried alone, so only the poison delivery fails and its neighbours
/// are stored.
#[tokio::test]
async fn a_poison_event_fails_alone_and_its_batch_neighbours_are_stored() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(store(&db).await);
    let metrics = Metrics::new();
    let config = WriterConfig {
        max_wait: Duration::from_secs(30),
        ..WriterConfig::default()
    };
    let health = process_state::store::StoreHealth::new();
    health.set(true);
    let (ingest, writer) = Ingest::start(
        store,
        config,
        metrics.clone(),
        ProcessCache::new(64),
        health,
        process_state::enrich::Enricher::off(),
    );

    let mut seen = std::collections::HashSet::new();
    let mut events: Vec<Event> = stream(4)
        .into_iter()
        .filter(|e| seen.insert(e.event_id.clone()))
        .take(12)
        .collect();
    let poison = events.len() / 2;
    events[poison].event_id = "poison\u{0}event".into();
    // Announced before any is submitted: the writer waits for all of them (well inside the
    // 30 s wait), so they form one batch.
    let announced: Vec<_> = events.iter().map(|_| ingest.announce()).collect();
    let started = std::time::Instant::now();
    let results = join_all(
        announced
            .into_iter()
            .zip(events.clone())
            .map(|(announced, event)| announced.submit(event)),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no fallback to the batch wait"
    );

    for (i, result) in results.iter().enumerate() {
        if i == poison {
            assert_eq!(*result, Err(IngestError::Failed));
        } else {
            assert!(
                matches!(result, Ok(Outcome::Applied { .. } | Outcome::Kept)),
                "{i}: {result:?}"
            );
        }
    }
    let stored: i64 = sqlx::query_scalar("select count(*) from inbox")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(stored as usize, events.len() - 1);
    // One batch of all of them, then each retried alone.
    let text = metrics.encode();
    let count = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap()
    };
    assert_eq!(count("process_state_ingest_batch_size_count"), 1.0);
    assert_eq!(
        count("process_state_ingest_batch_size_sum"),
        events.len() as f64
    );

    drop(ingest);
    writer.await.unwrap();
}
