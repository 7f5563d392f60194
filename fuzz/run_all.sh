#!/usr/bin/env bash
# Runs every fuzz target in turn, SECONDS_PER_TARGET each (default 600), at the lowest CPU
# priority. Logs go to fuzz/logs/<target>.log (ignored by git); new inputs to fuzz/corpus-grown/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${SECONDS_PER_TARGET:-600}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(image_decode tokenizer filter_parse safetensors pytorch)
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  max_len=65536
  case "$t" in
    filter_parse | tokenizer) max_len=4096 ;;
  esac
  mkdir -p "fuzz/corpus-grown/$t" "fuzz/artifacts/$t"
  nice -n 19 cargo +nightly fuzz run -a "$t" "fuzz/corpus-grown/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$max_len" -timeout=10 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
    >"fuzz/logs/$t.log" 2>&1 || echo "$t: exit $? (see fuzz/logs/$t.log)"
done
