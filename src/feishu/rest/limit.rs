//! A per-API rate limiter that spaces calls evenly: with `n` calls a minute, one call every
//! 60/n s plus 1 %, reserved in arrival order, so no 60-second window holds more than `n`
//! (Feishu counts per API, app and tenant: feishu-protocol.md §4.8). The 1 % absorbs network
//! jitter: Feishu counts calls as they arrive, and a delayed call arrives closer to the next
//! (without it, a 6,000-process backfill put 102 calls in one minute of arrivals). A 429 pushes
//! every later call back.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Spacing {
    interval: Duration,
    /// The earliest time the next call may start.
    next: std::sync::Mutex<Instant>,
}

impl Spacing {
    /// `per_minute` calls a minute (at least 1).
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            interval: Duration::from_millis(60_600) / per_minute.max(1),
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's turn.
    pub async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().expect("spacing lock");
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// No call starts before `delay` from now (Feishu's `x-ogw-ratelimit-reset`).
    pub fn pause(&self, delay: Duration) {
        let mut next = self.next.lock().expect("spacing lock");
        *next = (*next).max(Instant::now() + delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_and_a_pause_holds_them_back() {
        let spacing = Spacing::per_minute(20);
        let start = Instant::now();
        for _ in 0..3 {
            spacing.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(6060));
        spacing.pause(Duration::from_secs(30));
        spacing.wait().await;
        assert_eq!(start.elapsed(), Duration::from_millis(36_060));
    }
}
