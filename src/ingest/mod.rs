//! The ingest pipeline every intake path shares: normalize an envelope (or what Feishu's REST
//! API showed, `observe`) into domain events, then hand them to the batching writer, which
//! commits many events in one transaction (group commit) and answers each delivery only after
//! its transaction committed.

mod gather;
mod normalize;
pub mod observe;
mod writer;

pub use normalize::{event_types, from_inbox, normalize};
pub use writer::{Announced, Ingest, IngestError, WriterConfig};
