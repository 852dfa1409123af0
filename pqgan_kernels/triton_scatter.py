"""Triton scatter kernel for the per-code statistics: the EMA counts/sums and the codebook gradient.

    ema_stats(x (N, S*d), indices (N, S), K)          -> counts (S, K) fp32, sums (S, K, d) fp32
    codebook_grad(grad_q (N, S*d), indices (N, S), K) -> (S, K, d) fp32

One pass over (values, indices): each program takes BM rows of one subspace and atomically adds each sub-vector
into its code's row of ``sums`` (and 1 into ``counts`` when WITH_COUNTS). Memory O(S*K*d), no one-hot. fp32
atomics make the sums' rounding order-dependent (not bitwise reproducible); counts are exact integers up to 2^24
per code. The EMA apply step that consumes ema_stats is in ``triton_ema.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import validate
from .triton_assign import launch_device

MAX_BD = 128  # widest chunk of d one program handles at a time (larger d loops over chunks)


@triton.jit
def _scatter_kernel(x_ptr, idx_ptr, sums_ptr, counts_ptr, N, K, stride_x,
                    d: tl.constexpr, BD: tl.constexpr, WITH_COUNTS: tl.constexpr, BM: tl.constexpr):
    NUM_DC: tl.constexpr = (d + BD - 1) // BD
    pid_m = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    S = tl.num_programs(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rows64 = rows.to(tl.int64)
    code = tl.load(idx_ptr + rows64 * S + s, mask=rows < N, other=0).to(tl.int64)
    rmask = (rows < N) & (code >= 0) & (code < K)  # out-of-range indices are skipped, whatever the value checks say
    base = s * K + code  # (BM,) flat code id
    if WITH_COUNTS:
        ones = tl.full((BM,), 1.0, tl.float32)
        tl.atomic_add(counts_ptr + base, ones, mask=rmask, sem="relaxed")
    dj = tl.arange(0, BD)
    for dc in range(NUM_DC):  # a runtime loop: big d must not unroll
        dd = dc * BD + dj
        m2 = rmask[:, None] & (dd[None, :] < d)
        v = tl.load(x_ptr + rows64[:, None] * stride_x + s * d + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.atomic_add(sums_ptr + base[:, None] * d + dd[None, :], v, mask=m2, sem="relaxed")


def _check(t: torch.Tensor, name: str) -> None:
    reason = validate.fp32_only_reason("triton", **{name: t})
    if reason:
        raise TypeError(reason)


def _scatter(values: torch.Tensor, indices: torch.Tensor, num_codes: int, with_counts: bool):
    values = values.contiguous()
    indices = indices.contiguous()
    N, S = indices.shape
    d = values.shape[1] // S
    sums = torch.zeros((S, num_codes, d), dtype=torch.float32, device=values.device)
    counts = torch.zeros((S, num_codes), dtype=torch.float32, device=values.device) if with_counts else sums
    bd = min(MAX_BD, triton.next_power_of_2(d))
    bm = max(16, min(128, 4096 // bd))
    if S > 65535:
        raise ValueError(f"backend 'triton' supports at most 65535 subspaces, got S={S}")
    with launch_device(values.device):
        _scatter_kernel[(triton.cdiv(N, bm), S)](values, indices, sums, counts, N, num_codes, values.stride(0),
                                                d=d, BD=bd, WITH_COUNTS=with_counts, BM=bm, num_warps=4)
    return counts, sums


def ema_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code counts (S, K) and sums (S, K, d), fp32, in one atomic pass over (x, indices)."""
    _check(x, "x")
    return _scatter(x, indices, num_codes, with_counts=True)


def codebook_grad(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Per-code scatter-add of grad_quantized (N, S*d) -> (S, K, d) fp32."""
    _check(grad_quantized, "grad_quantized")
    return _scatter(grad_quantized, indices, num_codes, with_counts=False)[1]
