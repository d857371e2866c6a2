//! Group commit changes nothing but speed: a shuffled, duplicated stream of realistic events
//! stored as ONE batch ends in exactly the rows, change log and outcomes of the same stream
//! stored one event per transaction (revisions included: both number in stream order).

use crate::common::{TestDb, VERIFICATION_TOKEN};
use process_state::domain::{Event, EventSource};
use process_state::feishu::envelope::{Payload, payload};
use process_state::ingest::normalize;
use process_state::simulate::scenario::{Tenant, process_events};
use process_state::store::{Outcome, PgStore, Store};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
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
        let (batched_db, single_db) = (TestDb::new().await, TestDb::new().await);
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
