#!/usr/bin/env bash
# Browser-facing checks against a real service on a fresh database: `buf curl` over gRPC-web
# (unary and server streaming) and the dashboard in Debian's headless Chromium. Needs
# /usr/bin/chromium, node, and `npm install` in dashboard/ and tests/browser/ (.ci/run does it).
set -euo pipefail
cd "$(dirname "$0")/.."

admin="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="ps_browser_$$"
base="${admin%/*}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); grpc_port=$(free_port)

# Caller authentication on, as in production: every gRPC-web call carries a bearer token.
token="browser-test-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
mkdir -p target && printf 'dashboard %s\n' "$token" >target/browser-test-tokens

cargo build --quiet
psql "$admin" -qc "create database $db"
start_service() {
    DATABASE_URL="$base/$db" target/debug/process-state serve \
        --http-addr "127.0.0.1:$http_port" --grpc-addr "127.0.0.1:$grpc_port" \
        --auth-tokens-file target/browser-test-tokens 2>>target/browser-test-service.log &
    service=$!
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
}
: >target/browser-test-service.log
start_service
cleanup() {
    kill "$service" 2>/dev/null || true
    wait "$service" 2>/dev/null || true
    psql "$admin" -qc "drop database if exists $db with (force)" || true
}
trap cleanup EXIT

# buf curl over gRPC-web: GetProcess, then a WatchProcess stream up to its snapshot.
curl -fsS -H 'content-type: application/json' "http://127.0.0.1:$http_port/webhook/event" -d \
  '{"schema":"2.0","header":{"event_id":"bufcurl-1","event_type":"corehr.process.status.update_v2","create_time":"1719391068392"},"event":{"process_id":"4200","status":9}}' >/dev/null
buf=dashboard/node_modules/.bin/buf
got=$("$buf" curl --protocol grpcweb --http2-prior-knowledge=false --schema proto -H "authorization: Bearer $token" \
    -d '{"process_id":"4200"}' "http://127.0.0.1:$grpc_port/processstate.v1.ProcessService/GetProcess")
grep -q '"PROCESS_STATUS_COMPLETED"' <<<"$got" || { echo "buf curl GetProcess: $got"; exit 1; }
streamed=$(timeout 5 "$buf" curl --protocol grpcweb --schema proto -H "authorization: Bearer $token" \
    -d '{"process_id":"4200"}' "http://127.0.0.1:$grpc_port/processstate.v1.ProcessService/WatchProcess" || true)
grep -q '"snapshotEnd"' <<<"$streamed" || { echo "buf curl WatchProcess: $streamed"; exit 1; }
refused=$("$buf" curl --protocol grpcweb --http2-prior-knowledge=false --schema proto \
    -d '{"process_id":"4200"}' "http://127.0.0.1:$grpc_port/processstate.v1.ProcessService/GetProcess" 2>&1 || true)
grep -qi 'unauthenticated' <<<"$refused" || { echo "buf curl without a token: $refused"; exit 1; }
echo "buf curl over gRPC-web: GetProcess and WatchProcess ok; refused without a token"

# The page test asks for a disconnect by creating $CONTROL_DIR/stop (the service is stopped)
# and for the service back by creating $CONTROL_DIR/start (started again, same database).
control=target/browser-control
rm -rf "$control" && mkdir -p "$control"
TOKEN="$token" DASHBOARD_URL="http://127.0.0.1:$grpc_port/" WEBHOOK_URL="http://127.0.0.1:$http_port/webhook/event" \
    SCREENSHOT_DIR="${SCREENSHOT_DIR:-target}" CONTROL_DIR="$control" node tests/browser/dashboard.mjs &
page_test=$!
while kill -0 "$page_test" 2>/dev/null; do
    # The file goes once the action is done: the page test waits for that.
    if [ -e "$control/stop" ]; then
        kill "$service"; wait "$service" || true; rm "$control/stop"
    fi
    if [ -e "$control/start" ]; then
        start_service; rm "$control/start"
    fi
    sleep 0.1
done
wait "$page_test"
echo "browser checks: 9 passed, 0 failed"
