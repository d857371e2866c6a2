#!/usr/bin/env bash
# The README's demo as a tested contract: runs every ```sh block that follows a
# `<!-- demo: NAME -->` line in README.md, as written and in order, in one shell (so its exports
# and its background `serve` carry over), and checks what each block printed. The only changes:
# the service listens on free ports through the documented PROCESS_STATE_HTTP_ADDR and
# PROCESS_STATE_GRPC_ADDR (the blocks' `localhost:50051` follows), and keeps its file in a
# temporary PROCESS_STATE_DATA_DIR, on the default store (DATABASE_URL unset). Needs grpcurl (PATH, $GRPCURL, or the copy `cargo test`
# installs under target/tools/).
set -euo pipefail
cd "$(dirname "$0")/.."

grpcurl_bin="${GRPCURL:-$(command -v grpcurl || true)}"
[ -n "$grpcurl_bin" ] || grpcurl_bin=$(ls target/tools/grpcurl/*/lib/grpcurl 2>/dev/null | head -1 || true)
[ -x "$grpcurl_bin" ] || { echo "readme-demo: no grpcurl (install one, set GRPCURL, or run cargo test first)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); grpc_port=$(free_port)
work=$(mktemp -d)
bin="$work/bin"; mkdir -p "$bin"
ln -s "$(realpath "$grpcurl_bin")" "$bin/grpcurl"

# The demo blocks, each introduced by an echo naming it; addresses moved to the free ports.
python3 - "$grpc_port" >"$work/demo.sh" <<'EOF'
import re, sys
port = sys.argv[1]
text = open("README.md").read()
blocks = re.findall(r"<!-- demo: (\w+)[^>]*-->\n```sh\n(.*?)```", text, re.S)
if not blocks:
    sys.exit("readme-demo: no demo blocks in README.md")
for name, body in blocks:
    print(f"echo '=== block {name}'")
    print(body.replace("localhost:50051", f"localhost:{port}").replace("127.0.0.1:50051", f"127.0.0.1:{port}"))
EOF

cleanup() {
    # `cargo run -- serve &` runs in the demo's own process group.
    [ -n "${demo_pid:-}" ] && kill -- -"$demo_pid" 2>/dev/null || true
    sleep 1
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

echo "readme-demo: running $(grep -c '^echo .=== block' "$work/demo.sh") blocks from README.md"
# The watch blocks end in DeadlineExceeded (grpcurl exits non-zero) by design: no `set -e` here.
# The demo's `serve &` stays up, so the script ends by waiting only for the blocks themselves.
# On the default store, as a newcomer has it: no DATABASE_URL (CI exports one for cargo test).
env -u DATABASE_URL PATH="$bin:$PATH" PROCESS_STATE_DATA_DIR="$work/data" \
    PROCESS_STATE_HTTP_ADDR="127.0.0.1:$http_port" PROCESS_STATE_GRPC_ADDR="127.0.0.1:$grpc_port" \
    setsid bash -c "bash '$work/demo.sh'; echo '=== done'" >"$work/out" 2>&1 &
demo_pid=$!
for _ in $(seq 1 1800); do
    grep -q '^=== done' "$work/out" && break
    sleep 0.2
done
out=$(cat "$work/out")
# The dashboard, as the README says to open it.
page=$(curl -fsS "http://localhost:$grpc_port/" || true)

failures=0
block() { awk -v b="=== block $1" '$0 == b {on=1; next} /^=== (block|done)/ {on=0} on' <<<"$out"; }
expect() { # block, what, extended regex
    if ! block "$1" | grep -E -- "$3" >/dev/null; then
        echo "readme-demo: block '$1': $2 (no match for /$3/)" >&2
        failures=$((failures + 1))
    fi
}
refuse() { # block, what, extended regex
    if block "$1" | grep -E -- "$3" >/dev/null; then
        echo "readme-demo: block '$1': $2" >&2
        failures=$((failures + 1))
    fi
}
grep -q '^=== done' <<<"$out" || { echo "readme-demo: the demo did not finish" >&2; failures=$((failures + 1)); }
expect start "simulate played processes" 'sent [0-9]+ events for 20 processes'
expect start "some are left in progress" '; [1-9][0-9]* in progress, waiting for approvers'
expect start "simulate prints commands" 'ProcessService/GetProcess'
refuse start "an error" 'Error|error:|refused'
expect ask "list shows the service" '^processstate\.v1\.ProcessService$'
expect ask "describe shows the RPCs" 'rpc GetProcess'
expect ask "completed processes are listed" 'PROCESS_STATUS_COMPLETED'
expect ask "GetProcess finds the README's process" '"processId": "7012725461687761075"'
expect ask "GetProcess shows its tasks" '"approverId"'
expect ask "processes in progress are listed" 'PROCESS_STATUS_IN_PROGRESS'
expect ask "tasks waiting for someone are listed" 'TASK_STATUS_TODO'
expect ask "a process's history is listed" '"eventType": "corehr\.process\.'
expect ask "health says serving" '"status": "SERVING"'
refuse ask "a grpcurl error" 'Code: '
expect watch "WatchProcess sends the README's process" '"processId": "7974244737258402775"'
expect watch "WatchProcess ends its snapshot" '"snapshotEnd"'
expect watch "resuming replays changes" '"change"'
refuse watch "an error other than the deadline" 'Code: (NotFound|InvalidArgument|Unavailable|Internal|Unknown|OutOfRange)'
[ "$(block watch | grep -c 'Code: DeadlineExceeded')" = 3 ] || {
    echo "readme-demo: block 'watch': expected three watches ended by -max-time" >&2
    failures=$((failures + 1))
}
grep -q '<html' <<<"$page" || { echo "readme-demo: no dashboard at http://localhost:$grpc_port/" >&2; failures=$((failures + 1)); }

if [ "$failures" -gt 0 ]; then
    echo "---- demo output" >&2
    cat "$work/out" >&2
    exit 1
fi
echo "readme-demo: every demo block printed what the README promises"
