"""Backend "triton": its own checks (CPU: Triton interpreter, set up by conftest.py; GPU tests marked `gpu`).

The assignment/statistics grid over shapes and data families is in test_kernel_suite.py, shared by every backend;
here: bit-identity of the small-d kernel, strided inputs, mode settings, fast-mode statistics, the EMA apply kernel
(race-free for d >= 65, bounds-checked scatter), compile/opcheck.

Tolerances: assignments use ``kernel_checks.assert_assignment`` (a different index than the fp64 oracle only
within 16*eps32*d*(|x|^2+max|c|^2); >= 99% equal; integer inputs: all equal, ties -> lowest index). EMA/grad
sums are fp32 atomics in another order than the oracle: rtol 1e-5, atol 1e-5; counts must be exact.
Shapes are small because the interpreter is slow (one fixed 32x64 tile config).
"""
import os

import pytest
import torch

from kernel_checks import assert_assignment, random_case

triton = pytest.importorskip("triton")

import pqgan_kernels  # noqa: E402
from pqgan_kernels import dispatch, reference  # noqa: E402

if "triton" not in pqgan_kernels.available_backends():
    pytest.skip(f"triton backend unavailable: {pqgan_kernels.backend_info()['triton']}", allow_module_level=True)

from pqgan_kernels import triton_assign, triton_scatter  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

def test_small_d_is_bit_identical_to_fp32_oracle():
    x, cb = random_case(70, 4, 2, 200, device=DEV, seed=11)
    _, idx = pqgan_kernels.pq_assign(x, cb, backend="triton")
    _, expected = reference.pq_assign(x.cpu(), cb.cpu())
    assert torch.equal(idx.cpu(), expected)


def test_assign_mixed_dtypes_and_noncontiguous_x():
    x, cb = random_case(26, 3, 4, 40, device=DEV, seed=5)
    x_wide = torch.cat([x, x], 1).to(torch.bfloat16)[:, :12]  # strided rows
    q, idx = pqgan_kernels.pq_assign(x_wide, cb, backend="triton")
    assert_assignment(x_wide, cb, q, idx)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_fast_mode_rechecks_candidates(precision):
    x, cb = random_case(64, 2, 32, 300, device=DEV, seed=6)
    q, idx = triton_assign.assign(x, cb, "l2", mode="fast", precision=precision)
    assert_assignment(x, cb, q, idx)
    rates = triton_assign.fast_path_mismatch(x, cb, precision=precision)
    assert set(rates) == {"approx_only", "after_recheck"}
    assert 0.0 <= rates["after_recheck"] <= rates["approx_only"] <= 1.0
    assert rates["after_recheck"] == 0.0  # every candidate within the bound is re-checked (bound.py)
    if precision == "bf16" and DEV == "cpu":  # (deterministic in the interpreter) bf16 rounding flips some
        assert rates["approx_only"] > 0.0


def test_mode_setting_and_bad_mode():
    assert triton_assign.get_mode()[0] == "exact"
    with pytest.raises(ValueError):
        triton_assign.set_mode("fastest")
    with pytest.raises(ValueError):
        triton_assign.assign(torch.zeros(1, 16), torch.ones(1, 2, 16), mode="nope")


def test_fp64_is_refused_with_reason():
    x, cb = random_case(5, 2, 2, 3, dtype=torch.float64, device=DEV)
    reason = dispatch.get_backend("triton").check_supports(x, cb)
    assert reason and "float64" in reason
    with pytest.raises(ValueError, match="float64"):
        pqgan_kernels.pq_assign(x, cb, backend="triton")


@pytest.mark.parametrize("N,S,d,K,idx_dtype", [(70, 3, 5, 40, torch.int64), (33, 2, 16, 7, torch.int32),
                                               (25, 1, 1, 513, torch.int64)])
