//! process-state: Feishu (Lark) CoreHR approval-process events in, current state out over gRPC.
//!
//! Feishu pushes five process events (process status changed, process updated, node, approval
//! task and cc task status changed). This crate receives them, stores them once each in
//! Postgres, folds them into the current state of every process, and serves that state to
//! internal callers with tonic.
//!
//! # Layout
//!
//! - [`config`]: the command line and the validated [`config::Config`].
//! - [`app`]: builds and runs the service from a config (used by `main` and by tests).
//! - [`feishu`]: Feishu's wire formats — body crypto, signatures, event envelopes.
//! - [`intake`]: the paths events come in by (the axum webhook); each hands envelopes to ingest.
//! - [`ingest`]: normalization into domain events and the group-commit writer.
//! - [`domain`]: processes, nodes, tasks, cc tasks and Feishu's enums; no wire or SQL types.
//! - [`store`]: the [`store::Store`] interface, the one ingest algorithm (fold, per-field
//!   merge, change rows) and the Postgres dialect of it.
//! - [`feed`]: this replica's change feed and GetProcess cache, in domain types.
//! - [`api`]: the gRPC service, protobuf conversions, watch streams and error mapping.
//! - [`health`], [`http`], [`metrics`], [`telemetry`]: probes, the HTTP router, metrics, logging.
//! - [`tls`], [`serve`], [`auth`], [`caller`], [`reload`]: TLS listeners, bounded HTTP
//!   serving, gRPC caller tokens and the caller they name, and reloading both.
//! - [`dashboard`]: the embedded live dashboard, served on the gRPC listener.
//! - [`simulate`]: a Feishu stand-in that sends realistic event sequences to a webhook.
//! - [`bench`]: load runs against real replicas that print numbers.

pub mod activity;
pub mod api;
pub mod app;
pub mod auth;
pub mod backfill;
pub mod bench;
pub mod caller;
pub mod config;
pub mod dashboard;
pub mod domain;
pub mod enrich;
pub mod feed;
pub mod feishu;
pub mod health;
pub mod http;
pub mod ingest;
pub mod intake;
pub mod metrics;
pub mod reconcile;
pub mod reload;
pub mod serve;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod traces;
