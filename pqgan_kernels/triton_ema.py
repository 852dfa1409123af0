"""Triton kernels for the per-code statistics: EMA counts/sums, the codebook gradient, and the EMA apply step.

    ema_stats(x (N, S*d), indices (N, S), K)        -> counts (S, K) fp32, sums (S, K, d) fp32
    codebook_grad(grad_q (N, S*d), indices (N, S), K) -> (S, K, d) fp32
    ema_update(x, indices, codebooks (S, K, d)!, cluster_size (S, K)!, embed_sum (S, K, d)!, decay, eps) in place

One pass over (x, indices): each program takes BM rows of one subspace and atomically adds each sub-vector into
its code's row of ``sums`` (and 1 into ``counts``). Memory O(S*K*d), no one-hot. fp32 atomics make the sums'
rounding order-dependent (not bitwise reproducible); counts are exact integers up to 2^24 per code.
The apply step (``ema_apply.pq_ema_apply_`` semantics) is one kernel, one program per subspace.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import ema_apply, validate
from .triton_assign import launch_device

MAX_BD = 128


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


@triton.jit
def _updated_cluster_size(cs_ptr, counts_ptr, off, km, decay, one_minus_decay):
    """decay * cluster_size + (1 - decay) * counts at offsets off, rounded to cluster_size's dtype."""
    cs = tl.load(cs_ptr + off, mask=km, other=0.0).to(tl.float32)
    cnt = tl.load(counts_ptr + off, mask=km, other=0.0)
    return (cs * decay + cnt * one_minus_decay).to(cs_ptr.dtype.element_ty)


@triton.jit
def _ema_apply_kernel(cb_ptr, cs_ptr, es_ptr, counts_ptr, sums_ptr, K, decay, one_minus_decay, eps, k_eps,
                      d: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr):
    """One program per subspace. Race-free by construction: the updated cluster sizes are computed from the
    inputs twice (the same arithmetic, so the same values) -- once to sum them, once to store and use them --
    and never stored then re-read in another thread layout."""
    NUM_DC: tl.constexpr = (d + BD - 1) // BD
    s = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BK)
    n_vec = tl.zeros((BK,), tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + ks
        km = k < K
        cs = _updated_cluster_size(cs_ptr, counts_ptr, s * K + k, km, decay, one_minus_decay)
        n_vec += tl.where(km, cs.to(tl.float32), 0.0)
    n = tl.sum(n_vec, axis=0)
    dj = tl.arange(0, BD)
    for k0 in range(0, K, BK):
        k = k0 + ks
        km = k < K
        cs = _updated_cluster_size(cs_ptr, counts_ptr, s * K + k, km, decay, one_minus_decay)
        tl.store(cs_ptr + s * K + k, cs, mask=km)
        smoothed = tl.div_rn(cs.to(tl.float32) + eps, n + k_eps) * n
        smoothed = tl.where(km, smoothed, 1.0)
        for dc in range(NUM_DC):  # a runtime loop: big d must not unroll
            dd = dc * BD + dj
            m2 = km[:, None] & (dd[None, :] < d)
            off = (s * K + k[:, None]) * d + dd[None, :]
            es = tl.load(es_ptr + off, mask=m2, other=0.0).to(tl.float32)
            sm = tl.load(sums_ptr + off, mask=m2, other=0.0)
            es = (es * decay + sm * one_minus_decay).to(es_ptr.dtype.element_ty)
            tl.store(es_ptr + off, es, mask=m2)
            cb = tl.div_rn(es.to(tl.float32), smoothed[:, None])
            tl.store(cb_ptr + off, cb.to(cb_ptr.dtype.element_ty), mask=m2)


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


def ema_update(x, indices, codebooks, cluster_size, embed_sum, decay: float, eps: float) -> None:
    """Laplace-smoothed EMA step in place: Triton statistics, then one fused apply kernel."""
    counts, sums = ema_stats(x, indices, codebooks.shape[1])
    tensors = (codebooks, cluster_size, embed_sum)
    if any(t.dtype == torch.float64 or not t.is_contiguous() for t in tensors):
        ema_apply.pq_ema_apply_(codebooks, cluster_size, embed_sum, counts, sums, decay, eps)
        return
    S, K, d = codebooks.shape
    bd = min(MAX_BD, triton.next_power_of_2(d))
    bk = max(16, min(1024, 4096 // bd))
    with launch_device(codebooks.device):
        _ema_apply_kernel[(S,)](codebooks, cluster_size, embed_sum, counts, sums, K, float(decay),
                                1.0 - float(decay), float(eps), K * float(eps), d=d, BD=bd, BK=bk, num_warps=4)
