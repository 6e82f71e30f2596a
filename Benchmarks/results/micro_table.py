#!/usr/bin/env python3
"""Markdown tables for micro.md from package-benchmark's JMH export.

    cd Benchmarks && swift package --disable-sandbox benchmark --no-progress --format jmh --path DIR
    python3 results/micro_table.py DIR/Current_run.jmh.json [DIR2/Current_run.jmh.json]

The export keeps each metric per measured iteration: times in microseconds, counts as counted.
An iteration is 1,000 operations (scalingFactor .kilo) except for the benchmarks in ONE_OP
(scalingFactor .one); every figure printed is per operation.

- Wall clock: p50 and p99 over the iterations, divided by the operations per iteration.
- CPU: package-benchmark reads it from /proc/self/stat in 10 ms scheduler ticks, so one
  iteration's CPU time is 0 or a multiple of 10 ms: only the mean over all iterations means
  something, and that is what is printed.
- Allocations: mean malloc count per iteration.
- Reading /proc/self/stat (for cpuTotal) happens inside the CPU and malloc windows. Each target
  has a "Harness: empty iteration" benchmark; its mean CPU and mallocs per iteration are
  subtracted from the target's other benchmarks before dividing. Targets without it
  (QuotaBenchmarks: no cpuTotal metric) get no correction and no CPU column.
- A second export, if given, adds its p50 and mean CPU as two more columns (run-to-run spread).
"""

import json
import sys

ONE_OP = {"JWT HS256 verify, cold", "JWT ES256 verify, cold", "JWT RS256 verify, cold", "Harness: empty iteration"}
HARNESS = "Harness: empty iteration"

TARGETS = ["HTTPBenchmarks", "WebSocketBenchmarks", "TunnelBenchmarks", "AuthBenchmarks", "QuotaBenchmarks"]

# Row order within a target: first matching prefix wins; others follow alphabetically.
ORDER = [
    "Request decode: browser GET (", "Request decode: browser GET, 4", "Request decode: proxied POST /",
    "Request decode: proxied POST +", "Response decode", "Response head encode (200, 4 fields), reused",
    "Response head encode (200, 4 fields), fresh", "Request head encode",
    "Decode masked binary frame 64", "Decode masked binary frame 16", "Decode masked text frame 16 KiB ASCII",
    "Decode masked text frame 16 KiB multi", "Encode frame 64 B, masked", "Encode frame 64 B, unmasked",
    "Encode frame 16 KiB, masked", "Encode frame 16 KiB, unmasked", "Send 64 B message, client",
    "Send 64 B message, server", "UTF-8 validator 16 KiB ASCII", "UTF-8 validator 16 KiB multi",
    "OPEN encode", "OPEN decode", "DATA 1 KiB encode", "DATA 16 KiB encode", "DATA 1 KiB decode",
    "DATA 16 KiB decode", "WINDOW UPDATE encode", "WINDOW UPDATE decode", "Stream lifecycle, 1 ",
    "Stream lifecycle, 256", "DATA 1 KiB + consumed",
    "JWT HS256 verify, cold", "JWT ES256 verify, cold", "JWT RS256 verify, cold", "JWT HS256 verify, cached",
    "JWT ES256 verify, cached", "JWT RS256 verify, cached", "Token extraction: Authorization",
    "Token extraction: ?token", "Token extraction: Sec-WebSocket",
    "Request quota check", "Byte shaping", "TierTable", "AddressLimiter", "Session lookup ([",
    "Session lookup, key", "Request path total",
    HARNESS,
]


def rank(name):
    for i, prefix in enumerate(ORDER):
        if name.startswith(prefix):
            return (i, name)
    return (len(ORDER), name)


def fmt_ns(ns):
    if ns >= 100:
        return f"{ns:,.0f}"
    return f"{ns:,.1f}"


def load(path):
    by_target = {}
    for run in json.load(open(path)):
        _, _, target, key = run["benchmark"].split(".", 3)
        by_target.setdefault(target, {})[key.replace("_", " ")] = run
    return by_target


def per_op_cpu(runs, name, ops):
    """Mean CPU ns per operation, harness subtracted; None where the target has no cpuTotal."""
    harness = runs.get(HARNESS)
    if harness is None or name == HARNESS:
        return None
    base = harness["secondaryMetrics"]["Time (total CPU)"]["score"]
    return max(0.0, runs[name]["secondaryMetrics"]["Time (total CPU)"]["score"] - base) * 1000 / ops


def main(path, second=None):
    by_target = load(path)
    other = load(second) if second else {}

    for target in TARGETS + sorted(set(by_target) - set(TARGETS)):
        if target not in by_target:
            continue
        runs = by_target[target]
        harness = runs.get(HARNESS)
        # The export repeats a previous benchmark's metrics for metrics a benchmark lacks:
        # trust CPU only where the target measures it (it has the harness benchmark).
        cpu_base = harness["secondaryMetrics"]["Time (total CPU)"]["score"] if harness else None
        malloc_base = harness["secondaryMetrics"]["Malloc (total)"]["score"] if harness else 0
        print(f"### {target}\n")
        extra_head, extra_rule = ("| p50 ns, run 2 | mean CPU ns, run 2 ", "---:|---:|") if other else ("", "")
        print(f"| benchmark | ops/iter | p50 ns | p99 ns | mean CPU ns | allocs/op | iterations {extra_head}|")
        print(f"|---|---:|---:|---:|---:|---:|---:|{extra_rule}")
        for name in sorted(runs, key=rank):
            run = runs[name]
            ops = 1 if name in ONE_OP else 1000
            metrics = run["secondaryMetrics"]
            p = metrics["Time (wall clock)"]["scorePercentiles"]
            if name == HARNESS:
                cpu = fmt_ns(cpu_base * 1000) + " (subtracted)"
                allocs = f"{malloc_base:.2f} (subtracted)"
            else:
                c = per_op_cpu(runs, name, ops)
                cpu = "–" if c is None else fmt_ns(c)
                allocs = f"{max(0.0, metrics['Malloc (total)']['score'] - malloc_base) / ops:.2f}"
            extra = ""
            if other:
                runs2 = other.get(target, {})
                if name in runs2:
                    p2 = runs2[name]["secondaryMetrics"]["Time (wall clock)"]["scorePercentiles"]["50.0"]
                    c2 = per_op_cpu(runs2, name, ops)
                    extra = f"| {fmt_ns(p2 * 1000 / ops)} | {'–' if c2 is None else fmt_ns(c2)} "
                else:
                    extra = "| | "
            print(f"| {name} | {ops:,} | {fmt_ns(p['50.0'] * 1000 / ops)} | {fmt_ns(p['99.0'] * 1000 / ops)} "
                  f"| {cpu} | {allocs} | {run['measurementIterations']:,} {extra}|")
        print()


if __name__ == "__main__":
    main(*sys.argv[1:3])
