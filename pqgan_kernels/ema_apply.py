"""The EMA apply step: new codebooks from batch statistics, in place (Laplace-smoothed, as in VQ-VAE-2).

Production code, used by the layer (``pqgan.ProductQuantizer``, after an all-reduce of the statistics), by the
``pqgan::pq_ema_update`` op for backends without a fused update (ops.py), by the Triton backend for fp64 or
non-contiguous state (triton_ema.py), and by the oracle ``reference.pq_ema_update``, whose semantics it defines.
Tested by hand in tests/test_reference.py.
"""
from __future__ import annotations

import torch


def pq_ema_apply_(codebooks: torch.Tensor, cluster_size: torch.Tensor, embed_sum: torch.Tensor,
                  counts: torch.Tensor, sums: torch.Tensor, decay: float, eps: float) -> None:
    """Laplace-smoothed EMA step from batch statistics, in place.

    cluster_size <- decay*cluster_size + (1-decay)*counts        (S, K)
    embed_sum    <- decay*embed_sum    + (1-decay)*sums          (S, K, d)
    n  = cluster_size.sum(-1);  cs = (cluster_size + eps) / (n + K*eps) * n
    codebooks    <- embed_sum / cs                               (S, K, d)
    """
    K = cluster_size.shape[1]
    cluster_size.mul_(decay).add_(counts.to(cluster_size.dtype), alpha=1.0 - decay)
    embed_sum.mul_(decay).add_(sums.to(embed_sum.dtype), alpha=1.0 - decay)
    n = cluster_size.sum(-1, keepdim=True)
    smoothed = (cluster_size + eps) / (n + K * eps) * n
    codebooks.copy_(embed_sum / smoothed.unsqueeze(-1).to(embed_sum.dtype))
