"""The CPU backend's GEMM path for l2 with large d (``native_backend.assign_gemm`` -> ``pq_assign_gemm``: scores of
centred data by the fused fp32 kernel of the AVX2 / AVX-512 copies or by BLAS + bounded exact re-check) and its
routing (``native_backend.uses_gemm``). Both scorers end in the same direct-formula decision, so their indices must
be equal on every input (``blas=True`` forces BLAS; on the baseline copy both calls use it).

Exactness is judged against fp64 distances of the inputs as the kernel received them: a row whose best and
second-best fp64 distances differ by more than the direct formula's fp32 rounding (``TIE_FACTOR * (d + 2) * u *
second``) must get the oracle's index; any other row must get a code within that rounding of the best. Integer
data has exact fp32 distances, so there every index (ties -> lowest) must equal the oracle's.
"""
import pytest
import torch

import pqgan_kernels
from pqgan_kernels import native_backend, reference
from pqgan_kernels.native_backend import FUSED_MIN_D, FUSED_MIN_DK, GEMM_ALWAYS_D, GEMM_MIN_CODES, GEMM_MIN_D

from benchmarks.timing import peak_extra_bytes
from kernel_checks import assert_assignment, random_case

pytestmark = pytest.mark.skipif(pqgan_kernels.backend_info()["cpu"] != "available", reason="cpu backend not built")

U32 = 2.0 ** -24
TIE_FACTOR = 4.0


def assert_exact(x, cb, q, idx):
    """Clear rows match the fp64 oracle exactly; near-tied rows are within the direct formula's rounding."""
    N = x.shape[0]
    S, K, d = cb.shape
    assert idx.dtype == torch.int64 and tuple(idx.shape) == (N, S)
    assert torch.equal(q, reference.pq_lookup(cb, idx).to(x.dtype))
    xs = x.double().reshape(N, S, 1, d)
    dist = (xs - cb.double().unsqueeze(0)).square().sum(-1)  # (N, S, K) fp64
    two = dist.topk(min(2, K), dim=-1, largest=False)
    best, oracle = two.values[..., 0], dist.argmin(-1)  # argmin: lowest index among exact fp64 ties
    u = U32 if reference.compute_dtype(x, cb) == torch.float32 else 2.0 ** -53
    tol = TIE_FACTOR * (d + 2) * u * two.values[..., -1]
    clear = (two.values[..., -1] - best > tol) if K > 1 else torch.ones_like(best, dtype=torch.bool)
    assert torch.equal(idx[clear], oracle[clear]), f"{(idx != oracle)[clear].sum()} clear rows differ"
    got = dist.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert bool((got <= best + tol).all()), f"worst excess {(got - best - tol).max():.3e}"
    return clear.double().mean().item()


def offset_case(N, S, d, K, centre, spread, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = centre + spread * torch.randn(N, S * d, generator=g, dtype=torch.float64)
    cb = centre + spread * torch.randn(S, K, d, generator=g, dtype=torch.float64)
    return x.to(dtype), cb.to(dtype)


@pytest.mark.parametrize("N,S,d,K,dtype", [(50, 1, 256, 513, torch.float32), (37, 2, 128, 5, torch.float32),
                                           (40, 1, 128, 64, torch.bfloat16), (29, 2, 128, 300, torch.float64),
                                           (33, 1, 128, 1, torch.float32), (21, 1, 129, 40, torch.float16)])
def test_gemm_path_matches_oracle(N, S, d, K, dtype):
    x, cb = random_case(N, S, d, K, dtype=dtype, seed=N)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx)
    assert_exact(x, cb, q, idx)


def assert_scorers_agree(x, cb):
    """The fused scorer and BLAS give the same indices, and those are exact; returns the fraction of clear rows."""
    q, idx = native_backend.assign_gemm(x, cb, blas=False)
    assert torch.equal(idx, native_backend.assign_gemm(x, cb, blas=True)[1])
    return assert_exact(x, cb, q, idx)


@pytest.mark.parametrize("centre,spread", [(10.0, 1.0), (100.0, 0.05), (1e3, 1e-3), (1e4, 1.0), (1e4, 1e-3),
                                           (-300.0, 0.3)])
@pytest.mark.parametrize("d", [9, 128])
def test_offset_data_is_exact(centre, spread, d):
    """Latents away from the origin: the uncentred expansion loses the winner to cancellation; centred must not.
    N and K are not multiples of the row group (128), the row panel (32) or the code tiles / register blocks, so
    tails of all are covered."""
    x, cb = offset_case(300, 2, d, 700, centre, spread, seed=int(centre) % 97 + d)
    assert_scorers_agree(x, cb)


