//! Group commit changes nothing but speed: a shuffled, duplicated stream of realistic events
//! stored as ONE batch ends in exactly the rows, change log and outcomes of the same stream
//! stored one event per transaction (revisions included: both number in stream order), on both
//! stores. And a failed batch fails only its poison event, and leaves nothing behind.

use crate::common::{Backend, TestDb, VERIFICATION_TOKEN, config};
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

/// The stream of `seed` without its duplicates.
fn distinct(seed: u64) -> Vec<Event> {
    let mut seen = std::collections::HashSet::new();
    stream(seed)
        .into_iter()
        .filter(|e| seen.insert(e.event_id.clone()))
        .collect()
}

async fn store(db: &TestDb) -> PgStore {
    let store = PgStore::connect(db.options.clone(), 2, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

async fn any_store(db: &TestDb) -> Arc<dyn Store> {
    let store = process_state::app::open_store(&config(db)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

const TABLES: [(&str, &str); 5] = [
    ("processes", "process_id"),
    ("nodes", "process_node_id"),
    ("tasks", "approver_id"),
    ("cc_tasks", "approver_id"),
    ("changes", "revision, entity, entity_id"),
];

/// Every state row and change-log row, as text, without the transaction times.
async fn dump(db: &TestDb) -> Vec<String> {
    if db.backend == Backend::Sqlite {
        return dump_sqlite(db).await;
    }
    let pool = db.pool().await;
    let mut rows = Vec::new();
    for (table, key) in TABLES {
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

/// The same on SQLite: each row as a JSON object of its columns.
async fn dump_sqlite(db: &TestDb) -> Vec<String> {
    let mut conn = db.sqlite_reader().await;
    let mut rows = Vec::new();
    for (table, key) in TABLES {
        let columns: Vec<String> =
            sqlx::query_scalar(&format!("select name from pragma_table_info('{table}')"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let fields: Vec<String> = columns
            .iter()
            .filter(|c| *c != "change_time")
            .map(|c| match c.as_str() {
                "state" => format!("'{c}', json_remove({c}, '$.change_time')"),
                _ => format!("'{c}', {c}"),
            })
            .collect();
        let sql = format!(
            "select json_object({}) from {table} order by {key}",
            fields.join(", ")
        );
        let table_rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut conn).await.unwrap();
        rows.push(format!("{table}: {}", table_rows.len()));
        rows.extend(table_rows);
    }
    rows
}

crate::on_both_stores! {
#[tokio::test]
async fn one_batch_equals_one_event_per_transaction(backend) {
    for seed in [1, 2, 3] {
        let events = stream(seed);
        let (batched_db, single_db) = (TestDb::on(backend).await, TestDb::on(backend).await);
        let (batched, single) = (any_store(&batched_db).await, any_store(&single_db).await);

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

    let mut events: Vec<Event> = distinct(4).into_iter().take(12).collect();
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

/// On SQLite, a batch failing part-way through (here a trigger refuses its third change row)
/// is rolled back whole, and the writer's connection takes the next batch: the same events,
/// retried, are all stored.
#[tokio::test]
async fn a_failed_sqlite_batch_leaves_nothing_and_the_connection_takes_the_next() {
    use sqlx::Connection;
    let db = TestDb::on(Backend::Sqlite).await;
    let store = any_store(&db).await;
    let events: Vec<Event> = distinct(5).into_iter().take(10).collect();
    let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
    sqlx::query(
        "create trigger refuse after insert on changes when new.revision = 3
         begin select raise(abort, 'refused by the test'); end",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let error = store.ingest(&events).await.unwrap_err();
    assert!(error.to_string().contains("refused by the test"), "{error}");
    assert_eq!(db.counts().await, (0, 0, 0), "nothing of the batch stays");

    sqlx::query("drop trigger refuse")
        .execute(&mut conn)
        .await
        .unwrap();
    let outcomes = store.ingest(&events).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Applied { .. } | Outcome::Kept)),
        "{outcomes:?}"
    );
    let (inbox, _, revision) = db.counts().await;
    assert_eq!(inbox, events.len() as i64);
    assert!(revision > 3);
}

/// On SQLite, a batch whose read fails to decode a stored row (the select's row is decoded
/// while SQLite's worker runs the inbox insert) is rolled back whole, inbox insert included,
/// and the writer's connection takes the next batch.
#[tokio::test]
async fn an_unreadable_stored_row_fails_its_sqlite_batch_and_leaves_nothing() {
    use sqlx::Connection;
    let db = TestDb::on(Backend::Sqlite).await;
    let store = any_store(&db).await;
    let events = distinct(6);
    let (first, rest) = events.split_at(10);
    let stored: std::collections::HashSet<&str> = first
        .iter()
        .filter_map(|e| e.update.as_ref().map(|u| u.process_id()))
        .collect();
    let second: Vec<Event> = rest
        .iter()
        .filter(|e| {
            e.update
                .as_ref()
                .is_some_and(|u| stored.contains(u.process_id()))
        })
        .cloned()
        .collect();
    assert!(!second.is_empty());
    store.ingest(first).await.unwrap();
    let before = db.counts().await;

    let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
    let mut set_versions = async |json: &str| {
        for table in ["processes", "nodes", "tasks", "cc_tasks"] {
            sqlx::query(&format!("update {table} set versions = ?"))
                .bind(json)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    };
    set_versions(r#"{"status": 1}"#).await;
    let error = store.ingest(&second).await.unwrap_err();
    assert!(
        matches!(error, process_state::store::StoreError::Decode(_)),
        "{error}"
    );
    assert_eq!(db.counts().await, before, "nothing of the batch stays");

    set_versions("{}").await;
    store.ingest(&second).await.unwrap();
    let (inbox, _, _) = db.counts().await;
    assert_eq!(inbox, before.0 + second.len() as i64);
}
