"""Exact l2 assignment for large sub-dims on the CPU: a BLAS search for candidates, then an exact re-check.

For d >= LARGE_D the per-code FMA loop of the C++ kernel loses to a GEMM (plain VQ with d = 256 is ~4x slower), so
the "cpu" backend routes l2 inputs here:

  1. per tile of rows and one subspace, approximate scores a = |c|^2 - 2 x.c with one matrix product
     (a (rows, K) tile of at most TILE_ELEMENTS floats: memory stays bounded whatever N is);
  2. a row whose runner-up approximate score is farther than the rounding bound from its best is decided: the best
     is the exact winner. Otherwise every code within the bound of the best is a candidate (near-ties keep all
     their members, so ties can't be lost), and
  3. candidates are re-scored with the oracle's formula (sum of squared differences, fp32 / fp64) and the
     smallest wins, ties -> lowest index.

The rounding bound of step 2 covers both sides' errors: |fl(a) - a| <= (d + 4) * eps * (|x|^2 + 2 |c|^2) per
score, so the true winner is always a candidate and the result equals a full exact scan.
"""
from __future__ import annotations

import torch

from .reference import compute_dtype, pq_lookup

LARGE_D = 128
TILE_ELEMENTS = 1 << 24


def assign_l2(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) x.dtype, indices (N, S) int64), exact l2."""
    N = x.shape[0]
    S, K, d = codebooks.shape
    dtype = compute_dtype(x, codebooks)
    eps = torch.finfo(dtype).eps
    xs = x.to(dtype).reshape(N, S, d)
    cb = codebooks.to(dtype)
    c2 = cb.square().sum(-1)  # (S, K)
    c2_max = c2.max(-1).values  # (S,)
    indices = torch.empty(N, S, dtype=torch.int64)
    rows = max(1, TILE_ELEMENTS // K)
    for s in range(S):
        for start in range(0, N, rows):
            xt = xs[start:start + rows, s]  # (n, d)
            approx = torch.addmm(c2[s].unsqueeze(0), xt, cb[s].t(), alpha=-2.0)  # (n, K)
            bound = 2 * (d + 4) * eps * (xt.square().sum(-1) + 2 * c2_max[s])  # (n,)
            two = approx.topk(min(2, K), dim=-1, largest=False)
            out = two.indices[:, 0].clone()
            # rows whose runner-up is within the bound may have near-ties: re-check all their close codes
            unsure = two.values[:, -1] - two.values[:, 0] <= bound
            if K == 1:
                unsure.zero_()
            if bool(unsure.any()):
                sub = unsure.nonzero().squeeze(1)
                out[sub] = _recheck(xt[sub], cb[s], approx[sub], two.values[sub, 0] + bound[sub])
            indices[start:start + rows, s] = out
    return pq_lookup(codebooks, indices).to(x.dtype), indices


def _recheck(xt: torch.Tensor, cb: torch.Tensor, approx: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Exact winner among the codes with approx <= threshold: xt (n, d), cb (K, d), approx (n, K) -> (n,) int64."""
    K = cb.shape[0]
    cand_rows, cand_codes = torch.nonzero(approx <= threshold.unsqueeze(-1), as_tuple=True)
    exact = (xt[cand_rows] - cb[cand_codes]).square().sum(-1)
    # lexicographic (exact distance, code) minimum per row: the smallest distance, then the lowest index
    best = torch.full((xt.shape[0],), float("inf"), dtype=exact.dtype).scatter_reduce(0, cand_rows, exact, "amin")
    winner = torch.where(exact == best[cand_rows], cand_codes, K)
    return torch.full((xt.shape[0],), K, dtype=torch.int64).scatter_reduce(0, cand_rows, winner, "amin")
