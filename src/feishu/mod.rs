//! Feishu's wire formats: the webhook body crypto (AES-256-CBC, SHA-256 signature), the
//! event envelope, and the long connection's protobuf frames (feishu-protocol.md §1–2, pure and
//! tested with the official SDKs' known-answer vectors); and the REST API client (§4).

pub mod crypto;
pub mod envelope;
pub mod frame;
pub mod rest;
