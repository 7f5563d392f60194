# Sourced by the side-by-side benchmark scripts (bench_engine.sh, bench_precision.sh,
# bench_train.sh): sets `root` (the repository), `py` (the references' Python, $PYTHON or
# tools/.venv), `threads` (all cores) and `gclip` (the release binary: $GCLIP when given, else
# built here).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/tools/.venv/bin/python}"
threads="$(nproc)"
if [ -z "${GCLIP:-}" ]; then
  cargo build --release -q -p gclip-cli --manifest-path "$root/Cargo.toml"
fi
gclip="${GCLIP:-${CARGO_TARGET_DIR:-$root/target}/release/gclip}"
