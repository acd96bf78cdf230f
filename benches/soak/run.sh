#!/usr/bin/env bash
# The crash and soak campaign (`tandem-bench soak`): mixed load on the real server, which it
# SIGKILLs and restarts at random moments, checking after every restart that nothing
# acknowledged was lost; then a disk that fills up; then a steady soak with the server's RSS.
#
#   benches/soak/run.sh               all three (about 40 minutes)
#   benches/soak/run.sh kills         20 SIGKILLs in 5 minutes
#   benches/soak/run.sh disk          the data directory's disk fills up and frees (needs root)
#   benches/soak/run.sh steady [S]    S seconds (1800) of steady load, RSS every 10 s, then
#                                     SETTLE seconds (360) idle: past the room grace and
#                                     --workspace-idle-ms (300 s), so rooms and workspaces
#                                     unload and what stays is what the server keeps idle
#
# Results (tables, and JSON) go to bench-results/soak-*.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/common.sh
what="${1:-all}"
out=bench-results
mkdir -p "$out"
cargo build --release -p tandem -p tandem-bench --bin tandem --bin tandem-bench
bin=target/release/tandem
bench=target/release/tandem-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kills() {
  echo "== 20 SIGKILLs under mixed load"
  "$bench" soak --server-bin "$bin" --data-dir "$work/kills" --port 18701 \
    --kills 20 --duration 300 --seed "${SEED:-7}" | tee "$out/soak-kills.txt"
}

steady() {
  local secs="${1:-1800}"
  echo "== steady load for $secs s"
  "$bench" soak --server-bin "$bin" --data-dir "$work/steady" --port 18702 \
    --kills 0 --duration "$secs" --sample-secs 10 --settle-secs "${SETTLE:-360}" \
    | tee "$out/soak-steady.txt"
}

disk() {
  echo "== the data directory's disk fills up"
  benches/soak/disk_full.sh "$bin" "$work/disk" | tee "$out/soak-disk.txt"
}

case "$what" in
  kills) kills ;;
  steady) steady "${2:-1800}" ;;
  disk) disk ;;
  all) kills; disk; steady 1800 ;;
  *) echo "usage: $0 [kills|disk|steady [SECONDS]|all]" >&2; exit 2 ;;
esac
