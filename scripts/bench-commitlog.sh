#!/usr/bin/env bash
# Runs the commitlog criterion benchmarks next to this machine's raw sequential write bandwidth,
# measured in the same run with dd, and prints the medians as a Markdown table of ratios.
# Usage: scripts/bench-commitlog.sh   (takes about ten minutes; writes under target/)
set -euo pipefail
cd "$(dirname "$0")/.."
data=target/bench-data
mkdir -p "$data"
out=target/bench-commitlog.md

dd_rate() { # prints MB/s of writing 1 GiB, with the given extra dd flags
  local f="$data/dd.bin"
  rm -f "$f"; sync
  local line
  line=$(dd if=/dev/zero of="$f" bs=1M count=1024 "$@" 2>&1 | tail -1)
  rm -f "$f"; sync
  # "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 0.5 s, 2.1 GB/s" -> bytes / seconds
  echo "$line" | awk -F', ' '{ split($3, t, " "); printf "%.0f\n", 1073741824 / t[1] / 1e6 }'
}
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "measuring raw write bandwidth with dd (5 runs each)..."
runs=(); for _ in 1 2 3 4 5; do runs+=("$(dd_rate)"); done; cache=$(median "${runs[@]}")
echo "page cache runs: ${runs[*]}"
runs=(); for _ in 1 2 3 4 5; do runs+=("$(dd_rate conv=fdatasync)"); done; synced=$(median "${runs[@]}")
echo "fdatasync runs: ${runs[*]}"
echo "page cache: $cache MB/s; with fdatasync: $synced MB/s"

cargo bench -p commitlog --bench log -- --noplot "$@"
python3 scripts/bench_summary.py "$cache" "$synced" | tee "$out"
echo "written to $out"
