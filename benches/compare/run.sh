#!/usr/bin/env bash
# Tandem side by side with the servers people use today, on this machine.
#
# Each server (Tandem, Tandem's Hocuspocus endpoint, the reference y-websocket server,
# Hocuspocus, and a bare relay that only forwards bytes: the ceiling) runs pinned to core 0 while `tandem-bench` drives it from core 1,
# through the same scenarios. Results land as JSON in $OUT and as a table on stdout.
#
# usage: benches/compare/run.sh              (from the repository root; needs taskset, node, npm)
#        DURATION=5 SERVERS="tandem relay" benches/compare/run.sh
#        SERVERS="tandem-hp hocuspocus" benches/compare/run.sh
#                                            (the Hocuspocus protocol: Tandem's /hocuspocus
#                                            beside the Hocuspocus server)
#        BASELINE_BIN=/tmp/old/tandem SERVERS="tandem baseline" benches/compare/run.sh
#                                            (this build beside another build of tandem)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
SERVERS=${SERVERS:-"tandem tandem-hp reference hocuspocus relay"}
OUT=${OUT:-bench-results/compare-$(date +%Y%m%d-%H%M%S)}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
mkdir -p "$OUT"

echo "== building" >&2
cargo build --release --quiet -p tandem -p tandem-bench --bin tandem --bin tandem-bench --example relay
(cd benches/compare && npm ci --no-audit --no-fund --silent)
BENCH=(taskset -c "$BENCH_CPU" ./target/release/tandem-bench)

source benches/common.sh

start_server() {
  local name=$1
  case $name in
    tandem)
      DATA=$(mktemp -d)
      TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" ./target/release/tandem serve --bind 127.0.0.1:18200 --data-dir "$DATA" \
        >"$OUT/$name.log" 2>&1 &
      PORT=18200 URL=ws://127.0.0.1:18200/ws PROTOCOL=y-websocket ;;
    tandem-hp)
      DATA=$(mktemp -d)
      TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" ./target/release/tandem serve --bind 127.0.0.1:18205 --data-dir "$DATA" \
        >"$OUT/$name.log" 2>&1 &
      PORT=18205 URL=ws://127.0.0.1:18205/hocuspocus PROTOCOL=hocuspocus ;;
    reference)
      HOST=127.0.0.1 PORT=18201 taskset -c "$SERVER_CPU" node benches/compare/node_modules/@y/websocket-server/src/server.js \
        >"$OUT/$name.log" 2>&1 &
      PORT=18201 URL=ws://127.0.0.1:18201 PROTOCOL=y-websocket ;;
    hocuspocus)
      PORT=18202 taskset -c "$SERVER_CPU" node benches/compare/hocuspocus.mjs >"$OUT/$name.log" 2>&1 &
      PORT=18202 URL=ws://127.0.0.1:18202 PROTOCOL=hocuspocus ;;
    relay)
      taskset -c "$SERVER_CPU" ./target/release/examples/relay 127.0.0.1:18203 >"$OUT/$name.log" 2>&1 &
      PORT=18203 URL=ws://127.0.0.1:18203/ws PROTOCOL=y-websocket ;;
    baseline)
      if [ ! -x "${BASELINE_BIN:-}" ]; then echo "baseline: set BASELINE_BIN to a tandem binary" >&2; return 1; fi
      DATA=$(mktemp -d)
      taskset -c "$SERVER_CPU" "$BASELINE_BIN" serve --bind 127.0.0.1:18204 --data-dir "$DATA" \
        >"$OUT/$name.log" 2>&1 &
      PORT=18204 URL=ws://127.0.0.1:18204/ws PROTOCOL=y-websocket ;;
    *) echo "unknown server $name" >&2; return 1 ;;
  esac
  PID=$!
  wait_port "$PORT"
}

stop_server() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  if [ -n "${DATA:-}" ]; then rm -rf "$DATA"; DATA=; fi
}

# One fresh server per scenario, so no run inherits another's documents or memory.
run() {
  local server=$1 scenario=$2; shift 2
  start_server "$server"
  echo "== $server: $scenario" >&2
  local args=()
  for arg in "$@"; do
    if [ "$arg" = "--server-pid-from-env" ]; then args+=(--server-pid "$PID"); else args+=("$arg"); fi
  done
  if ! "${BENCH[@]}" "${args[@]}" --url "$URL" --protocol "$PROTOCOL" --json >"$OUT/$server-$scenario.json"; then
    echo "   ($server $scenario reported a failure; see the JSON)" >&2
  fi
  stop_server
}

# Runs the saturation scenario at one rate; succeeds when that rate is past saturation.
saturate() {
  run "$1" "saturate-$2" fanout --rooms 100 --clients 10 --writers 1 --rate "$2" --duration "$DURATION" --drain 10 --server-pid-from-env
  python3 benches/compare/summarize.py --saturated "$OUT/$1-saturate-$2.json"
}

for server in $SERVERS; do
  run "$server" fanout-1x50 fanout --rooms 1 --clients 50 --writers 1 --rate 50 --duration "$DURATION" --server-pid-from-env
  run "$server" fanout-100x10 fanout --rooms 100 --clients 10 --writers 1 --rate 10 --duration "$DURATION" --server-pid-from-env
  # Saturation: double the rate until p99 passes 50 ms (or updates are lost), then bisect
  # between the last rate that held and the first that did not.
  good=0 bad=0
  for rate in 20 40 80 160 320 640 1280; do
    if saturate "$server" "$rate"; then bad=$rate; break; fi
    good=$rate
  done
  if [ "$bad" -gt 0 ]; then
    for _ in 1 2 3; do
      rate=$(( (good + bad) / 2 ))
      if [ "$rate" -le "$good" ]; then break; fi
      if saturate "$server" "$rate"; then bad=$rate; else good=$rate; fi
    done
  fi
  run "$server" connect connect --clients 10000 --rooms 1000 --concurrency 64 --server-pid-from-env
  run "$server" trace-1 trace --batch 1
  run "$server" trace-100 trace --batch 100
done

python3 benches/compare/summarize.py "$OUT"
