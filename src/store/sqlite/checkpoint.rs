//! Copies the WAL back into the database file off the commit path, and keeps the WAL short.
//!
//! A checkpoint inside a commit (SQLite's default) stalls that batch's acknowledgements for as
//! long as it copies and syncs: tens of milliseconds on a busy WAL, the slowest acks of a load
//! run. Here a task with a connection of its own runs a passive checkpoint after commits (at
//! most one per [`PASS_INTERVAL`]). A passive checkpoint takes no write lock, so the writer
//! goes on committing while it copies.
//!
//! Copying is not enough to keep the WAL short: SQLite starts the WAL over only when a write
//! transaction begins with every frame already copied, and under load the next batch begins
//! as soon as the last one committed. So once the WAL holds [`RESTART_FRAMES`], the writer
//! copies the few frames written since the last pass itself, before its next transaction
//! begins (a passive checkpoint on its own connection, a millisecond or two, once per
//! thousands of frames); that transaction then starts the WAL over. A short WAL keeps reads
//! on the mapped database file instead of looking pages up in the WAL.
//!
//! The writer's automatic checkpoint stays as the backstop (`WAL_AUTOCHECKPOINT`), should the
//! WAL grow anyway (a failing pass, a read holding old pages for long).

use sqlx::{SqliteConnection, SqlitePool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Least time between two passes: under load, one pass copies the pages of the commits since
/// the last, each page once, and syncs the database file once for all of them.
const PASS_INTERVAL: Duration = Duration::from_millis(100);

/// WAL frames (pages) after which the writer completes the checkpoint so that its next
/// transaction starts the WAL over (~33 MiB at 4 KiB pages; a pass sees the mark up to
/// [`PASS_INTERVAL`] late, so under full load the file peaks near 50 MiB).
const RESTART_FRAMES: i64 = 8000;

/// The pass task, its connection, and what it tells the writer.
#[derive(Debug, Clone)]
pub(super) struct Checkpoints {
    /// The WAL reached the restart mark and the last pass copied it: the writer finishes.
    restart_due: Arc<AtomicBool>,
    /// The pass task, until closed.
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The passes' one read-write connection.
    pool: SqlitePool,
}

impl Checkpoints {
    /// Starts the pass task on `pool`, woken by `bell`; it runs until [`close`](Self::close).
    pub fn start(pool: SqlitePool, bell: watch::Receiver<i64>) -> Self {
        Self::with(pool, bell, PASS_INTERVAL, RESTART_FRAMES)
    }

    fn with(
        pool: SqlitePool,
        mut bell: watch::Receiver<i64>,
        pass_interval: Duration,
        restart_frames: i64,
    ) -> Self {
        let restart_due = Arc::new(AtomicBool::new(false));
        let (due, passes) = (restart_due.clone(), pool.clone());
        let task = tokio::spawn(async move {
            let mut failing = false;
            while bell.changed().await.is_ok() {
                match checkpoint(&passes).await {
                    Ok((wal, copied)) => {
                        failing = false;
                        tracing::trace!(wal, copied, "checkpoint pass");
                        if wal >= restart_frames {
                            due.store(true, Ordering::Release);
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    // Once per run of failures: the writer's own checkpoint bounds the WAL.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints instead");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(pass_interval).await;
            }
        });
        Self {
            restart_due,
            task: Arc::new(Mutex::new(Some(task))),
            pool,
        }
    }

    /// Stops the passes and closes their connection.
    pub async fn close(&self) {
        if let Some(task) = self.task.lock().expect("task slot").take() {
            task.abort();
        }
        self.pool.close().await;
    }

    /// On the writer's connection, before its transaction begins: completes the checkpoint
    /// when a pass asked for it, so this transaction starts the WAL over. A failure leaves
    /// it to a later batch (and the backstop).
    pub async fn before_transaction(&self, writer: &mut SqliteConnection) {
        if !self.restart_due.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = checkpoint(writer).await {
            tracing::debug!(error = %e, "the writer's checkpoint failed; a later batch retries");
        }
    }
}

/// Runs a passive checkpoint: (frames in the WAL, frames copied into the database file).
async fn checkpoint<'c>(
    on: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
) -> Result<(i64, i64), sqlx::Error> {
    let (_busy, wal, copied): (i32, i64, i64) = sqlx::query_as("pragma wal_checkpoint(passive)")
        .fetch_one(on)
        .await?;
    Ok((wal, copied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    /// Back-to-back write transactions leave a pass no moment in which the WAL is fully copied
    /// when the next one begins; the writer's own completion must still start the WAL over,
    /// so the file stays near the restart mark instead of growing with every commit.
    #[tokio::test]
    async fn the_wal_starts_over_under_back_to_back_commits() {
        let dir = std::env::temp_dir().join(format!("ps-checkpoint-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wal.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // No backstop: only this module may bound the WAL.
            .pragma("wal_autocheckpoint", "0");
        let one = || SqlitePoolOptions::new().max_connections(1);
        let writer = one().connect_with(options.clone()).await.unwrap();
        let passes = one().connect_lazy_with(options);
        sqlx::query("create table t (id integer primary key, v text)")
            .execute(&writer)
            .await
            .unwrap();
        let bell = watch::channel(0).0;
        let checkpoints = Checkpoints::with(passes, bell.subscribe(), Duration::from_millis(5), 20);
        // Each commit writes a few pages: 1,000 commits make several thousand frames.
        for revision in 1..=1000 {
            let mut conn = writer.acquire().await.unwrap();
            checkpoints.before_transaction(&mut conn).await;
            sqlx::query("begin immediate; insert into t (v) values (?); commit")
                .bind("x".repeat(3000))
                .execute(&mut *conn)
                .await
                .unwrap();
            bell.send_replace(revision);
        }
        checkpoints.close().await;
        let frames = std::fs::metadata(dir.join("wal.db-wal")).unwrap().len() / 4120;
        writer.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            frames < 500,
            "the WAL grew to {frames} frames: it was never started over"
        );
    }
}
