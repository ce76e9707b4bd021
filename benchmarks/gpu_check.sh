#!/usr/bin/env bash
# The whole GPU check in one go (under 5 minutes on a machine with one GPU):
#   1. the Python modules the project and the benchmark need at import are there (no pip, no network);
#   2. the GPU-path and preset tests pass (when pytest is installed; they need no GPU);
#   3. bench_gpu.py: ViT-B/16 and ViT-L/16 (random weights) at batch 256, bare forward vs end to end,
#      their ratio (target >= 0.80) and the features' agreement with float32 CPU features.
# The figures go to one JSON: the first argument, else $OUT/gpu_check.json when OUT is set, else
# ./gpu_check.json. Other arguments go to bench_gpu.py, e.g. on a machine without a GPU:
#   benchmarks/gpu_check.sh /tmp/gpu_check.json --device cpu --quick
# Works from a copy of the repository (PYTHONPATH is set to it here) or after
# `pip install --no-deps -e .`. PYTHON picks the interpreter (default: python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1  # nothing here downloads; say so to huggingface_hub too
py="${PYTHON:-python3}"

json="${OUT:+$OUT/gpu_check.json}"
if [[ $# -gt 0 && "$1" != --* ]]; then
    json="$1"
    shift
fi
json="${json:-$repo/gpu_check.json}"
start=$(date +%s)

echo "== gpu_check: modules"
"$py" - <<'PY'
import importlib
import sys

# the project at import (core extraction, slides, encoders), the TIFF/JPEG codecs of the
# generated slide, and the benchmark's own needs
needed = [
    "numpy", "scipy", "dask", "PIL", "psutil", "tifffile", "imagecodecs", "torch", "timm",
    "safetensors", "huggingface_hub",
    "napari_care.core.extract", "napari_care.core.slide.handle", "napari_care.core.encoders.timm_models",
]
missing = []
for name in needed:
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name} ({error})")
if missing:
    print("gpu_check: missing Python modules: " + "; ".join(missing)
          + f". Install them into {sys.executable}'s environment (no network needed elsewhere).",
          file=sys.stderr)
    sys.exit(3)
import torch
import timm
cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, timm {timm.__version__}, "
      f"CUDA available: {cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
PY

echo "== gpu_check: tests"
if "$py" -c "import pytest" 2>/dev/null; then
    "$py" -m pytest -q -p no:cacheprovider tests/test_gpu_path.py tests/test_presets.py
else
    echo "pytest is not installed here: tests skipped"
fi

echo "== gpu_check: benchmark -> $json"
"$py" benchmarks/bench_gpu.py --json "$json" "$@"
echo "== gpu_check: done in $(( $(date +%s) - start )) s; figures in $json"
