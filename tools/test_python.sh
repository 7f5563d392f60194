#!/usr/bin/env bash
# Tests of the Python package (crates/gclip-py): builds the wheel with maturin into a virtual
# environment (target/pyenv, or $GCLIP_PY_VENV), installs it, and runs its pytest tests, which
# compare it with the gclip binary (target/debug/gclip) on the committed fixtures. Needs
# python3 with venv and pip (PyPI for maturin, numpy, pytest, pillow, and pyarrow, pandas and
# pyspark for the Parquet and Spark tests) and a Java runtime for Spark (tools/ci_browser_setup.sh
# installs Debian's); no PyTorch. pandas stays below 3, which pyspark does not support yet.
# The wheel is built in the dev profile, as the binary it is compared with: both reuse the
# workspace's build of the libraries. `pip install ./crates/gclip-py` builds the release one.
#
#   tools/test_python.sh [PYTEST ARGS]          all three steps
#   tools/test_python.sh --venv|--wheel|--run   one step (tools/test.sh runs them apart, to
#                                               overlap them with the Rust tests)
set -euo pipefail
cd "$(dirname "$0")/.."
step=all
case "${1:-}" in
  --venv | --wheel | --run) step="${1#--}"; shift ;;
esac
venv="${GCLIP_PY_VENV:-target/pyenv}"
if [ "$step" = all ] || [ "$step" = venv ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "maturin==1.16.0" numpy pytest pillow pyarrow "pandas<3" pyspark
fi
if [ "$step" = all ] || [ "$step" = wheel ]; then
  cargo build -p gclip-cli
  rm -rf target/wheels/gclip-*.whl
  "$venv/bin/maturin" build --quiet --profile dev -m crates/gclip-py/Cargo.toml \
    -i "$venv/bin/python" --out target/wheels
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    target/wheels/gclip-*.whl
fi
if [ "$step" = all ] || [ "$step" = run ]; then
  GCLIP_BIN="$PWD/target/debug/gclip" "$venv/bin/python" -m pytest -q crates/gclip-py/tests "$@"
fi
