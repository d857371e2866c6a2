//! When a batch is complete: the writer takes what is queued, then waits only for deliveries
//! that have arrived and are still being decoded, or until the batch is as large as the one
//! before, and never longer than the configured wait.
//!
//! A fixed wait after the first event would cost every batch the whole wait (and tokio's
//! timer rounds a 1 ms wait up to about 2 ms), while the senders of a busy webhook all arrive
//! within a fraction of it. Waiting for the previous batch's size keeps such a convoy in one
//! transaction; a lone event on a quiet service is committed at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Deliveries announced by an intake path and not yet queued.
#[derive(Debug, Default)]
pub(super) struct Arrivals {
    count: AtomicUsize,
    /// Signalled when `count` drops to zero.
    settled: Notify,
}

impl Arrivals {
    pub(super) fn announce(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// The announced delivery was queued, or will never be.
    pub(super) fn settle(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_one();
        }
    }

    fn pending(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }
}

/// How a batch is gathered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gather {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// The previous batch's size.
    pub expect: usize,
}

/// Adds to `batch` (which holds at least the first job) what is queued, and waits for more
/// while deliveries are still being decoded or the batch is smaller than `expect`, at most
/// `max_wait`.
pub(super) async fn gather<T>(
    queue: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    arrivals: &Arrivals,
    limits: Gather,
) {
    let deadline = tokio::time::sleep(limits.max_wait);
    tokio::pin!(deadline);
    while batch.len() < limits.max_batch {
        if !arrivals.pending() {
            while batch.len() < limits.max_batch {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if batch.len() >= limits.expect.min(limits.max_batch) {
                return;
            }
        }
        tokio::select! {
            job = queue.recv() => match job {
                Some(job) => batch.push(job),
                None => return,
            },
            () = arrivals.settled.notified() => {}
            () = &mut deadline => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::Instant;

    const LIMITS: Gather = Gather {
        max_batch: 8,
        max_wait: Duration::from_millis(50),
        expect: 1,
    };

    async fn first(queue: &mut mpsc::Receiver<u32>) -> Vec<u32> {
        vec![queue.recv().await.unwrap()]
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_event_is_committed_at_once() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let mut batch = first(&mut rx).await;
        let started = Instant::now();
        gather(&mut rx, &mut batch, &Arrivals::default(), LIMITS).await;
        assert_eq!(batch, [1, 2]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_an_announced_delivery() {
        let arrivals = Arc::new(Arrivals::default());
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.unwrap();
        arrivals.announce();
        let late = {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send(2).await.unwrap();
                arrivals.settle();
            })
        };
        let mut batch = first(&mut rx).await;
        let started = Instant::now();
        gather(&mut rx, &mut batch, &arrivals, LIMITS).await;
        assert_eq!(batch, [1, 2]);
        assert_eq!(started.elapsed(), Duration::from_millis(10));
        late.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_delivery_that_never_comes_costs_at_most_the_wait() {
        let arrivals = Arrivals::default();
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.unwrap();
        arrivals.announce();
        let mut batch = first(&mut rx).await;
        let started = Instant::now();
        gather(&mut rx, &mut batch, &arrivals, LIMITS).await;
        assert_eq!(batch, [1]);
        assert_eq!(started.elapsed(), LIMITS.max_wait);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_previous_batch_size_at_most_the_wait() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 1..=3 {
            tx.send(i).await.unwrap();
        }
        let limits = Gather {
            expect: 4,
            ..LIMITS
        };
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(4).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(5).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let mut batch = first(&mut rx).await;
        let started = Instant::now();
        gather(&mut rx, &mut batch, &Arrivals::default(), limits).await;
        assert_eq!(batch, [1, 2, 3, 4]);
        assert_eq!(started.elapsed(), Duration::from_millis(5));

        let mut batch = first(&mut rx).await;
        let started = Instant::now();
        gather(&mut rx, &mut batch, &Arrivals::default(), limits).await;
        assert_eq!(batch, [5]);
        assert_eq!(started.elapsed(), LIMITS.max_wait);
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_batch_limit() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..12 {
            tx.send(i).await.unwrap();
        }
        let mut batch = first(&mut rx).await;
        let limits = Gather {
            expect: 100,
            ..LIMITS
        };
        gather(&mut rx, &mut batch, &Arrivals::default(), limits).await;
        assert_eq!(batch, (0..8).collect::<Vec<_>>());
    }
}
