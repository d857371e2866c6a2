//! Who made a request: the caller the auth layer authenticated, a request extension that
//! metrics and request spans read (so `auth` and `metrics` need not know each other).

use std::sync::Arc;

/// The caller a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

impl Caller {
    pub fn anonymous() -> Self {
        static ANONYMOUS: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("anonymous"));
        Caller(ANONYMOUS.clone())
    }
}
