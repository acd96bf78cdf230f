#!/usr/bin/env python3
"""Side-by-side tables of a benches/compare/run.sh output directory.

usage: summarize.py DIR             print the tables (markdown): every figure's median over the
                                    rounds (DIR/round-N/) with its spread, then Tandem's ratios
                                    to the relay and to the best peer against the targets
       summarize.py --saturated F   exit 0 when run F is past saturation (p99 > 50 ms or losses)
"""
import glob
import json
import os
import statistics
import sys

# "tandem-hp": Tandem's /hocuspocus endpoint. "baseline": another build of tandem (BASELINE_BIN),
# to compare a change with. "tandem-1s": Tandem with a one-second group commit.
SERVERS = ["tandem", "tandem-hp", "tandem-1s", "baseline", "reference", "hocuspocus", "y-sweet", "relay"]
# The servers people use today: "the best peer" is the best of these on each figure.
PEERS = ["reference", "hocuspocus", "y-sweet"]
P99_LIMIT_MS = 50.0


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def saturated(run):
    return run is None or run.get("lost", 1) > 0 or run.get("latency_p99_ms", 1e9) > P99_LIMIT_MS


def rounds_of(out):
    """The directories holding one round's JSON each (an older, flat output is one round)."""
    rounds = sorted(glob.glob(os.path.join(out, "round-*")), key=lambda d: int(d.rsplit("-", 1)[1]))
    return rounds or [out]


def saturation(directory, server):
    """The highest delivered/s of a saturation run that held (p99 <= 50 ms, nothing lost)."""
    ok = []
    for path in glob.glob(os.path.join(directory, f"{server}-saturate-*.json")):
        run = load(path)
        if not saturated(run):
            ok.append(run["delivered_per_sec"])
    return max(ok) if ok else None


def trace_rate(path):
    """Edits/s of a trace replay; a string saying why when it failed (no observer caught up,
    the server closed it, the text was wrong); None when it did not run."""
    if not os.path.exists(path):
        return None
    run = load(path)
    if run is None:
        return "failed"
    if not run.get("matches_end_content"):
        return f"failed ({run['observer_ended']})" if run.get("observer_ended") else "wrong text"
    return run["edits_per_sec"]


def kib(run):
    value = run and run.get("server_rss_per_connection_bytes")
    return value / 1024 if value else None


# Every figure of the table: (key, label, how to read it from a round's directory, format,
# higher is better).
def figures():
    out = []
    for scenario, label in [("fanout-1x50", "1 room × 50 clients @ 50 Hz"),
                            ("fanout-100x10", "100 rooms × 10 clients @ 10 Hz")]:
        def field(name, scenario=scenario):
            return lambda d, s: (load(os.path.join(d, f"{s}-{scenario}.json")) or {}).get(name)
        out += [
            (f"{scenario}/delivered", f"{label}: delivered/s", field("delivered_per_sec"), ".0f", True),
            (f"{scenario}/p50", f"{label}: latency p50 (ms)", field("latency_p50_ms"), ".2f", False),
            (f"{scenario}/p99", f"{label}: latency p99 (ms)", field("latency_p99_ms"), ".2f", False),
            (f"{scenario}/cpu", f"{label}: server CPU per delivered update (µs)",
             field("server_cpu_us_per_delivery"), ".1f", False),
            (f"{scenario}/lost", f"{label}: lost updates", field("lost"), ".0f", False),
        ]
    out += [
        ("saturation", "saturation (100 × 10): delivered/s with p99 ≤ 50 ms, nothing lost",
         saturation, ".0f", True),
        ("rss", "10,000 idle connections / 1,000 rooms: server RSS per connection (KiB)",
         lambda d, s: kib(load(os.path.join(d, f"{s}-connect.json"))), ".1f", False),
        ("connects", "connects/s with the sync handshake",
         lambda d, s: (load(os.path.join(d, f"{s}-connect.json")) or {}).get("connects_per_sec"), ".0f", True),
        ("failed", "failed connections",
         lambda d, s: (load(os.path.join(d, f"{s}-connect.json")) or {}).get("failed"), ".0f", False),
        ("trace-1", "trace replay, 1 edit per update: edits/s",
         lambda d, s: trace_rate(os.path.join(d, f"{s}-trace-1.json")), ".0f", True),
        ("trace-100", "trace replay, 100 edits per update: edits/s",
         lambda d, s: trace_rate(os.path.join(d, f"{s}-trace-100.json")), ".0f", True),
    ]
    return out


