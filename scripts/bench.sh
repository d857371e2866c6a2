#!/usr/bin/env bash
# Every benchmark in one run on this machine, each next to the ceiling it is judged against:
# ingest vs pgbench's naive one-transaction-per-event design, GetProcess vs a minimal tonic
# server, ListTasks on 1,000,000 tasks, and watch latency and fan-out. Prints numbers and
# ratios; asserts nothing (machines are noisy). Needs Postgres at DATABASE_URL and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/process-state
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atc 'show server_version' 2>/dev/null | sed 's/^/PostgreSQL /')"
echo "== ingest";  RUST_LOG=error "$bin" bench ingest "$@"
echo "== query";   RUST_LOG=error "$bin" bench query
echo "== watch";   RUST_LOG=error "$bin" bench watch
