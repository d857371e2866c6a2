//! Feishu's wire formats: the webhook body crypto (AES-256-CBC, SHA-256 signature), the
//! event envelope, and the long connection's protobuf frames. Facts come from
//! feishu-protocol.md §1–2; everything here is pure and tested with the official SDKs'
//! known-answer vectors.

pub mod crypto;
pub mod envelope;
pub mod frame;
