#!/usr/bin/env bash
# End-to-end benchmark against NATS JetStream: builds the harness in release mode and writes the
# results into docs/benchmarks.md and docs/bench-e2e.png. Extra arguments go to the harness, e.g.
#   scripts/bench-e2e.sh --runs 5 --durable-nats-server /path/to/nats-server-2.10+
# (JetStream's `sync_interval: always` needs nats-server 2.10 or later; Debian's is 2.9.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p liftbridge-bench
./target/release/liftbridge-bench --out docs/benchmarks.md --plot docs/bench-e2e.png "$@"
