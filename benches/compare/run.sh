#!/usr/bin/env bash
# Tandem side by side with the servers people use today, on this machine.
#
# Each server (Tandem, Tandem's Hocuspocus endpoint, the reference y-websocket server,
# Hocuspocus, y-sweet, and a bare relay that only forwards bytes: the ceiling) runs pinned to
# core 0 while `tandem-bench` drives it from core 1, through the same scenarios, with a fresh
# server per run. The runs are interleaved: each round goes through every scenario, and within a
# scenario through every server (in an order that rotates from round to round), so a slow minute
# of the machine lands on all of them rather than on one. The table gives each figure's median
# over the rounds with its spread (min–max), and the ratios of Tandem's median to the relay's
# and to the best peer's. Results land as JSON in $OUT/round-N/ and the table on stdout.
#
# usage: benches/compare/run.sh              (from the repository root; needs taskset, node, npm,
#                                            and y-sweet: `cargo install y-sweet --locked`)
#        ROUNDS=5 DURATION=10 SAT_DURATION=5 benches/compare/run.sh   (the defaults: 3, 10 s, 5 s)
#        SERVERS="tandem y-sweet relay" SCENARIOS="fanout-100x10 trace-1" benches/compare/run.sh
#        SERVERS="tandem-hp hocuspocus" benches/compare/run.sh
#                                            (the Hocuspocus protocol: Tandem's /hocuspocus
#                                            beside the Hocuspocus server)
#        BASELINE_BIN=/tmp/old/tandem SERVERS="tandem baseline" benches/compare/run.sh
#                                            (this build beside another build of tandem)
#        SERVERS="tandem tandem-1s relay" benches/compare/run.sh
#                                            (tandem-1s: a one-second group commit, to see
#                                            what durability within 5 ms costs)
#        benches/compare/summarize.py bench-results/compare-…   (the table again)
#
# Scenarios: fanout-1x50 (1 room × 50 clients, one writer at 50 Hz), fanout-100x10 (100 rooms ×
# 10 clients, one writer each at 10 Hz), saturate (100 × 10, the writers' rate doubled until p99
# passes 50 ms or an update is lost, then bisected), connect (10,000 connections over 1,000
# rooms: RSS per connection, connects/s), trace-1 and trace-100 (the automerge-paper trace, 1 and
# 100 edits per update).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
# Each step of the saturation search writes for this long.
SAT_DURATION=${SAT_DURATION:-5}
ROUNDS=${ROUNDS:-3}
SERVERS=${SERVERS:-"tandem tandem-hp reference hocuspocus y-sweet relay"}
SCENARIOS=${SCENARIOS:-"fanout-1x50 fanout-100x10 saturate connect trace-1 trace-100"}
OUT=${OUT:-bench-results/compare-$(date +%Y%m%d-%H%M%S)}
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
YSWEET=${YSWEET:-$(command -v y-sweet || echo "$HOME/.cargo/bin/y-sweet")}
mkdir -p "$OUT"

echo "== building" >&2
cargo build --release --quiet -p tandem -p tandem-bench --bin tandem --bin tandem-bench --example relay
(cd benches/compare && npm ci --no-audit --no-fund --silent)
case " $SERVERS " in
  *" y-sweet "*)
    if [ ! -x "$YSWEET" ]; then
      echo "y-sweet is not installed: cargo install y-sweet --locked (or leave it out of SERVERS)" >&2
      exit 1
    fi ;;
esac
BENCH=(taskset -c "$BENCH_CPU" ./target/release/tandem-bench)

source benches/common.sh

