"""k-means++ seeding and Lloyd iterations for all S subspaces at once, on top of the fused PQ kernels."""
from __future__ import annotations

from typing import Optional

import torch

import pqgan_kernels


def kmeans_pp_seed(xs: torch.Tensor, num_codes: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """k-means++ seeds per subspace. xs (S, N, d) -> (S, K, d).

    Each new seed of subspace s is drawn with probability proportional to the squared distance of the points of s to
    their nearest seed so far (uniformly when all distances are zero, e.g. N < K or duplicate points).
    """
    S, N, d = xs.shape
    seeds = xs.new_empty(S, num_codes, d)
    subspace = torch.arange(S, device=xs.device)
    first = torch.randint(N, (S,), device=xs.device, generator=generator)
    seeds[:, 0] = xs[subspace, first]
    min_d2 = (xs - seeds[:, :1]).square().sum(-1)  # (S, N)
    for k in range(1, num_codes):
        weights = min_d2 + 1e-12 * (min_d2.sum(-1, keepdim=True) == 0)
        pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        seeds[:, k] = xs[subspace, pick]
        min_d2 = torch.minimum(min_d2, (xs - seeds[:, k:k + 1]).square().sum(-1))
    return seeds


def kmeans(x: torch.Tensor, num_subspaces: int, num_codes: int, iters: int = 10, distance: str = "l2",
           backend: str = "auto", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """k-means(++) on every subspace of x (N, S*d) at once -> codebooks (S, K, d) in float32 (float64 for fp64 x).

    Empty clusters keep their previous centre.
    """
    N, D = x.shape
    S, d = num_subspaces, D // num_subspaces
    work = x.detach().to(pqgan_kernels.reference.compute_dtype(x))
    codebooks = kmeans_pp_seed(work.reshape(N, S, d).transpose(0, 1).contiguous(), num_codes, generator)
    for _ in range(iters):
        _, indices = pqgan_kernels.pq_assign(work, codebooks, distance=distance, backend=backend)
        counts, sums = pqgan_kernels.pq_ema_stats(work, indices, num_codes, backend=backend)
        filled = counts > 0
        codebooks = torch.where(filled.unsqueeze(-1), sums / counts.clamp_min(1).unsqueeze(-1), codebooks)
    return codebooks
