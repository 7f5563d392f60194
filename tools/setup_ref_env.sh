#!/usr/bin/env bash
# Create the Python reference environment used by tools/gen_fixtures.py and
# tools/bench_torch.py (never needed by the Rust build or by CI).
#
#   tools/setup_ref_env.sh                 # venv at tools/.venv, pinned versions
#   REF_VENV=/some/dir tools/setup_ref_env.sh
#   REF_UNPINNED=1 tools/setup_ref_env.sh  # latest releases instead of the pins
#   REF_PEERS=0 tools/setup_ref_env.sh     # without the peer engines of tools/bench_peers.py
#
# Packages come from PyPI through pip's default index; no other index is used.
# The pins are the versions the committed fixtures were generated with (see
# tests/fixtures/VERSIONS.txt). On Linux x86-64 the PyPI torch wheel pulls in the
# CUDA runtime wheels (several GB); only the CPU is used by the scripts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${REF_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

pinned=(
    "torch==2.15.0"
    "transformers==5.24.0"
    "open_clip_torch==3.3.0"
    "safetensors==0.8.0"
    "numpy==2.4.6"
    "pillow==13.0.0"
    "ftfy==6.3.1"
)
unpinned=(torch transformers open_clip_torch safetensors numpy pillow ftfy)
# The CPU engines gclip is compared with (tools/bench_peers.py): ONNX export needs onnx and
# onnxscript (torch's exporter); ONNX Runtime for fp32 and dynamic int8; OpenVINO fp32/bf16.
peers=("onnx==1.23.2" "onnxscript==0.7.2" "onnxruntime==1.31.1" "openvino==2026.4.1")

if [[ "${REF_UNPINNED:-0}" == "1" ]]; then
    pkgs=("${unpinned[@]}")
else
    pkgs=("${pinned[@]}")
fi

echo "creating venv at $venv with $("$python" --version 2>&1)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade pip
# torch first (the largest download), then the rest.
"$venv/bin/python" -m pip install "${pkgs[0]}"
"$venv/bin/python" -m pip install "${pkgs[@]:1}"
if [[ "${REF_PEERS:-1}" == "1" ]]; then
    "$venv/bin/python" -m pip install "${peers[@]}"
fi

"$venv/bin/python" - <<'EOF'
import torch, transformers, open_clip, safetensors, numpy, PIL, ftfy
print("ok: torch", torch.__version__, "| transformers", transformers.__version__,
      "| open_clip", open_clip.__version__, "| safetensors", safetensors.__version__,
      "| numpy", numpy.__version__, "| pillow", PIL.__version__, "| ftfy", ftfy.__version__)
EOF
echo "use: $venv/bin/python tools/gen_fixtures.py"
