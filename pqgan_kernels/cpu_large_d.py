"""Exact l2 assignment for large sub-dims on the CPU: BLAS candidates on centred data, then an exact re-check.

Where a GEMM beats the per-code direct-formula loop of the C++ kernel (``uses_gemm``: d >= 128, or d >= 64 with
K >= 512 -- measured on the 2-core box, see benchmarks/bench_native_cpu.py) the "cpu" backend routes l2 inputs to
the native op ``pq_assign_gemm`` (csrc/cpu/assign_gemm.cpp). Per subspace it centres x and the codebook
on the codebook mean, scores a_k = |c'_k|^2 - 2 x'.c'_k with BLAS tile by tile over K (no (N, K) buffer: extra
memory is bounded by the outputs' size, see the C++ file), keeps every code within the rounding bound of
``bound.py`` of the row's best, and re-checks those with the oracle's direct formula (a row with too many
near-ties is decided by a direct scan). The result equals a full direct scan at any magnitude of the data.
"""
from __future__ import annotations

import torch

from .bound import bound_coefficient
from .reference import compute_dtype

LARGE_D = 64        # below this d the direct-formula kernel wins at every K measured
ALWAYS_D = 128      # from this d the GEMM path wins at every K measured
MIN_CODES = 512     # between the two, the GEMM path wins from this K on


def uses_gemm(d: int, K: int) -> bool:
    """Whether the "cpu" backend's l2 assignment of sub-dim d against K codes takes this path."""
    return d >= ALWAYS_D or (d >= LARGE_D and K >= MIN_CODES)


def matmul_precision() -> str:
    """The fp32 matmul precision BLAS on the CPU runs at, as a ``bound.py`` precision name.

    oneDNN's own setting (``torch.backends.mkldnn.matmul.fp32_precision``) first, then torch's global one; when
    torch refuses to say (legacy and new APIs mixed) the coarsest ("medium", bf16 inputs), which keeps the search
    exact at some cost in candidates.
    """
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    own = getattr(mkldnn, "fp32_precision", "none")
    if own in ("bf16", "tf32"):
        return own
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return "medium"


def assign_l2(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) x.dtype, indices (N, S) int64), exact l2."""
    coefficient = bound_coefficient(codebooks.shape[2], matmul_precision(), compute_dtype(x, codebooks))
    return torch.ops.pqgan_native.pq_assign_gemm(x, codebooks, coefficient)
