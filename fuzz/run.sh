#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from its committed seed corpus:
#   fuzz/run.sh            30 s each (what CI runs)
#   fuzz/run.sh 600        ten minutes each
#   fuzz/run.sh 60 room    one target
# The corpus grows in target/fuzz-corpus/ (the committed one is not touched); a crash leaves
# its input in fuzz/artifacts/{target}/ and fails the run. Needs cargo-fuzz (installed here if
# missing) and builds with RUSTC_BOOTSTRAP=1, for libFuzzer's instrumentation flags, on the
# stable toolchain.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sync_frame awareness update_v1 room dashboard_frame http_bodies jwt hocuspocus_frame)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
echo "== building the fuzz targets"
cargo fuzz build -O
failed=()
for target in "${targets[@]}"; do
  work="target/fuzz-corpus/$target"
  mkdir -p "$work"
  echo "== $target: ${seconds} s"
  if cargo fuzz run -O "$target" "$work" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
      2>"target/fuzz-$target.log"; then
    grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "target/fuzz-$target.log" || true
  else
    grep -E "panic escaped|ERROR|SUMMARY" -A4 "target/fuzz-$target.log" | head -30 || true
    # The input itself, so a failure seen only in a CI log can be replayed here:
    #   echo BASE64 | base64 -d > crash && cargo fuzz run -O TARGET crash
    artifact=$(ls -t "artifacts/$target"/* 2>/dev/null | head -1 || true)
    if [ -n "$artifact" ] && [ "$(stat -c %s "$artifact")" -le 16384 ]; then
      echo "its input, base64: $(base64 -w0 "$artifact")"
    fi
    echo "$target FAILED: its input is in fuzz/artifacts/$target/, its log in fuzz/target/fuzz-$target.log" >&2
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}" >&2
  exit 1
fi
