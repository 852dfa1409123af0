"""The CPU backend's cell-grid search for l2, fp32 and d <= 2 (``pq_assign(..., grid=True)``; csrc/cpu/assign_grid.h)
and its routing (``native_backend.uses_grid``).

The op is called with grid=True directly, so small cases exercise it too (the "cpu" backend asks for it only from
``GRID_MIN_ROWS`` rows). Assignments are judged by the shared suite's rule (``test_kernel_suite.check_assignment``):
clear rows must return the oracle's index, near-tied rows a code within the direct formula's rounding, integer data
every index exactly (ties to the lowest). Rows the grid cannot certify (far from the codes, non-finite, beyond
+-1e18) and subspaces without a table (a NaN code) go to the direct scan, so there the answer must equal
``grid=False`` with the expanded scan off (bound_coefficient 0) bit for bit.
"""
import os
import subprocess
import sys

import pytest
import torch

import pqgan_kernels
from pqgan_kernels import native_backend
from pqgan_kernels.bound import bound_coefficient
from pqgan_kernels.native_backend import GRID_MAX_D, GRID_MIN_ROWS

from test_kernel_suite import FAMILIES, check_assignment, make_case

pytestmark = pytest.mark.skipif(pqgan_kernels.backend_info()["cpu"] != "available", reason="cpu backend not built")


def grid(x, cb, expanded=True):
    """The grid search; its uncertified rows go to the expanded scan (expanded: as the backend calls it) or the
    direct one."""
    coefficient = bound_coefficient(cb.shape[2]) if expanded else 0.0
    return torch.ops.pqgan_native.pq_assign(x, cb, False, coefficient, True)


def direct(x, cb):
    return torch.ops.pqgan_native.pq_assign(x, cb, False, 0.0, False)


