"""Triton EMA step of pq_ema_update: the scatter kernel's statistics, then one fused apply kernel.

    ema_update(x (N, S*d), indices (N, S), codebooks (S, K, d)!, cluster_size (S, K)!, embed_sum (S, K, d)!,
               decay, eps) in place

The statistics come from ``triton_scatter.ema_stats``; the apply step (``ema_apply.pq_ema_apply_`` semantics) is
one kernel, one program per subspace. fp64 or non-contiguous state falls back to ``ema_apply.pq_ema_apply_``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import ema_apply
from .triton_assign import launch_device
from .triton_scatter import MAX_BD, ema_stats


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