start_server() {
  local name=$1
  case $name in
    tandem)
      DATA=$(mktemp -d)
      TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" ./target/release/tandem serve --bind 127.0.0.1:18200 --data-dir "$DATA" \
        >"$LOGS/$name.log" 2>&1 &
      PORT=18200 URL=ws://127.0.0.1:18200/ws PROTOCOL=y-websocket ;;
    tandem-1s)
      # Tandem with a one-second group-commit window instead of 5 ms: what the durability of
      # every update within 5 ms costs (not a setting to run with: a crash loses up to a second).
      DATA=$(mktemp -d)
      TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" ./target/release/tandem serve --bind 127.0.0.1:18207 --data-dir "$DATA" \
        --flush-interval-ms 1000 >"$LOGS/$name.log" 2>&1 &
      PORT=18207 URL=ws://127.0.0.1:18207/ws PROTOCOL=y-websocket ;;
    tandem-hp)
      DATA=$(mktemp -d)
      TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" ./target/release/tandem serve --bind 127.0.0.1:18205 --data-dir "$DATA" \
        >"$LOGS/$name.log" 2>&1 &
      PORT=18205 URL=ws://127.0.0.1:18205/hocuspocus PROTOCOL=hocuspocus ;;
    reference)
      HOST=127.0.0.1 PORT=18201 taskset -c "$SERVER_CPU" node benches/compare/node_modules/@y/websocket-server/src/server.js \
        >"$LOGS/$name.log" 2>&1 &
      PORT=18201 URL=ws://127.0.0.1:18201 PROTOCOL=y-websocket ;;
    hocuspocus)
      PORT=18202 taskset -c "$SERVER_CPU" node benches/compare/hocuspocus.mjs >"$LOGS/$name.log" 2>&1 &
      PORT=18202 URL=ws://127.0.0.1:18202 PROTOCOL=hocuspocus ;;
    y-sweet)
      # Its own storage on disk, as Tandem's: documents persist to the directory. Its log
      # (a line per save at its default level) is kept to warnings, as Tandem logs no line per update.
      DATA=$(mktemp -d)
      RUST_LOG=${YSWEET_LOG:-warn} taskset -c "$SERVER_CPU" "$YSWEET" serve "$DATA" --host 127.0.0.1 --port 18206 \
        >"$LOGS/$name.log" 2>&1 &
      PORT=18206 URL=ws://127.0.0.1:18206/doc/ws PROTOCOL=y-websocket ;;
    relay)
      taskset -c "$SERVER_CPU" ./target/release/examples/relay 127.0.0.1:18203 >"$LOGS/$name.log" 2>&1 &
      PORT=18203 URL=ws://127.0.0.1:18203/ws PROTOCOL=y-websocket ;;
    baseline)
      if [ ! -x "${BASELINE_BIN:-}" ]; then echo "baseline: set BASELINE_BIN to a tandem binary" >&2; return 1; fi
      DATA=$(mktemp -d)
      TANDEM_MAX_CONNECTIONS_PER_IP=0 taskset -c "$SERVER_CPU" "$BASELINE_BIN" serve --bind 127.0.0.1:18204 --data-dir "$DATA" \
        >"$LOGS/$name.log" 2>&1 &
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

# One fresh server per run, so no run inherits another's documents or memory.
run() {
  local server=$1 scenario=$2; shift 2
  start_server "$server"
  echo "== round $round/$ROUNDS, $server: $scenario" >&2
  local args=()
  for arg in "$@"; do
    if [ "$arg" = "--server-pid-from-env" ]; then args+=(--server-pid "$PID"); else args+=("$arg"); fi
  done
  if ! "${BENCH[@]}" "${args[@]}" --url "$URL" --protocol "$PROTOCOL" --json >"$DIR/$server-$scenario.json"; then
    echo "   ($server $scenario reported a failure; see the JSON)" >&2
  fi
  stop_server
}

# Runs the saturation scenario at one rate; succeeds when that rate is past saturation.
saturate_at() {
  run "$1" "saturate-$2" fanout --rooms 100 --clients 10 --writers 1 --rate "$2" --duration "$SAT_DURATION" --drain 5 --server-pid-from-env
  python3 benches/compare/summarize.py --saturated "$DIR/$1-saturate-$2.json"
}

# Saturation: double the rate until p99 passes 50 ms (or updates are lost), then bisect between
# the last rate that held and the first that did not.
saturate() {
  local server=$1 good=0 bad=0 rate
  for rate in 20 40 80 160 320 640 1280; do
    if saturate_at "$server" "$rate"; then bad=$rate; break; fi
    good=$rate
  done
  if [ "$bad" -gt 0 ]; then
    for _ in 1 2 3; do
      rate=$(( (good + bad) / 2 ))
      if [ "$rate" -le "$good" ]; then break; fi
      if saturate_at "$server" "$rate"; then bad=$rate; else good=$rate; fi
    done
  fi
}

scenario() {
  local server=$1
  case $2 in
    fanout-1x50) run "$server" fanout-1x50 fanout --rooms 1 --clients 50 --writers 1 --rate 50 --duration "$DURATION" --drain 5 --server-pid-from-env ;;
    fanout-100x10) run "$server" fanout-100x10 fanout --rooms 100 --clients 10 --writers 1 --rate 10 --duration "$DURATION" --drain 5 --server-pid-from-env ;;
    saturate) saturate "$server" ;;
    connect) run "$server" connect connect --clients 10000 --rooms 1000 --concurrency 64 --server-pid-from-env ;;
    trace-1) run "$server" trace-1 trace --batch 1 ;;
    trace-100) run "$server" trace-100 trace --batch 100 ;;
    *) echo "unknown scenario $2" >&2; return 1 ;;
  esac
}

read -r -a servers <<<"$SERVERS"
for round in $(seq "$ROUNDS"); do
  DIR="$OUT/round-$round" LOGS="$OUT/round-$round/logs"
  mkdir -p "$LOGS"
  for name in $SCENARIOS; do
    # The servers' order rotates from round to round: none always runs first or last.
    n=${#servers[@]}
    for i in $(seq 0 $((n - 1))); do
      scenario "${servers[$(( (i + round - 1) % n ))]}" "$name"
    done
  done
done

python3 benches/compare/summarize.py "$OUT"
