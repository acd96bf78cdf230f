#!/usr/bin/env python3
"""Side-by-side table of a benches/compare/run.sh output directory.

usage: summarize.py DIR             print the table (markdown)
       summarize.py --saturated F   exit 0 when run F is past saturation (p99 > 50 ms or losses)
"""
import glob
import json
import os
import sys

# "tandem-hp": Tandem's /hocuspocus endpoint. "baseline": another build of tandem (BASELINE_BIN),
# to compare a change with.
SERVERS = ["tandem", "tandem-hp", "baseline", "reference", "hocuspocus", "relay"]
P99_LIMIT_MS = 50.0


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def saturated(run):
    return run is None or run.get("lost", 1) > 0 or run.get("latency_p99_ms", 1e9) > P99_LIMIT_MS


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def fanout_cells(run):
    if run is None:
        return ["n/a"] * 4
    return [
        f"{run['delivered_per_sec']:.0f}",
        f"{run['latency_p50_ms']:.2f} / {run['latency_p99_ms']:.2f}",
        fmt(run.get("server_cpu_us_per_delivery"), ".1f"),
        str(run["lost"]),
    ]


def main():
    if sys.argv[1] == "--saturated":
        sys.exit(0 if saturated(load(sys.argv[2])) else 1)
    out = sys.argv[1]
    servers = [s for s in SERVERS if glob.glob(os.path.join(out, f"{s}-*.json"))]
    rows = []
    for scenario, label in [("fanout-1x50", "1 room x 50 clients @ 50 Hz"), ("fanout-100x10", "100 rooms x 10 clients @ 10 Hz")]:
        cells = {s: fanout_cells(load(os.path.join(out, f"{s}-{scenario}.json"))) for s in servers}
        for i, what in enumerate(["delivered/s", "latency p50 / p99 ms", "server CPU µs per delivered update", "lost updates"]):
            rows.append([f"{label}: {what}"] + [cells[s][i] for s in servers])
    best = {}
    for s in servers:
        ok = []
        for path in glob.glob(os.path.join(out, f"{s}-saturate-*.json")):
            run = load(path)
            if not saturated(run):
                ok.append(run["delivered_per_sec"])
        best[s] = max(ok) if ok else None
    rows.append(["saturation (100x10): delivered/s with p99 <= 50 ms, no loss"] + [fmt(best[s], ".0f") for s in servers])
    connect = {s: load(os.path.join(out, f"{s}-connect.json")) for s in servers}
    rows.append(["10,000 idle connections / 1,000 rooms: server RSS per connection (KiB)"] + [
        fmt(c and c.get("server_rss_per_connection_bytes") and c["server_rss_per_connection_bytes"] / 1024, ".1f") for c in connect.values()])
    rows.append(["connects/s with the sync handshake"] + [fmt(c and c.get("connects_per_sec"), ".0f") for c in connect.values()])
    rows.append(["failed connections"] + [fmt(c and c.get("failed"), "d") for c in connect.values()])
    for scenario, label in [("trace-1", "trace replay, 1 edit per update: edits/s"), ("trace-100", "trace replay, 100 edits per update: edits/s")]:
        cells = []
        for s in servers:
            run = load(os.path.join(out, f"{s}-{scenario}.json"))
            if run is None:
                cells.append("n/a")
            else:
                cell = f"{run['edits_per_sec']:.0f}"
                if not run["matches_end_content"]:
                    ended = run.get("observer_ended")
                    cell = f"failed ({ended})" if ended else cell + " (WRONG TEXT)"
                cells.append(cell)
        rows.append([label] + cells)
    print("| scenario | " + " | ".join(servers) + " |")
    print("| --- | " + " | ".join("---" for _ in servers) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