@pytest.mark.parametrize("centre", [0.0, 100.0, 1e4])
@pytest.mark.parametrize("d", [64, 129, 200])
def test_fused_scorer_tails_are_exact(centre, d):
    """d not a multiple of the vector width, N = 75 (two 32-row panels + 11 rows), K = 12 * 41 + 7 (a partial
    register block at the end), in place (centre 0) and centred."""
    x, cb = offset_case(75, 2, d, 499, centre, 1.0, seed=d)
    assert_scorers_agree(x, cb)


def test_winner_in_a_later_tile_within_the_bound():
    """Rows whose two nearest codes are 1e-4 apart: below the error of the fp32 expansion (a plain fp32 x @ c^T
    orders about half of these rows wrongly), above the direct formula's (about 1e-5), so only the re-check orders
    them. One code sits in the first tile, the other in a later tile (codes 300..) or the partial block at the end
    (600..604); each wins in half of the rows."""
    g = torch.Generator().manual_seed(11)
    N, d, K, gap, r2 = 40, 128, 605, 1e-4, 0.25
    x = 4 * torch.randn(N, d, generator=g, dtype=torch.float64)
    cb = 4 * torch.randn(1, K, d, generator=g, dtype=torch.float64)
    late = torch.cat([torch.arange(300, 335), torch.arange(600, 605)])
    sign = torch.tensor([1.0, -1.0]).repeat(N // 2)  # -1: the later code is nearer (604 in the last row)
    for i in range(N):
        u, v = torch.randn(2, d, generator=g, dtype=torch.float64)
        cb[0, i] = x[i] + u * (r2 ** 0.5 / u.norm())
        cb[0, late[i]] = x[i] + v * ((r2 + sign[i] * gap) ** 0.5 / v.norm())
    x, cb = x.float(), cb.float()
    assert assert_scorers_agree(x, cb) == 1.0  # every row clear: the oracle's code
    idx = native_backend.assign_gemm(x, cb)[1][:, 0]
    assert torch.equal(idx, torch.where(sign < 0, late, torch.arange(N)))


def test_non_finite_rows_get_the_direct_scan_answer():
    """x holding NaN / inf (value checks are the wrapper's, not the op's): such a row has no finite approximate
    score and is decided by the direct scan, like the reference (code 0 here); the other rows are exact."""
    x, cb = random_case(70, 2, 128, 300, seed=12)
    x[3, 5], x[8, 130], x[9, :128] = float("nan"), float("inf"), float("-inf")
    q, idx = native_backend.assign_gemm(x, cb, blas=False)
    assert torch.equal(idx, native_backend.assign_gemm(x, cb, blas=True)[1])
    assert torch.equal(idx, reference.pq_assign(x, cb)[1])


def test_avx2_copy_of_the_fused_scorer():
    """The AVX2 copy (16 x 6 register blocks) on an AVX-512 CPU, forced with PQGAN_CPU_ISA in a fresh process."""
    if torch.ops.pqgan_native.cpu_isa() != "avx512":
        pytest.skip("the default process already runs the widest copy this CPU has")
    import os
    import subprocess
    import sys
    code = """
import torch, pqgan_kernels
from test_cpu_assign_gemm import assert_scorers_agree, offset_case, test_winner_in_a_later_tile_within_the_bound
assert torch.ops.pqgan_native.cpu_isa() == "avx2"
for d, centre in ((64, 0.0), (129, 100.0), (200, 1e4)):
    assert_scorers_agree(*offset_case(75, 2, d, 499, centre, 1.0, seed=d))
test_winner_in_a_later_tile_within_the_bound()
"""
    env = dict(os.environ, PQGAN_CPU_ISA="avx2")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), os.getcwd(), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1e2, 1e4])
def test_scaled_data_is_exact(scale):
    x, cb = random_case(150, 1, 128, 300, seed=5)
    q, idx = native_backend.assign_gemm(x * scale, cb * scale)
    assert_exact(x * scale, cb * scale, q, idx)


def test_mixed_dtypes_and_fp64():
    x, cb = offset_case(70, 1, 128, 90, 50.0, 0.1, seed=6, dtype=torch.float64)
    for xd, cd in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32), (torch.float32, torch.float64)):
        q, idx = native_backend.assign_gemm(x.to(xd), cb.to(cd))
        assert q.dtype == xd
        assert_exact(x.to(xd), cb.to(cd), q, idx)


def test_gemm_path_exact_ties_pick_lowest_index():
    x, cb = random_case(300, 2, 128, 9, integer=True, seed=1)
    cb[:, 5:] = cb[:, 1:2].clone()  # duplicates of code 1: index 1 must win every tie
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx, integer=True)


def test_many_near_ties_fall_back_to_an_exact_scan():
    """More tied codes than the candidate list holds (all duplicates, and a quantised offset grid): exact anyway."""
    x, cb = random_case(140, 1, 128, 300, integer=True, seed=2)
    cb[0, 40:] = cb[0, 7:8].clone()
    x[:70] = cb[0, 7] + 0.5  # rows equidistant from 260 duplicates of code 7
    for blas in (False, True):
        q, idx = native_backend.assign_gemm(x + 1e4, cb + 1e4, blas)
        assert_assignment(x + 1e4, cb + 1e4, q, idx, integer=True)
        assert bool((idx[:70] == 7).all())


