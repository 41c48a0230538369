#!/usr/bin/env bash
# Installs what the test suite needs and a fresh machine may lack: the reference NATS server
# (a Debian package) and cargo-nextest (a crate). As root it installs them; otherwise it says
# which command to run and stops. Idempotent: does nothing when both are there.
set -euo pipefail
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "The tests need ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' (Debian, Ubuntu), then again." >&2
    exit 1
  fi
fi
if ! command -v cargo-nextest >/dev/null; then
  echo "installing cargo-nextest (cargo install)"
  cargo install --locked cargo-nextest
fi
# python3 -m venv needs Debian's python3-venv.
if ! python3 -c "import ensurepip" 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing python3-venv (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
  else
    echo "The compatibility test needs python3-venv: run 'sudo apt-get install -y python3-venv', then again." >&2
    exit 1
  fi
fi
