"""The naive PyTorch product quantiser that the training-step benchmark compares ``ProductQuantizer`` against.

It has the semantics of ``pqgan.ProductQuantizer`` in EMA mode (same loss, same Laplace-smoothed EMA update, same
straight-through output, same per-batch code statistics) but is written the way public VQ/PQ layers are:

* distances as the full (N, S, K) tensor ``|x|^2 - 2 x.c + |c|^2`` (``pq_assign_naive``, also the assignment
  baseline of contenders.py and bench_native_cpu.py);
* EMA statistics through a dense one-hot (N, S, K) matrix;
* straight-through as ``z + (q - z).detach()``.

Benchmark-only code: it is not part of the product.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pqgan_kernels.reference import pq_lookup


def pq_assign_naive(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The way public PQ/VQ code does it: the full (N, S, K) distance tensor via |x|^2 - 2 x.c + |c|^2.

    Not the oracle (the expansion rounds differently); this is the baseline the benchmarks compare against.
    x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) in x.dtype, indices (N, S) int64).
    """
    N = x.shape[0]
    S, K, d = codebooks.shape
    xs = x.reshape(N, S, d)
    dist = (xs.square().sum(-1, keepdim=True)
            - 2 * torch.einsum("nsd,skd->nsk", xs, codebooks.to(x.dtype))
            + codebooks.to(x.dtype).square().sum(-1)[None])
    indices = dist.argmin(-1)
    return pq_lookup(codebooks, indices).to(x.dtype), indices


def naive_ema_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot statistics: x (N, S*d), indices (N, S) -> counts (S, K) fp32, sums (S, K, d) fp32."""
    N, S = indices.shape
    onehot = F.one_hot(indices, num_codes).float()                      # (N, S, K)
    counts = onehot.sum(0)                                              # (S, K)
    sums = torch.einsum("nsk,nsd->skd", onehot, x.float().reshape(N, S, -1))
    return counts, sums


def naive_ema_update(x: torch.Tensor, indices: torch.Tensor, codebooks: torch.Tensor, cluster_size: torch.Tensor,
                     embed_sum: torch.Tensor, decay: float = 0.99, eps: float = 1e-5) -> None:
    """In-place EMA codebook step with one-hot statistics (same formula as ``pqgan_kernels.pq_ema_apply_``).

    x (N, S*d), indices (N, S), codebooks (S, K, d), cluster_size (S, K), embed_sum (S, K, d).
    """
    K = codebooks.shape[1]
    counts, sums = naive_ema_stats(x, indices, K)
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    n = cluster_size.sum(-1, keepdim=True)
    smoothed = (cluster_size + eps) / (n + K * eps) * n
    codebooks.copy_(embed_sum / smoothed.unsqueeze(-1))


class NaiveProductQuantizer(nn.Module):
    """Naive EMA product quantiser on rows: forward(z (N, S*d)) -> (quantized (N, S*d), indices (N, S), loss,
    perplexity (S,)). Codebooks (S, K, d), cluster_size (S, K) and embed_sum (S, K, d) are buffers."""

    def __init__(self, dim: int, num_subspaces: int, codebook_size: int, *, ema_decay: float = 0.99,
                 commitment_weight: float = 0.25, eps: float = 1e-5):
        super().__init__()
        if dim % num_subspaces:
            raise ValueError(f"dim ({dim}) must be divisible by num_subspaces ({num_subspaces})")
        self.num_subspaces, self.codebook_size = num_subspaces, codebook_size
        self.ema_decay, self.commitment_weight, self.eps = ema_decay, commitment_weight, eps
        init = torch.randn(num_subspaces, codebook_size, dim // num_subspaces)
        self.register_buffer("codebooks", init)
        self.register_buffer("embed_sum", init.clone())
        self.register_buffer("cluster_size", torch.ones(num_subspaces, codebook_size))

    def forward(self, z: torch.Tensor):
        quantized, indices = pq_assign_naive(z.detach(), self.codebooks)
        loss = self.commitment_weight * F.mse_loss(z.float(), quantized.float().detach())
        with torch.no_grad():
            onehot = F.one_hot(indices, self.codebook_size).float()        # (N, S, K): public code's way
            counts = onehot.sum(0)
            if self.training:
                N, S = indices.shape
                sums = torch.einsum("nsk,nsd->skd", onehot, z.detach().float().reshape(N, S, -1))
                decay, K = self.ema_decay, self.codebook_size
                self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
                self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
                n = self.cluster_size.sum(-1, keepdim=True)
                smoothed = (self.cluster_size + self.eps) / (n + K * self.eps) * n
                self.codebooks.copy_(self.embed_sum / smoothed.unsqueeze(-1))
            probs = counts / counts.sum(-1, keepdim=True)
            perplexity = (-(probs * probs.clamp_min(1e-12).log()).sum(-1)).exp()
        out = z + (quantized - z).detach()
        return out, indices, loss, perplexity
