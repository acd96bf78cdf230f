# Shared by the benchmark scripts: `source benches/common.sh`.

# Waits until something listens on 127.0.0.1:$1 (10 s at most).
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2
  return 1
}
