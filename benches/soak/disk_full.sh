#!/usr/bin/env bash
# The data directory on a small tmpfs that fills up: `tandem-bench soak --fill` does the rest
# (writes refused with 503, /readyz failing, nothing stored damaged, recovery once freed).
# Needs root for the mount. Usage: benches/soak/disk_full.sh TANDEM_BINARY WORKDIR
# The server's log goes to WORKDIR.log, off the full disk.
set -euo pipefail
bin="$1"
dir="$2"
mkdir -p "$dir"
mount -t tmpfs -o size=256m tmpfs "$dir"
trap 'umount "$dir" || true' EXIT
"$(dirname "$bin")/tandem-bench" soak --server-bin "$bin" --data-dir "$dir/data" --port 18703 \
  --server-log "$dir.log" --fill "$dir/ballast" -- --storage-timeout-ms 2000
