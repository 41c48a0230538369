#!/usr/bin/env bash
# The whole test suite: every unit, integration and property test, then the documentation examples.
# CI runs exactly this (see .ci/run). Slow soak runs are not part of it.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=default
[ "${CI:-}" = "true" ] && profile=ci
# nats-server and cargo-nextest, when missing.
./scripts/setup.sh
# An existing Python Liftbridge client, for the compatibility test.
./scripts/compat-venv.sh
cargo nextest run --workspace --all-targets --profile "$profile"
# Model checking of the commit log's concurrency: its locks and atomics on shuttle's (the
# feature changes only the commitlog crate; a few hundred interleavings per test, well under
# two minutes).
cargo nextest run -p commitlog --features shuttle --test shuttle --profile "$profile"
cargo test --workspace --doc
