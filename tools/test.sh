#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (tools/test_python.sh).
# The Milvus backend's tests start a Milvus server from the `milvus` PyPI package, installed
# first in target/milvus-venv (tools/milvus_setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
GCLIP_MILVUS_SERVER="$(bash tools/milvus_setup.sh)"
export GCLIP_MILVUS_SERVER
cargo test --workspace
bash tools/test_python.sh
