"""The naive PyTorch oracle for product quantisation.

Plain PyTorch, any float dtype (float64 included), written to be obviously right rather than fast. Every fast
kernel in this package is tested against these functions.

Conventions (shared by every backend):
    x          (N, S*d)  float; subspace s is the contiguous slice ``x[:, s*d:(s+1)*d]``.
    codebooks  (S, K, d) float; codebook s holds the K codewords of subspace s.
    indices    (N, S)    int64; ``indices[n, s]`` is the nearest codeword of row n in subspace s.
    quantized  (N, S*d)  dtype of ``x``; ``quantized[n, s*d:(s+1)*d] = codebooks[s, indices[n, s]]``.

Distances are computed in float64 when x or codebooks is float64 and in float32 otherwise (fp16/bf16 inputs are
up-cast first). Ties resolve to the lowest index (``torch.argmin`` returns the first minimum).

``distance="l2"`` picks the smallest squared Euclidean distance, computed as a sum of squared differences (not the
``|x|^2 - 2x.c + |c|^2`` expansion, which cancels catastrophically). ``distance="cosine"`` picks the largest cosine
similarity; zero vectors have similarity 0 to everything; the returned codewords are the unnormalised ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ema_apply
from .validate import check_distance

DISTANCES = ("l2", "cosine")

# Rows per chunk are chosen so the (rows, S, K, d) difference tensor stays below this many elements.
_CHUNK_ELEMENTS = 1 << 24


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: the precision distances are accumulated in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def pq_lookup(codebooks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Gather codewords: codebooks (S, K, d), indices (N, S) -> (N, S*d) in the codebooks' dtype."""
    S, _, d = codebooks.shape
    subspace = torch.arange(S, device=indices.device)
    return codebooks[subspace, indices].reshape(indices.shape[0], S * d)


def pq_assign(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codeword per subspace.

    x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) in x.dtype, indices (N, S) int64).
    """
    check_distance(distance)
    N = x.shape[0]
    S, K, d = codebooks.shape
    dtype = compute_dtype(x, codebooks)
    xs = x.to(dtype).reshape(N, S, d)
    cb = codebooks.to(dtype)
    if distance == "cosine":
        xs = F.normalize(xs, dim=-1)
        cb = F.normalize(cb, dim=-1)
    indices = torch.empty(N, S, dtype=torch.int64, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, S * K * d))
    for start in range(0, N, rows):
        chunk = xs[start:start + rows]  # (n, S, d)
        if distance == "l2":
            score = (chunk[:, :, None, :] - cb[None]).square().sum(-1)  # (n, S, K)
        else:
            score = -(chunk[:, :, None, :] * cb[None]).sum(-1)
        indices[start:start + rows] = score.argmin(-1)
    return pq_lookup(codebooks, indices).to(x.dtype), indices


def pq_codebook_grad(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Gradient of ``quantized = lookup(codebooks, indices)`` w.r.t. the codebooks: a scatter-add per code.

    grad_quantized (N, S*d), indices (N, S) -> (S, K, d) in ``compute_dtype(grad_quantized)``.
    """
    N, S = indices.shape
    d = grad_quantized.shape[1] // S
    dtype = compute_dtype(grad_quantized)
    grad = torch.zeros(S * num_codes, d, dtype=dtype, device=grad_quantized.device)
    flat_codes = (indices.long() + torch.arange(S, device=indices.device) * num_codes).reshape(-1)
    grad.index_add_(0, flat_codes, grad_quantized.to(dtype).reshape(N * S, d))
    return grad.reshape(S, num_codes, d)


def pq_ema_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code assignment counts and sums of the assigned sub-vectors.

    x (N, S*d), indices (N, S) -> (counts (S, K), sums (S, K, d)), both in ``compute_dtype(x)``.
    """
    N, S = indices.shape
    dtype = compute_dtype(x)
    counts = torch.zeros(S, num_codes, dtype=dtype, device=x.device)
    counts.scatter_add_(1, indices.long().t(), torch.ones(S, N, dtype=dtype, device=x.device))
    sums = pq_codebook_grad(x, indices, num_codes)  # the same scatter-add, of x instead of a gradient
    return counts, sums


def pq_ema_update(x: torch.Tensor, indices: torch.Tensor, codebooks: torch.Tensor, cluster_size: torch.Tensor,
                  embed_sum: torch.Tensor, decay: float, eps: float) -> None:
    """One EMA codebook update from a batch, in place: these statistics, then ``ema_apply.pq_ema_apply_``.

    x (N, S*d), indices (N, S), codebooks (S, K, d), cluster_size (S, K), embed_sum (S, K, d).
    """
    counts, sums = pq_ema_stats(x, indices, codebooks.shape[1])
    ema_apply.pq_ema_apply_(codebooks, cluster_size, embed_sum, counts, sums, decay, eps)