def test_ema_stats_and_codebook_grad(N, S, d, K, idx_dtype):
    x, _ = random_case(N, S, d, K, device=DEV, seed=21)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, K, (N, S), generator=g).to(device=DEV, dtype=idx_dtype)
    counts, sums = pqgan_kernels.pq_ema_stats(x, idx, K, backend="triton")
    rc, rs = reference.pq_ema_stats(x.cpu(), idx.cpu(), K)
    assert counts.dtype == sums.dtype == torch.float32
    assert torch.equal(counts.cpu(), rc)
    torch.testing.assert_close(sums.cpu(), rs, rtol=1e-5, atol=1e-5)
    grad = pqgan_kernels.pq_codebook_grad(x.to(torch.bfloat16), idx, K, backend="triton")
    torch.testing.assert_close(grad.cpu(), reference.pq_codebook_grad(x.to(torch.bfloat16).cpu(), idx.cpu(), K),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("S,d,K", [(3, 5, 40), (2, 16, 33)])
def test_ema_update_matches_reference(S, d, K):
    N = 50
    x, cb = random_case(N, S, d, K, device=DEV, seed=31)
    idx = torch.randint(0, K, (N, S), generator=torch.Generator().manual_seed(2)).to(DEV)
    cs = torch.rand(S, K, generator=torch.Generator().manual_seed(3)).to(DEV) + 0.5
    es = torch.randn(S, K, d, generator=torch.Generator().manual_seed(4)).to(DEV)
    mine = [t.clone() for t in (cb, cs, es)]
    pqgan_kernels.pq_ema_update(x, idx, *mine, decay=0.9, eps=0.1, backend="triton")
    reference.pq_ema_update(x, idx, cb, cs, es, 0.9, 0.1)
    for got, want in zip(mine, (cb, cs, es)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [65, 130])
def test_ema_update_wide_d_repeats_match_reference(d):
    """d >= 65: the apply kernel's cluster sizes must not be stored and re-read in another thread layout (a race
    on a GPU); repeated updates must keep matching the oracle."""
    S, K, N = 2, 37, 90
    x, cb = random_case(N, S, d, K, device=DEV, seed=d)
    idx = torch.randint(0, K, (N, S), generator=torch.Generator().manual_seed(d)).to(DEV)
    idx[: N * 4 // 5] = 3  # skewed: 80 % of the rows on one code
    cs = torch.rand(S, K, generator=torch.Generator().manual_seed(1)).to(DEV) + 0.5
    es = torch.randn(S, K, d, generator=torch.Generator().manual_seed(2)).to(DEV)
    mine, ref = [t.clone() for t in (cb, cs, es)], [t.clone() for t in (cb, cs, es)]
    for _ in range(3 if DEV == "cpu" else 50):
        pqgan_kernels.pq_ema_update(x, idx, *mine, decay=0.8, eps=1e-3, backend="triton")
        reference.pq_ema_update(x, idx, *ref, 0.8, 1e-3)
        for got, want in zip(mine, ref):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_scatter_skips_out_of_range_indices_with_value_checks_off():
    x, _ = random_case(40, 2, 3, 9, device=DEV, seed=8)
    idx = torch.randint(0, 9, (40, 2), generator=torch.Generator().manual_seed(3)).to(DEV)
    bad = idx.clone()
    bad[0, 0], bad[1, 1] = 9, -1
    pqgan_kernels.set_value_checks(False)
    try:
        counts, sums = triton_scatter.ema_stats(x, bad, 9)
    finally:
        pqgan_kernels.set_value_checks(True)
    expected, _ = reference.pq_ema_stats(x.cpu(), idx.cpu(), 9)
    expected[0, idx[0, 0]] -= 1  # the two out-of-range entries contribute nothing
    expected[1, idx[1, 1]] -= 1
    assert torch.equal(counts.cpu(), expected)


@pytest.mark.parametrize("ema_decay", [0.9, None])
def test_product_quantizer_trains_with_triton(ema_decay):
    from pqgan import ProductQuantizer
    torch.manual_seed(0)
    pq = ProductQuantizer(16, 8, 12, ema_decay=ema_decay, backend="triton", kmeans_init=False).to(DEV)
    z = torch.randn(2, 16, 4, 4, device=DEV, requires_grad=True)
    before = pq.codebooks.detach().clone()
    out = pq(z)
    rows = z.detach().movedim(1, -1).reshape(-1, 16)
    _, ref_idx = reference.pq_assign(rows.cpu(), before.cpu())
    assert torch.equal(out.indices.reshape(-1, 8).cpu(), ref_idx)
    (out.quantized.square().mean() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    if ema_decay is None:
        assert pq.codebooks.grad is not None and pq.codebooks.grad.abs().sum() > 0
    else:
        assert not torch.equal(pq.codebooks, before)


def test_ops_compile_and_opcheck_with_triton():
    x, cb = random_case(20, 2, 4, 9, device=DEV, seed=41)
    cb.requires_grad_(True)
    f = torch.compile(lambda a, c: pqgan_kernels.pq_assign(a, c, backend="triton")[0].sum(), backend="aot_eager",
                      fullgraph=True)
    f(x, cb).backward()
    idx = pqgan_kernels.pq_assign(x, cb.detach(), backend="reference")[1]
    torch.testing.assert_close(cb.grad, reference.pq_codebook_grad(torch.ones_like(x), idx, 9))
    torch.library.opcheck(torch.ops.pqgan.pq_assign.default, (x, cb.detach(), "l2", "triton"))


# --- GPU only: real autotune, big K and S*d ---------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("N,S,d,K", [(4099, 1, 1, 65536), (203, 2, 16, 65536), (515, 512, 2, 512),
                                     (777, 1, 1024, 300), (301, 8, 32, 4096), (3001, 64, 2, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_large_shapes(N, S, d, K, dtype):
    x, cb = random_case(N, S, d, K, dtype=dtype, device="cuda", seed=N)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="triton")
    assert_assignment(x, cb, q, idx)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gpu_fast_mode(precision):
    x, cb = random_case(2048, 16, 16, 512, device="cuda", seed=2)
    q, idx = triton_assign.assign(x, cb, "l2", mode="fast", precision=precision)
    assert_assignment(x, cb, q, idx)
    rates = triton_assign.fast_path_mismatch(x, cb, precision=precision)
    print(f"fast {precision}: {rates}")
    assert rates["after_recheck"] == 0.0


@pytest.mark.gpu
def test_gpu_ema_stats_large():
    N, S, d, K = 65536, 16, 16, 512
    x, _ = random_case(N, S, d, K, device="cuda", seed=4)
    idx = torch.randint(0, K, (N, S), device="cuda")
    counts, sums = triton_scatter.ema_stats(x, idx, K)
    rc, rs = reference.pq_ema_stats(x, idx, K)
    assert torch.equal(counts, rc)
    torch.testing.assert_close(sums, rs, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter-only check")
def test_backend_runs_on_cpu_under_interpreter():
    assert "cpu" in dispatch.get_backend("triton").devices
