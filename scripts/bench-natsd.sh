#!/usr/bin/env bash
# Core pub/sub throughput of our natsd next to nats-server, measured in the same run, and the
# ratio of the medians. Usage: scripts/bench-natsd.sh (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p natsd --bench pubsub -- --noplot "$@"
python3 - <<'PY'
import json, pathlib
root = pathlib.Path("target/criterion/pubsub_1KiB")
med = {n: json.loads((root / n / "new/estimates.json").read_text())["median"]["point_estimate"] for n in ("natsd", "nats-server")}
rate = {n: 1e9 / v for n, v in med.items()}
print(f"natsd: {rate['natsd']:,.0f} msgs/s; nats-server: {rate['nats-server']:,.0f} msgs/s; ratio {rate['natsd'] / rate['nats-server']:.2f}")
PY
