"""The CPU backend's large-d path (BLAS candidates + exact re-check) against the oracle."""
import pytest
import torch

import pqgan_kernels
from pqgan_kernels import cpu_large_d

from kernel_checks import assert_assignment, random_case

pytestmark = pytest.mark.skipif(pqgan_kernels.backend_info()["cpu"] != "available", reason="cpu backend not built")


@pytest.mark.parametrize("N,S,d,K,dtype", [(50, 1, 256, 513, torch.float32), (37, 2, 128, 5, torch.float32),
                                           (40, 1, 128, 64, torch.bfloat16), (29, 2, 128, 300, torch.float64),
                                           (33, 1, 128, 1, torch.float32)])
def test_large_d_matches_oracle(N, S, d, K, dtype):
    x, cb = random_case(N, S, d, K, dtype=dtype, seed=N)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx)


def test_large_d_exact_ties_pick_lowest_index(monkeypatch):
    monkeypatch.setattr(cpu_large_d, "TILE_ELEMENTS", 64)  # several row tiles, tails included
    x, cb = random_case(45, 2, 128, 9, integer=True, seed=1)
    cb[:, 5:] = cb[:, 1:2].clone()  # duplicates of code 1: index 1 must win every tie
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx, integer=True)


def test_large_d_is_used_only_for_l2_and_large_d(monkeypatch):
    calls = []
    real = cpu_large_d.assign_l2
    monkeypatch.setattr(cpu_large_d, "assign_l2", lambda *a: calls.append(1) or real(*a))
    x, cb = random_case(8, 1, 128, 4)
    pqgan_kernels.pq_assign(x, cb, backend="cpu")
    pqgan_kernels.pq_assign(x, cb, backend="cpu", distance="cosine")
    pqgan_kernels.pq_assign(*random_case(8, 2, 64, 4), backend="cpu")
    assert len(calls) == 1
