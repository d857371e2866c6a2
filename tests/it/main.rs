//! Integration tests, linked into one binary: the real service on port 0 against a fresh
//! Postgres database per test, with real HTTP, gRPC and WebSocket peers.
//!
//! One binary instead of one per file keeps link time and disk use down; the modules still run
//! in parallel and can be picked by name, e.g. `cargo test --test it watch::`.

mod common;

mod auth_methods;
mod backfill;
mod batching;
mod cache;
mod cli;
mod copy;
mod deadlines;
mod durability;
mod grpc;
mod grpc_web;
mod grpcurl;
mod history;
mod limits;
mod longconn;
mod metrics;
mod observations;
mod ordering;
mod overload;
mod rebuild;
mod reconcile;
mod reflection;
mod rest_client;
mod security;
mod shutdown;
mod simulate;
mod store_down;
mod traces;
mod watch;
mod webhook;
