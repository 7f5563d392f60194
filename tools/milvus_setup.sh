#!/usr/bin/env bash
# Installs the Milvus standalone server that the Milvus backend's tests start
# (crates/gclip-search/tests/milvus.rs): the `milvus` package from PyPI (2.3.5, about 58 MB,
# which ships the server binary and starts it on a loopback port) in a virtual environment,
# target/milvus-venv, or $GCLIP_MILVUS_VENV. Prints the path of its milvus-server script, which
# the tests read from GCLIP_MILVUS_SERVER. Installing takes about 10 s; nothing is started here.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GCLIP_MILVUS_VENV:-target/milvus-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check "milvus==2.3.5" >&2
script="$(cd "$venv/bin" && pwd)/milvus-server"
[ -x "$script" ] || { echo "no milvus-server in $venv after installing milvus" >&2; exit 1; }
echo "$script"
