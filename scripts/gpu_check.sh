#!/usr/bin/env bash
# One-shot GPU check on a CUDA machine: build, GPU tests, Triton target timings, full benchmark.
# Usage on the GPU machine, from the repo root:  OUT=gpu_out bash scripts/gpu_check.sh
set -euo pipefail
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -20
python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt" || true   # keep going: the timings matter too
# Triton targets (H100): F8 fwd <= 0.40 ms, S16-d16-K512 fwd <= 0.25 ms, S8-d32-K4096 <= 0.9 ms, EMA <= 0.15 ms.
python3 - <<'PY' 2>&1 | tee "$OUT/triton_targets.txt" || true
import torch, triton.testing as tt
from pqgan_kernels import reference, triton_assign as ta, triton_ema as te, triton_scatter as ts
for name, N, S, d, K in [("F8", 30720, 64, 2, 512), ("S16-d16-K512", 65536, 16, 16, 512),
                         ("S8-d32-K4096", 65536, 8, 32, 4096)]:
    xs = [torch.randn(N, S * d, device="cuda") for _ in range(4)]; cb = torch.randn(S, K, d, device="cuda")
    _, ref = reference.pq_assign(xs[0], cb)
    for mode in ("exact", "fast"):
        _, idx = ta.assign(xs[0], cb, mode=mode)
        it = iter(range(10**9))
        ms = tt.do_bench(lambda: ta.assign(xs[next(it) % 4], cb, mode=mode), rep=200)
        print(f"{name} {mode}: {ms:.4f} ms  equal-to-oracle {(idx == ref).double().mean().item():.6f}")
    if d > ta.SMALL_D_MAX:
        for p in ta.FAST_PRECISIONS:
            print(f"{name} fast-path mismatch {p}:", ta.fast_path_mismatch(xs[0], cb, precision=p))
N, S, d, K = 65536, 16, 16, 512
x = torch.randn(N, S * d, device="cuda"); idx = torch.randint(0, K, (N, S), device="cuda")
cb, cs, es = torch.randn(S, K, d, device="cuda"), torch.ones(S, K, device="cuda"), torch.randn(S, K, d, device="cuda")
print(f"EMA stats S16-d16-K512: {tt.do_bench(lambda: ts.ema_stats(x, idx, K), rep=200):.4f} ms")
print(f"EMA update S16-d16-K512: {tt.do_bench(lambda: te.ema_update(x, idx, cb, cs, es, 0.99, 1e-5), rep=200):.4f} ms")
PY
python3 -m benchmarks.bench_pq --json "$OUT/bench_h100.json" 2>&1 | tee "$OUT/bench.txt"