# The targets of Tandem's median: (figure, most or least times the relay's median, most or
# least times the best peer's median). For "higher is better" figures the bound is a minimum.
TARGETS = [
    ("fanout-1x50/cpu", 1.25, 0.8),
    ("fanout-100x10/cpu", 1.25, 0.8),
    ("fanout-1x50/p99", 1.25, 1.0),
    ("fanout-100x10/p99", 1.25, 1.0),
    ("saturation", 0.8, None),
    ("trace-1", 0.8, None),
    ("trace-100", 0.9, None),
    ("connects", None, 1.0),
    ("rss", None, 1.0),
]


def cell(values, spec):
    failures = [v for v in values if isinstance(v, str)]
    values = [v for v in values if v is not None and not isinstance(v, str)]
    if not values:
        if failures:
            return f"{failures[0]} ×{len(failures)}", None
        return "n/a", None
    median = statistics.median(values)
    text = format(median, spec)
    if len(values) > 1 and min(values) != max(values):
        text += f" ({format(min(values), spec)}–{format(max(values), spec)})"
    if failures:
        text += f"; {failures[0]} ×{len(failures)}"
    return text, median


def main():
    if sys.argv[1] == "--saturated":
        sys.exit(0 if saturated(load(sys.argv[2])) else 1)
    out = sys.argv[1]
    rounds = rounds_of(out)
    servers = [s for s in SERVERS if any(glob.glob(os.path.join(d, f"{s}-*.json")) for d in rounds)]
    medians = {}
    print(f"Medians over {len(rounds)} round(s), (min–max) where they differ.\n")
    print("| scenario | " + " | ".join(servers) + " |")
    print("| --- | " + " | ".join("---" for _ in servers) + " |")
    for key, label, read, spec, _ in figures():
        cells = []
        for s in servers:
            text, median = cell([read(d, s) for d in rounds], spec)
            medians[(key, s)] = median
            cells.append(text)
        if any(c != "n/a" for c in cells):
            print(f"| {label} | " + " | ".join(cells) + " |")

    ours = [s for s in ("tandem", "tandem-hp", "tandem-1s", "baseline") if s in servers]
    peers = [s for s in PEERS if s in servers]
    if not ours or not (peers or "relay" in servers):
        return
    higher = {key: up for key, _, _, _, up in figures()}
    labels = {key: label for key, label, _, _, _ in figures()}
    print("\nTandem's medians against the relay's and the best peer's (targets of issue #20).\n")
    print("| figure | server | median | relay | ratio | best peer | ratio | target | met |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, to_relay, to_peer in TARGETS:
        up = higher[key]
        for s in ours:
            mine = medians.get((key, s))
            if mine is None:
                continue
            relay = medians.get((key, "relay"))
            known = [(medians.get((key, p)), p) for p in peers if medians.get((key, p)) is not None]
            best = (max if up else min)(known) if known else (None, None)
            checks, wants = [], []

            def ratio(theirs, bound, what):
                if mine is None or not theirs:
                    return "n/a"
                r = mine / theirs
                if bound is not None:
                    wants.append(f"{'≥' if up else '≤'} {bound}× {what}")
                    checks.append(r >= bound if up else r <= bound)
                return f"{r:.2f}×"

            r_relay = ratio(relay, to_relay, "relay")
            r_peer = ratio(best[0], to_peer, "best peer")
            met = "n/a" if not checks else ("yes" if all(checks) else "**no**")
            relay_text = "n/a" if relay is None else f"{relay:.4g}"
            peer_text = "n/a" if best[0] is None else f"{best[0]:.4g} ({best[1]})"
            mine_text = "n/a" if mine is None else f"{mine:.4g}"
            print(f"| {labels[key]} | {s} | {mine_text} | {relay_text} | {r_relay} | {peer_text} | "
                  f"{r_peer} | {', '.join(wants) or '—'} | {met} |")


if __name__ == "__main__":
    main()
