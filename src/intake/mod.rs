//! Intake: the paths Feishu events come in by. Each authenticates and parses its wire format
//! into an envelope and hands it to the shared ingest pipeline, acking Feishu only after the
//! event has committed.

pub mod longconn;
pub mod webhook;
