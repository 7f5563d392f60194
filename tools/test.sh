#!/usr/bin/env bash
# The whole test suite: the Rust workspace and the Python package (tools/test_python.sh).
# The Milvus backend's tests start a Milvus server from the `milvus` PyPI package, installed
# first in target/milvus-venv (tools/milvus_setup.sh).
#
# Ordered for the wall clock on a small machine: the Python environment downloads and installs
# while the workspace compiles, and the Python tests run beside the Rust tests (both mostly wait:
# on Milvus servers, on subprocesses), their output printed when both are done. Exits non-zero
# when either fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's end, in seconds since the start, for measuring what the tests cost.
phase() { echo "tools/test.sh: $1 at ${SECONDS} s" >&2; }
GCLIP_MILVUS_SERVER="$(bash tools/milvus_setup.sh)"
export GCLIP_MILVUS_SERVER
phase "Milvus server installed"
logs=target/test-logs
mkdir -p "$logs"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

bash tools/test_python.sh --venv >"$logs/python-venv.log" 2>&1 &
venv_job=$!
cargo test --workspace --no-run
phase "workspace tests compiled"
if ! wait "$venv_job"; then
  cat "$logs/python-venv.log"
  echo "tools/test.sh: the Python package's virtual environment failed (above)" >&2
  exit 1
fi
phase "Python environment ready"
bash tools/test_python.sh --wheel
phase "Python wheel built and installed"

bash tools/test_python.sh --run >"$logs/python-tests.log" 2>&1 &
python_job=$!
rust=0
cargo test --workspace || rust=$?
phase "Rust tests run"
python=0
wait "$python_job" || python=$?
phase "Python tests run"
echo "--- Python package tests (tools/test_python.sh --run, beside the Rust tests):"
cat "$logs/python-tests.log"
echo "tools/test.sh: Rust tests exit $rust, Python tests exit $python"
[ "$rust" = 0 ] && [ "$python" = 0 ]
