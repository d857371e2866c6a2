//! A bound on the reads one replica runs at once, below its read pool's size: a burst of
//! large lists waits briefly for a turn, then is refused as overload (`RESOURCE_EXHAUSTED`
//! with `RetryInfo`, so clients back off), instead of every caller timing out on the pool and
//! being told the database is unavailable. The change feed, snapshots and catch-ups keep the
//! rest of the read pool; ingest and health have a pool of their own.

use super::StoreError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct ReadLimit {
    permits: Arc<Semaphore>,
    wait: Duration,
}

impl ReadLimit {
    /// At most `concurrent` reads at once; a read waits at most `wait` for its turn.
    pub fn new(concurrent: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            wait,
        }
    }

    /// Runs `read` when a turn is free, or fails with [`StoreError::Overloaded`].
    pub async fn run<T>(
        &self,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let _turn = tokio::time::timeout(self.wait, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Overloaded)?
            .map_err(|_| StoreError::Overloaded)?;
        read.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_turn_then_refuses() {
        let limit = ReadLimit::new(1, Duration::from_millis(100));
        let (hold, release) = tokio::sync::oneshot::channel::<()>();
        let busy = tokio::spawn({
            let limit = limit.clone();
            async move {
                limit
                    .run(async {
                        release.await.ok();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let refused = limit.run(async { Ok(1) }).await;
        assert!(matches!(refused, Err(StoreError::Overloaded)));
        hold.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(limit.run(async { Ok(2) }).await.unwrap(), 2);
    }
}
