#!/usr/bin/env bash
# A Python environment with an existing Liftbridge client (python-liftbridge, generated from
# Liftbridge's own api.proto), for the compatibility test in tests/tests/compat_python.rs.
# Idempotent: does nothing when the environment is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/compat-venv
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import python_liftbridge" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "python-liftbridge==0.0.7" "grpcio==1.85.1" "protobuf==3.20.3"