# (N, S, d, K): d = 1 and 2, K = 1, K below the cell count, tails of every task size (4096 rows, 8 subspaces)
SHAPES = [(37, 3, 1, 5), (45, 2, 2, 130), (12, 3, 2, 1), (300, 9, 2, 512), (200, 3, 1, 300), (64, 2, 2, 7),
          (4133, 11, 2, 100)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("N,S,d,K", SHAPES)
def test_grid_matches_oracle(family, N, S, d, K):
    x, cb = make_case(family, N, S, d, K, seed=N + 7 * K)
    q, idx = grid(x, cb)
    check_assignment(x, cb, q, idx, "l2", family)


@pytest.mark.parametrize("expanded", [True, False])
@pytest.mark.parametrize("spread", [3.0, 30.0, 1e4])
def test_rows_far_from_the_codes(spread, expanded):
    """Rows spread far beyond the codebook: their nearest code often lies outside the 3 x 3 (and 5 x 5) block of
    their cell, so they pass through the second level and the full scan (at 30 and 1e4 most rows: the sample of a
    block sends the block to the scan without the grid); codes clustered unevenly (a dense core and a few outliers)
    make cells of very different sizes."""
    g = torch.Generator().manual_seed(int(spread))
    cb = torch.randn(4, 400, 2, generator=g)
    cb[:, :20] *= 25  # a few outlying codes
    x = spread * torch.randn(3000, 8, generator=g)
    q, idx = grid(x, cb, expanded)
    check_assignment(x, cb, q, idx, "l2", "zero_mean")


@pytest.mark.parametrize("expanded", [True, False])
def test_a_few_far_rows_after_the_sample(expanded):
    """Rows far from the codes, a few percent of a block and after its sample: the block keeps the grid, and those
    rows go to the second level and then the expanded (or direct) scan."""
    g = torch.Generator().manual_seed(11)
    cb = torch.randn(3, 300, 2, generator=g)
    x = torch.randn(5000, 6, generator=g)
    far = torch.rand(5000, generator=g) < 0.04
    far[:200] = False
    x[far] *= 40
    q, idx = grid(x, cb, expanded)
    check_assignment(x, cb, q, idx, "l2", "zero_mean")


def test_nearest_code_outside_the_block_is_found():
    """A row in an empty stretch of the plane: its cell's 3 x 3 block holds codes, but a code outside the block is
    nearer (a scan of the block alone would return the wrong code)."""
    line = torch.linspace(-1, 1, 64)
    cb = torch.stack([line, torch.zeros(64)], 1)                 # codes on the x axis ...
    cb = torch.cat([cb, torch.tensor([[0.0, 10.0]])])[None]      # ... and one far above them
    x = torch.tensor([[0.0, 9.0], [0.013, 4.0], [0.5, 0.01], [-3.0, 6.0]])
    q, idx = grid(x, cb)
    assert idx[:, 0].tolist() == direct(x, cb)[1][:, 0].tolist() == [64, 32, 47, 64]


@pytest.mark.parametrize("expanded", [True, False])
def test_non_finite_and_huge_rows_get_the_direct_scan_answer(expanded):
    x, cb = make_case("zero_mean", 300, 3, 2, 200, seed=3)
    x[3, 0], x[8, 3], x[9, 4:] = float("nan"), float("inf"), float("-inf")
    x[200, 1], x[201, 2] = 3e18, -1e30  # beyond the grid's +-1e18: no certificate (after the sample)
    q, idx = grid(x, cb, expanded)
    q_ref, idx_ref = direct(x, cb)
    assert torch.equal(idx, idx_ref) and torch.equal(q.isnan(), q_ref.isnan())


def test_a_subspace_without_a_table_is_scanned():
    x, cb = make_case("zero_mean", 200, 3, 2, 150, seed=4)
    cb[1, 17, 0] = float("nan")  # subspace 1 gets no table; a NaN code never wins
    cb[2, 5, 1] = 2e18           # subspace 2: a code beyond +-1e18, no table either
    q, idx = grid(x, cb)
    assert torch.equal(idx, direct(x, cb)[1])
    check_assignment(x[:, :2], cb[:1], q[:, :2], idx[:, :1], "l2", "zero_mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    x, cb = make_case("offset-10-1", 500, 3, 2, 130, seed=9)
    x, cb = x.to(dtype), cb.to(dtype)
    q, idx = grid(x, cb)
    check_assignment(x, cb, q, idx, "l2", "offset-10-1")


def test_same_answer_with_any_thread_count():
    x, cb = make_case("offset-1000-1", 5000, 10, 2, 256, seed=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grid(x, cb)
        torch.set_num_threads(2)
        two = grid(x, cb)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[1], two[1]) and torch.equal(one[0], two[0])


def test_routing():
    """The "cpu" backend asks for the grid from GRID_MIN_ROWS rows at d <= GRID_MAX_D; below that, or for cosine,
    the op runs as before (same answer, judged the same way)."""
    assert native_backend.uses_grid(GRID_MIN_ROWS, GRID_MAX_D)
    assert not native_backend.uses_grid(GRID_MIN_ROWS - 1, 2)
    assert not native_backend.uses_grid(10 ** 6, GRID_MAX_D + 1)
    x, cb = make_case("offset-10-1", GRID_MIN_ROWS, 2, 2, 64, seed=6)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    check_assignment(x, cb, q, idx, "l2", "offset-10-1")
    assert torch.equal(idx, grid(x, cb)[1])


def test_avx2_copy_of_the_grid_query():
    """The AVX2 copy (8-lane vectors, two per chunk) on an AVX-512 CPU, forced with PQGAN_CPU_ISA in a fresh process."""
    if torch.ops.pqgan_native.cpu_isa() != "avx512":
        pytest.skip("the default process already runs the widest copy this CPU has")
    code = """
import torch, pqgan_kernels
from test_cpu_grid import test_a_few_far_rows_after_the_sample, test_grid_matches_oracle, test_rows_far_from_the_codes
assert torch.ops.pqgan_native.cpu_isa() == "avx2"
for family in ("zero_mean", "offset-1000-1", "integer_ties", "duplicates"):
    test_grid_matches_oracle(family, 300, 9, 2, 512)
    test_grid_matches_oracle(family, 200, 3, 1, 300)
test_rows_far_from_the_codes(30.0, True)
test_a_few_far_rows_after_the_sample(True)
"""
    env = dict(os.environ, PQGAN_CPU_ISA="avx2")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), os.getcwd(), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
