#!/usr/bin/env python3
"""Summarizes the commitlog criterion results as a Markdown table.

Arguments: raw page-cache write MB/s and raw fdatasync'd write MB/s, measured in the same run.
Reads target/criterion/*/*/*/new/{estimates,benchmark}.json; prints medians and ratios."""
import json
import pathlib
import sys

cache, synced = float(sys.argv[1]), float(sys.argv[2])
root = pathlib.Path("target/criterion")
def median_of(path):
    return json.loads(path.read_text())["median"]["point_estimate"]

rows = []
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    median_ns = json.loads(est.read_text())["median"]["point_estimate"]
    tp = bench.get("throughput") or {}
    name = bench["full_id"]
    if "Bytes" in tp:
        mbs = tp["Bytes"] / median_ns * 1e3  # bytes/ns -> MB/s
        base = synced if name.startswith("append_sync") else cache
        ratio = f"{mbs / base:.2f}" if name.startswith(("append", "raw")) else ""
        # The same-harness baseline: plain writes of the same batch size.
        raw = root / "raw_file_write" / est.parent.parent.parent.name / est.parent.parent.name / "new/estimates.json"
        vs_raw = ""
        if name.startswith("append_no_sync") and raw.exists():
            vs_raw = f"{median_of(raw) / median_ns:.2f}"
        rows.append((name, f"{mbs:,.0f} MB/s", ratio, vs_raw))
    else:
        rows.append((name, f"{median_ns / 1e3:,.2f} µs/op", "", ""))

print(f"Raw sequential write, 1 GiB with dd: page cache {cache:,.0f} MB/s; with fdatasync {synced:,.0f} MB/s.\n")
print("| benchmark | median | ratio to dd | ratio to plain writes, same harness |")
print("|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