def test_lower_matmul_precision_stays_exact():
    """A user may lower torch's fp32 matmul precision; the bound widens with it and the codes do not change."""
    x, cb = offset_case(130, 1, 128, 300, 100.0, 0.1, seed=7)
    before = torch.get_float32_matmul_precision()
    try:
        for precision, same in (("medium", "bf16"), ("high", "tf32")):
            torch.set_float32_matmul_precision(precision)
            assert native_backend.matmul_precision() in (precision, same)
            q, idx = native_backend.assign_gemm(x, cb)
            assert_exact(x, cb, q, idx)
    finally:
        torch.set_float32_matmul_precision(before)


def test_thread_count_does_not_change_the_codes():
    from kernel_checks import torch_threads
    x, cb = offset_case(600, 1, 128, 260, 30.0, 0.5, seed=8)
    with torch_threads(1):
        one = native_backend.assign_gemm(x, cb)[1]
    with torch_threads(2):
        two = native_backend.assign_gemm(x, cb)[1]
    assert torch.equal(one, two)


@pytest.mark.parametrize("blas", [False, True])
@pytest.mark.parametrize("centre", [0.0, 100.0, 1e4])
def test_peak_memory_at_most_twice_the_output(centre, blas):
    """No (N, K) buffer at any magnitude: every allocation of one call (outputs included) <= 2x the outputs."""
    N, K, d = 1024, 2048, 128
    x, cb = offset_case(N, 1, d, K, centre, 1.0, seed=9)
    peak, method = peak_extra_bytes(lambda: native_backend.assign_gemm(x, cb, blas), "cpu")
    if peak is None:
        pytest.skip(method)
    output = N * d * 4 + N * 8
    assert 0 < peak <= 2 * output, (peak, output)


def test_uses_gemm_thresholds():
    """BLAS scoring: d >= 128, or d >= 64 with K >= 512; fused scoring: d >= 48, or d >= 8 with d * K >= 16384."""
    assert native_backend.uses_gemm(GEMM_ALWAYS_D, 1) and native_backend.uses_gemm(GEMM_MIN_D, GEMM_MIN_CODES)
    assert not native_backend.uses_gemm(GEMM_MIN_D, GEMM_MIN_CODES - 1)
    assert not native_backend.uses_gemm(GEMM_MIN_D - 1, 1 << 20)
    assert native_backend.uses_gemm(FUSED_MIN_D, 1, fused=True)
    assert native_backend.uses_gemm(8, FUSED_MIN_DK // 8, fused=True)
    assert not native_backend.uses_gemm(8, FUSED_MIN_DK // 8 - 1, fused=True)
    assert not native_backend.uses_gemm(7, 1 << 20, fused=True)
    assert not native_backend.uses_gemm(FUSED_MIN_D - 1, FUSED_MIN_DK // (FUSED_MIN_D - 1) - 1, fused=True)


def test_fused_scoring_needs_fp32_and_full_precision():
    x, cb = random_case(4, 1, 64, 8)
    fused = torch.ops.pqgan_native.cpu_isa() != "generic"
    assert native_backend.fused_scoring(x, cb) == fused
    assert not native_backend.fused_scoring(x.double(), cb)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not native_backend.fused_scoring(x, cb)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_gemm_path_is_used_only_for_l2_and_large_d(monkeypatch):
    calls = []
    real = native_backend.assign_gemm
    monkeypatch.setattr(native_backend, "assign_gemm", lambda *a: calls.append(a[1].shape) or real(*a))
    if native_backend.fused_scoring(*random_case(4, 1, 64, 8)):
        big = (FUSED_MIN_D, 4), (8, FUSED_MIN_DK // 8)
        small = (FUSED_MIN_D - 1, 8), (8, FUSED_MIN_DK // 8 - 1), (7, 4 * FUSED_MIN_DK)
    else:
        big = (GEMM_ALWAYS_D, 4), (GEMM_MIN_D, GEMM_MIN_CODES)
        small = (GEMM_MIN_D, GEMM_MIN_CODES - 1), (GEMM_MIN_D - 1, 2 * GEMM_MIN_CODES)
    for d, K in big + small:
        x, cb = random_case(8, 1, d, K)
        pqgan_kernels.pq_assign(x, cb, backend="cpu")
        pqgan_kernels.pq_assign(x, cb, backend="cpu", distance="cosine")
    assert [shape[1:] for shape in calls] == [(K, d) for d, K in big]


def test_bad_coefficient_raises():
    x, cb = random_case(4, 1, 128, 3)
    with pytest.raises(ValueError, match="bound_coefficient"):
        torch.ops.pqgan_native.pq_assign_gemm(x, cb, 0.0)
