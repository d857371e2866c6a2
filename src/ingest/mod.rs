//! The ingest pipeline both intake paths share: normalize an envelope into a domain event,
//! then hand it to the batching writer, which commits many events in one transaction (group
//! commit) and answers each delivery only after its transaction committed.

mod gather;
mod normalize;
mod writer;

pub use normalize::{event_types, from_inbox, normalize};
pub use writer::{Announced, Ingest, IngestError, WriterConfig};
