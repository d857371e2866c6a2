//! What the service knows of the database right now: up or down, set by the health checker
//! and by the ingest writer (a batch that failed on a fresh connection too), read by the
//! webhook (503 at once) and the probes.

use std::sync::Arc;
use tokio::sync::watch;

/// Whether the database answered the last check.
pub type Readiness = watch::Receiver<bool>;

/// What the service knows of the database right now, shared by the checker and the writer.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    up: Arc<watch::Sender<bool>>,
}

impl StoreHealth {
    /// Unknown until the first check: counted as down, so nothing is promised before it.
    pub fn new() -> Self {
        Self {
            up: Arc::new(watch::channel(false).0),
        }
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Records the latest finding; true when it changed.
    pub fn set(&self, up: bool) -> bool {
        self.up.send_if_modified(|v| std::mem::replace(v, up) != up)
    }

    pub fn subscribe(&self) -> Readiness {
        self.up.subscribe()
    }
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self::new()
    }
}
