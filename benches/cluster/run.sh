#!/usr/bin/env bash
# The cluster benchmark: three Tandem nodes on this machine's PostgreSQL and Redis, the bench's
# fanout with every client on one node, then spread round-robin over the three (so most
# deliveries cross nodes), and dashboard events published and subscribed across nodes. For
# each: latency p50/p99, server CPU per delivery summed over the nodes, losses; and
# PostgreSQL transactions per group commit of the update log.
#
#   benches/cluster/run.sh                  # DURATION=10 s per scenario
#   DURATION=20 OUT=target/bench-cluster benches/cluster/run.sh
#
# Needs PostgreSQL (PG, default postgres://postgres@127.0.0.1:5432, a database of its own is
# created and dropped) and Redis (REDIS, default redis://127.0.0.1:6379, a cluster name of its
# own). The nodes share core 0 (taskset), the load generator runs on core 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/common.sh

DURATION=${DURATION:-10}
OUT=${OUT:-target/bench-cluster}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379}
DB=tandem_bench_cluster_$$
NAME=bench-$$
mkdir -p "$OUT"

cargo build --release -p tandem -p tandem-bench --bin tandem --bin tandem-bench
TANDEM=target/release/tandem
BENCH=(target/release/tandem-bench)
PIN_SERVER=() PIN_BENCH=()
if command -v taskset >/dev/null; then PIN_SERVER=(taskset -c 0) PIN_BENCH=(taskset -c 1); fi

psql "$PG/postgres" -qAtc "CREATE DATABASE $DB"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT

PORTS=(8101 8102 8103)
for i in 0 1 2; do
  TANDEM_MAX_CONNECTIONS_PER_IP=0 "${PIN_SERVER[@]}" "$TANDEM" serve --bind "127.0.0.1:${PORTS[$i]}" \
    --database-url "$PG/$DB" --redis-url "$REDIS" --cluster-name "$NAME" --node-id "n$i" \
    --log-format json >"$OUT/node-$i.log" 2>&1 &
  PIDS+=($!)
  wait_port "${PORTS[$i]}"
done
PID_ARGS=()
for pid in "${PIDS[@]}"; do PID_ARGS+=(--server-pid "$pid"); done

# Group commits of the update log, summed over the nodes, and the seconds they took.
flushes() {
  local total=0 n
  for port in "${PORTS[@]}"; do
    n=$(curl -s "http://127.0.0.1:$port/metrics" |
      awk '/^tandem_storage_flush_seconds_count\{log="updates"\}/ {print $2}')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
flush_seconds() {
  for port in "${PORTS[@]}"; do
    curl -s "http://127.0.0.1:$port/metrics" |
      awk '/^tandem_storage_flush_seconds_sum\{log="updates"\}/ {print $2}'
  done | awk '{s += $1} END {printf "%.6f", s}'
}
commits() { psql "$PG/$DB" -qAtc "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }

fanout() {
  local scenario=$1; shift
  echo "== $scenario" >&2
  local f0 c0 f1 c1 s0 s1
  f0=$(flushes) c0=$(commits) s0=$(flush_seconds)
  "${PIN_BENCH[@]}" "${BENCH[@]}" fanout --rooms 100 --clients 10 --writers 1 --rate 10 \
    --duration "$DURATION" --room-prefix "$scenario" "${PID_ARGS[@]}" "$@" --json \
    >"$OUT/$scenario.json" || echo "   ($scenario reported a failure; see the JSON)" >&2
  sleep 1
  f1=$(flushes) c1=$(commits) s1=$(flush_seconds)
  python3 - "$OUT/$scenario.json" "$((f1 - f0))" "$((c1 - c0))" "$s0" "$s1" <<'PY'
import json, sys
path, flushes, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds = float(sys.argv[5]) - float(sys.argv[4])
report = json.load(open(path))
report["group_commits"] = flushes
report["postgres_transactions"] = commits
report["transactions_per_group_commit"] = round(commits / flushes, 2) if flushes else None
report["group_commit_mean_ms"] = round(1000 * seconds / flushes, 2) if flushes else None
json.dump(report, open(path, "w"), indent=1)
PY
}

fanout one-node --url ws://127.0.0.1:8101/ws
fanout spread --url ws://127.0.0.1:8101/ws --url ws://127.0.0.1:8102/ws --url ws://127.0.0.1:8103/ws

echo "== events across nodes" >&2
"${PIN_BENCH[@]}" "${BENCH[@]}" events --subscribers 300 --rate 100 --duration "$DURATION" \
  --url http://127.0.0.1:8101 --url http://127.0.0.1:8102 --url http://127.0.0.1:8103 \
  --workspace "bench-$$" "${PID_ARGS[@]}" --json >"$OUT/events-spread.json" ||
  echo "   (events reported a failure; see the JSON)" >&2

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"{'scenario':<14}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/deliv':>14}{'lost':>7}{'dup':>6}{'tx/commit':>11}{'commit ms':>11}")
reports = {}
for name in ["one-node", "spread", "events-spread"]:
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        continue
    r = reports[name] = json.load(open(path))
    cpu = r.get("server_cpu_us_per_delivery")
    print(f"{name:<14}{r['latency_p50_ms']:>9.2f}{r['latency_p99_ms']:>9.2f}"
          f"{(cpu if cpu is not None else float('nan')):>14.1f}{r.get('lost', 0):>7}"
          f"{r.get('duplicates', 0):>6}{str(r.get('transactions_per_group_commit', '-')):>11}"
          f"{str(r.get('group_commit_mean_ms', '-')):>11}")
if "one-node" in reports and "spread" in reports:
    # The issue's target: cross-node p99 within 2x the single-node p99 plus one group-commit
    # interval (the update log's flush interval, 5 ms by default).
    interval = float(os.environ.get("FLUSH_INTERVAL_MS", "5"))
    target = 2 * reports["one-node"]["latency_p99_ms"] + interval
    spread = reports["spread"]["latency_p99_ms"]
    print(f"target: spread p99 {spread:.2f} ms within 2 x {reports['one-node']['latency_p99_ms']:.2f} + {interval:g} = {target:.2f} ms: {'met' if spread <= target else 'NOT met'}")
PY
