#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (tools/test_python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
bash tools/test_python.sh
