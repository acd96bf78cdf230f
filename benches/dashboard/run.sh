#!/usr/bin/env bash
# The dashboard under load: 1,000 subscribers on /ws in one workspace, events published over
# HTTP at several rates. Tandem runs pinned to core 0, `tandem-bench events` drives it from
# core 1, a fresh server and data dir per rate. Results land as JSON in $OUT and as a table on
# stdout.
#
# usage: benches/dashboard/run.sh                     (from the repository root; needs taskset)
#        RATES="10 100" SUBSCRIBERS=500 benches/dashboard/run.sh
#        TANDEM_BIN=/tmp/old/tandem benches/dashboard/run.sh    (another build of tandem)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATES=${RATES:-"10 100 300 1000"}
OUT=${OUT:-bench-results/dashboard-$(date +%Y%m%d-%H%M%S)}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
PORT=${PORT:-18300}
TANDEM_BIN=${TANDEM_BIN:-./target/release/tandem}
mkdir -p "$OUT"

echo "== building" >&2
cargo build --release --quiet -p tandem -p tandem-bench --bin tandem --bin tandem-bench

source benches/common.sh

for rate in $RATES; do
  DATA=$(mktemp -d)
  # The publishing limits are for tenants, not for the benchmark.
  TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" "$TANDEM_BIN" serve --bind "127.0.0.1:$PORT" --data-dir "$DATA" \
    --publish-rate-workspace 1000000 --publish-rate-user 1000000 >"$OUT/server-$rate.log" 2>&1 &
  PID=$!
  wait_port "$PORT"
  echo "== $SUBSCRIBERS subscribers, $rate events/s" >&2
  taskset -c "$BENCH_CPU" ./target/release/tandem-bench events --url "http://127.0.0.1:$PORT" \
    --subscribers "$SUBSCRIBERS" --rate "$rate" --duration "$DURATION" --server-pid "$PID" --json \
    >"$OUT/events-$rate.json" || echo "rate $rate: the run reported losses or errors" >&2
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$DATA"
done

python3 - "$OUT" $RATES <<'PY'
import json, sys
out, rates = sys.argv[1], sys.argv[2:]
print("| events/s | published/s | deliveries/s | frames | lost | p50 ms | p95 ms | p99 ms | server CPU µs/delivery |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for rate in rates:
    try:
        r = json.load(open(f"{out}/events-{rate}.json"))
    except (OSError, ValueError):
        print(f"| {rate} | (no result) |")
        continue
    cpu = r.get("server_cpu_us_per_delivery")
    print(f"| {rate} | {r['published_per_sec']:.0f} | {r['delivered_per_sec']:.0f} | {r['frames']} | {r['lost']} "
          f"| {r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['latency_p99_ms']:.2f} "
          f"| {cpu:.1f} |" if cpu is not None else "| - |")
PY
