"""Shared checks of a backend's outputs against the oracle in ``pqgan_kernels/reference.py``.

Tolerance rule: a backend may pick a different index than the fp64 oracle only when the two codewords are within
rounding distance of each other: d64(chosen) <= d64(best) + tol, tol = 16 * eps32 * d * (|x_s|^2 + max_k |c_k|^2)
for l2 and 16 * eps32 * d for cosine (fp32 accumulation of d products). Integer-valued inputs have exact fp32
distances, so there every index must equal the oracle's, ties included (lowest index wins).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from pqgan_kernels import reference

EPS32 = torch.finfo(torch.float32).eps


def random_case(N, S, d, K, dtype=torch.float32, device="cpu", seed=0, integer=False):
    """Fresh random x (N, S*d) and codebooks (S, K, d); integer=True gives small integers (exact distances, ties)."""
    g = torch.Generator().manual_seed(seed)
    if integer:
        x = torch.randint(-3, 4, (N, S * d), generator=g).to(dtype)
        cb = torch.randint(-3, 4, (S, K, d), generator=g).to(dtype)
    else:
        x = torch.randn(N, S * d, generator=g).to(dtype)
        cb = torch.randn(S, K, d, generator=g).to(dtype)
    return x.to(device), cb.to(device)


def pq_distances(x: torch.Tensor, codebooks: torch.Tensor, indices: torch.Tensor,
                 distance: str = "l2") -> torch.Tensor:
    """The distance (l2: squared L2; cosine: 1 - cosine similarity) of each row to the chosen codewords, in float64.

    x (N, S*d), codebooks (S, K, d), indices (N, S) -> (N, S). Used to judge near-ties.
    """
    N = x.shape[0]
    S, _, d = codebooks.shape
    xs = x.double().reshape(N, S, d)
    chosen = reference.pq_lookup(codebooks.double(), indices).reshape(N, S, d)
    if distance == "l2":
        return (xs - chosen).square().sum(-1)
    return 1.0 - (F.normalize(xs, dim=-1) * F.normalize(chosen, dim=-1)).sum(-1)


def assert_assignment(x, codebooks, quantized, indices, distance="l2", min_exact=0.99, integer=False):
    """Check a backend's (quantized, indices) for inputs (x, codebooks); returns the fraction equal to the oracle."""
    N = x.shape[0]
    S, K, d = codebooks.shape
    assert indices.dtype == torch.int64 and tuple(indices.shape) == (N, S), (indices.dtype, indices.shape)
    assert quantized.dtype == x.dtype and tuple(quantized.shape) == tuple(x.shape), (quantized.dtype, quantized.shape)
    idx = indices.cpu()
    assert int(idx.min()) >= 0 and int(idx.max()) < K, "index out of range"
    xc, cbc = x.cpu(), codebooks.cpu()
    expected_q = reference.pq_lookup(cbc, idx).to(x.dtype)
    assert torch.equal(quantized.cpu(), expected_q), "quantized is not the lookup of the returned indices"
    _, best = reference.pq_assign(xc.double(), cbc.double(), distance)
    if integer:
        assert torch.equal(idx, best), f"{(idx != best).sum()} indices differ on exact (integer) inputs"
        return 1.0
    got_d = pq_distances(xc, cbc, idx, distance)
    best_d = pq_distances(xc, cbc, best, distance)
    if distance == "l2":
        xs2 = xc.double().reshape(N, S, d).square().sum(-1)
        cmax = cbc.double().square().sum(-1).max(-1).values  # (S,)
        tol = 16 * EPS32 * d * (xs2 + cmax)
    else:
        tol = torch.full_like(got_d, 16 * EPS32 * d)
    worse = got_d - best_d
    assert bool((worse <= tol).all()), f"chosen codeword worse than the best by up to {worse.max():.3e} " \
                                       f"(tolerance {tol.flatten()[worse.flatten().argmax()]:.3e})"
    exact = (idx == best).double().mean().item()
    assert exact >= min_exact, f"only {exact:.4%} of indices equal the oracle's"
    return exact


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with n torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
