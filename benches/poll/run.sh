#!/usr/bin/env bash
# Degraded mode under load: clients syncing documents over POST /api/v1/docs/{doc}/sync (no
# WebSocket), a round every 2 s each (the dashboard's busy interval), every round an edit and a
# cursor. Tandem runs pinned to core 0, `tandem-bench poll` drives it from core 1, a fresh server
# and data dir per client count. Results land as JSON in $OUT and as a table on stdout.
#
# usage: benches/poll/run.sh                          (from the repository root; needs taskset)
#        CLIENTS="100 1000" INTERVAL_MS=2000 benches/poll/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"100 500 1000 2000"}
DOCS=${DOCS:-50}
INTERVAL_MS=${INTERVAL_MS:-2000}
OUT=${OUT:-bench-results/poll-$(date +%Y%m%d-%H%M%S)}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
PORT=${PORT:-18400}
mkdir -p "$OUT"

echo "== building" >&2
cargo build --release --quiet -p tandem -p tandem-bench --bin tandem --bin tandem-bench

source benches/common.sh

for clients in $CLIENTS; do
  DATA=$(mktemp -d)
  # Without tokens every client is the same user here: the per-user poller cap is for tenants.
  TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" ./target/release/tandem serve --bind "127.0.0.1:$PORT" --data-dir "$DATA" \
    --max-pollers-per-user 1000000 >"$OUT/server-$clients.log" 2>&1 &
  PID=$!
  wait_port "$PORT"
  echo "== $clients clients over $DOCS documents, a round every $INTERVAL_MS ms each" >&2
  taskset -c "$BENCH_CPU" ./target/release/tandem-bench poll --url "http://127.0.0.1:$PORT" \
    --pollers "$clients" --docs "$DOCS" --interval-ms "$INTERVAL_MS" --duration "$DURATION" \
    --server-pid "$PID" --json >"$OUT/poll-$clients.json" \
    || echo "$clients clients: the run reported divergence or errors" >&2
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$DATA"
done

python3 - "$OUT" $CLIENTS <<'PY'
import json, sys
out, counts = sys.argv[1], sys.argv[2:]
print("| clients | rounds/s | errors | diverged | p50 ms | p95 ms | p99 ms | server CPU µs/round |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for clients in counts:
    try:
        r = json.load(open(f"{out}/poll-{clients}.json"))
    except (OSError, ValueError):
        print(f"| {clients} | (no result) |")
        continue
    cpu = r.get("server_cpu_us_per_round")
    print(f"| {clients} | {r['rounds_per_sec']:.0f} | {r['errors']} | {r['diverged']} "
          f"| {r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['latency_p99_ms']:.2f} "
          + (f"| {cpu:.1f} |" if cpu is not None else "| - |"))
PY
