//! This replica's view of committed changes, in domain types: the change feed ([`Hub`]) that
//! reads the change log after each doorbell and broadcasts it to watchers, and the GetProcess
//! cache ([`ProcessCache`]) that the feed keeps correct.

mod cache;
mod hub;

pub use cache::ProcessCache;
pub use hub::Hub;
