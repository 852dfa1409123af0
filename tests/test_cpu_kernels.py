"""The C++ CPU kernels (backend "cpu", ops torch.ops.pqgan_native) against the oracle in reference.py.

Assignments are judged by ``kernel_checks.assert_assignment`` (fp64 oracle; a different index only within rounding
distance; integer inputs must match exactly, ties to the lowest index). Statistics and gradients are compared with
the oracle at fp32 summation tolerance (rtol 1e-5, atol 1e-5 * N), bitwise where the sum order is fixed (fp64).
Row counts are chosen to leave tails (kernel blocks are 64 rows, register tiles 4 rows, codes padded to 16).
"""
import pytest
import torch

import pqgan_kernels
from pqgan_kernels import reference
from pqgan_kernels.bound import bound_coefficient
from kernel_checks import assert_assignment, random_case, torch_threads

native = pytest.importorskip("pqgan_kernels.native_backend")
pytestmark = pytest.mark.skipif(pqgan_kernels.backend_info()["cpu"] != "available",
                                reason=f"cpu backend: {pqgan_kernels.backend_info()['cpu']}")
ops = torch.ops.pqgan_native

# (N, S, d, K): every d in {1,2,3,4,8,16,32,64}, S in {1,2,7,64}, K in {1,5,128,513}, N with tails.
SHAPES = [(67, 7, 1, 513), (131, 64, 1, 5), (70, 64, 2, 128), (3, 2, 2, 513), (65, 7, 3, 128), (130, 2, 4, 5),
          (37, 64, 4, 1), (67, 2, 8, 513), (61, 7, 8, 5), (66, 1, 16, 128), (5, 2, 16, 513), (67, 1, 32, 513),
          (129, 7, 32, 5), (33, 2, 64, 128), (64, 1, 64, 1), (1, 1, 5, 17), (90, 3, 12, 33)]


@pytest.mark.parametrize("N,S,d,K", SHAPES)
def test_assign_l2_fp32(N, S, d, K):
    x, cb = random_case(N, S, d, K, seed=N + S + d + K)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx)


@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (130, 2, 4, 5), (65, 3, 16, 128), (34, 2, 3, 33),
                                     (19, 1, 64, 40)])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_assign_exact_ties(N, S, d, K, distance):
    """Small integers: exact distances, many ties; the index must equal the oracle's (lowest index wins)."""
    x, cb = random_case(N, S, d, K, seed=7 * N + d, integer=True)
    cb[:, K - K // 2:] = cb[:, :K // 2].clone()  # duplicate codewords: exact ties with a lower index
    q, idx = pqgan_kernels.pq_assign(x, cb, distance=distance, backend="cpu")
    if distance == "l2":
        assert_assignment(x, cb, q, idx, integer=True)
    else:  # cosine of integers is not exact (normalisation rounds): only duplicates must resolve low
        assert_assignment(x, cb, q, idx, distance="cosine")
        assert bool((idx < K - K // 2).all()) or K == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (130, 2, 4, 5), (65, 3, 16, 128), (33, 2, 32, 17)])
def test_assign_dtypes(dtype, N, S, d, K):
    x, cb = random_case(N, S, d, K, dtype=dtype, seed=N * d)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx)


@pytest.mark.parametrize("x_dtype,cb_dtype", [(torch.float16, torch.float32), (torch.float32, torch.float64),
                                              (torch.bfloat16, torch.float64)])
def test_assign_mixed_dtypes(x_dtype, cb_dtype):
    x, _ = random_case(71, 5, 3, 40, dtype=x_dtype, seed=1)
    _, cb = random_case(71, 5, 3, 40, dtype=cb_dtype, seed=2)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (130, 2, 4, 5), (65, 3, 16, 128), (35, 1, 64, 9),
                                     (40, 4, 1, 7)])
def test_assign_cosine(dtype, N, S, d, K):
    x, cb = random_case(N, S, d, K, dtype=dtype, seed=3 * N + K)
    norms = torch.rand(S, K, 1, generator=torch.Generator().manual_seed(3 * N + K + 1))
    cb = cb * norms.to(dtype) * 10  # codeword norms differ: l2 and cosine disagree
    x[0] = 0  # a zero row: similarity 0 to everything -> index 0
    q, idx = pqgan_kernels.pq_assign(x, cb, distance="cosine", backend="cpu")
    assert_assignment(x, cb, q, idx, distance="cosine")
    assert bool((idx[0] == 0).all())


def test_assign_noncontiguous_and_thread_count_invariant():
    x, cb = random_case(150, 4, 8, 100, seed=5)
    xt = torch.cat([x, x], 1)[:, ::2]  # a strided view with the same shape
    x = xt.contiguous()
    q1, i1 = ops.pq_assign(xt, cb.transpose(1, 2).contiguous().transpose(1, 2), False)
    with torch_threads(1):
        q2, i2 = ops.pq_assign(x, cb, False)
    assert torch.equal(i1, i2) and torch.equal(q1, q2)
    assert_assignment(x, cb, q2, i2)


def test_assign_huge_values_and_identical_codes():
    """Distances overflowing to inf (all codes equally far) and identical codewords both resolve to index 0."""
    x = torch.full((9, 4), 3e30)
    cb = torch.randn(2, 21, 2)
    _, idx = ops.pq_assign(x, cb, False)
    assert bool((idx == 0).all())
    cb = torch.ones(2, 21, 2)
    _, idx = ops.pq_assign(torch.randn(9, 4), cb, False)
    assert bool((idx == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (130, 2, 4, 5), (65, 1, 40, 12), (33, 64, 1, 3),
                                     (2500, 3, 2, 7), (5000, 1, 20, 4)])  # the last two: several row parts
def test_ema_stats_and_codebook_grad(dtype, index_dtype, N, S, d, K):
    x, _ = random_case(N, S, d, K, dtype=dtype, seed=N + 11)
    idx = torch.randint(0, K, (N, S), generator=torch.Generator().manual_seed(N)).to(index_dtype)
    counts, sums = pqgan_kernels.pq_ema_stats(x, idx, K, backend="cpu")
    ref_counts, ref_sums = reference.pq_ema_stats(x, idx.long(), K)
    assert counts.dtype == ref_counts.dtype and sums.dtype == ref_sums.dtype
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5 * N)
    grad = pqgan_kernels.pq_codebook_grad(x, idx, K, backend="cpu")
    torch.testing.assert_close(grad, reference.pq_codebook_grad(x, idx.long(), K), rtol=1e-5, atol=1e-5 * N)
    # deterministic: a fixed summation order, whatever the thread count
    with torch_threads(1):
        counts1, sums1 = ops.pq_ema_stats(x, idx, K)
    assert torch.equal(counts1, counts) and torch.equal(sums1, sums)


@pytest.mark.parametrize("N,S,d,K", [(3000, 64, 2, 512), (9000, 64, 2, 512), (9000, 16, 2, 64), (700, 20, 1, 300),
                                     (900, 17, 3, 100),
                                     (500, 16, 2, 40000)])
def test_ema_stats_paths_agree_bitwise(N, S, d, K):
    """fp32 sums with d <= 3 take the 16-byte (sums, count) slot tables when they are small enough (not at K = 40000);
    bf16 values take the plain scatter (fp32 sums of the same fp32 values). Per (subspace, code) both add the rows of
    a row part in order and the parts in order (N = 9000: 2 and 8 parts), so the sums must be equal bit for bit,
    with any number of threads, and the counts equal a histogram."""
    g = torch.Generator().manual_seed(N + d)
    x = torch.randn(N, S * d, generator=g).bfloat16()
    idx = torch.randint(0, K, (N, S), generator=g)
    counts, sums = pqgan_kernels.pq_ema_stats(x.float(), idx, K, backend="cpu")
    assert torch.equal(sums, pqgan_kernels.pq_ema_stats(x, idx, K, backend="cpu")[1])
    assert torch.equal(sums, pqgan_kernels.pq_codebook_grad(x.float(), idx, K, backend="cpu"))
    assert torch.equal(sums, pqgan_kernels.pq_codebook_grad(x, idx, K, backend="cpu"))
    with torch_threads(1):
        assert torch.equal(sums, ops.pq_codebook_grad(x.float(), idx, K))
    expected = torch.zeros(S * K).index_add_(0, (idx + torch.arange(S) * K).reshape(-1), torch.ones(N * S))
    assert torch.equal(counts.reshape(-1), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("N,S,d,K", [(300, 1, 64, 16384), (500, 2, 41, 8192)])
def test_stats_rows_sorted_by_code_equal_the_plain_scatter(dtype, N, S, d, K):
    """Outputs larger than the input (K >= N) and than 2 MiB are written code by code from the rows sorted by code;
    the same rows followed by zero rows (then K < N: the plain scatter over one row part) must give the same sums,
    bit for bit, and the counts plus the zero rows' (all given code 0). Codes < 16 only: ~20 rows per used code, so
    the order of the additions shows."""
    g = torch.Generator().manual_seed(N + d)
    x = torch.randn(N, S * d, generator=g).to(dtype)
    idx = torch.randint(0, 16, (N, S), generator=g, dtype=torch.int32)
    counts, sums = ops.pq_ema_stats(x, idx, K)
    pad = K + 1 - N
    x_plain = torch.cat([x, torch.zeros(pad, S * d, dtype=dtype)])
    idx_plain = torch.cat([idx, torch.zeros(pad, S, dtype=torch.int32)])
    counts_plain, sums_plain = ops.pq_ema_stats(x_plain, idx_plain, K)
    assert torch.equal(sums, sums_plain)
    counts_plain[:, 0] -= pad
    assert torch.equal(counts, counts_plain)
    assert torch.equal(ops.pq_codebook_grad(x, idx, K), sums)
    ref_counts, ref_sums = reference.pq_ema_stats(x, idx.long(), K)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)


STATS_FAMILIES = {"zero-mean": (0.0, 1.0), "offset": (1000.0, 1e-3), "tiny": (0.0, 1e-30), "huge": (0.0, 1e30)}


@pytest.mark.parametrize("family", list(STATS_FAMILIES))
@pytest.mark.parametrize("N,S,d,K", [(9000, 64, 2, 512), (3000, 8, 3, 100), (9000, 16, 16, 64), (500, 2, 41, 8192),
                                     (37, 3, 5, 7)])
def test_stats_on_every_data_family_within_the_summation_bound(family, N, S, d, K):
    """Slot tables (2 parts; d = 3), the plain scatter (8 parts), rows sorted by code, one small part: counts equal
    the oracle's; every fp32 sum is within the bound of a sum of n_k terms in any order, |err| <= (n_k + 1) u
    sum_k |x| (u = 2^-24, plus the smallest subnormal), of the fp64 oracle, on offset data (centre >> spread) and at
    tiny and huge scales too; the gradient's sums are the same bits."""
    centre, spread = STATS_FAMILIES[family]
    g = torch.Generator().manual_seed(N + S)
    x = centre + spread * torch.randn(N, S * d, generator=g)
    idx = torch.randint(0, min(K, 16) if K > N else K, (N, S), generator=g)
    counts, sums = ops.pq_ema_stats(x, idx, K)
    assert torch.equal(ops.pq_codebook_grad(x, idx, K), sums)
    ref_counts, ref_sums = reference.pq_ema_stats(x.double(), idx, K)
    assert torch.equal(counts.double(), ref_counts)
    flat = (idx + torch.arange(S) * K).reshape(-1)
    abs_sums = torch.zeros(S * K, d, dtype=torch.float64).index_add_(0, flat, x.double().abs().reshape(N * S, d))
    bound = (ref_counts.unsqueeze(-1) + 1) * 2.0 ** -24 * abs_sums.reshape(S, K, d) + 2.0 ** -149
    assert bool(((sums.double() - ref_sums).abs() <= bound).all())


@pytest.mark.parametrize("N,S,d,K", [(9000, 64, 2, 512), (9000, 16, 16, 64), (300, 1, 64, 16384), (40, 3, 5, 7)])
@pytest.mark.parametrize("row", [0, -1])
def test_stats_bad_index_in_any_row_part_raises(N, S, d, K, row):
    """An index outside [0, K) in the first or the last row (slot tables with 2 parts, the plain scatter with 8
    parts, rows sorted by code, one small part) raises, naming the range."""
    x = torch.randn(N, S * d)
    idx = torch.randint(0, K, (N, S))
    idx[row, S - 1] = K
    with pytest.raises(ValueError, match=rf"outside \[0, {K}\)"):
        ops.pq_ema_stats(x, idx, K)
    idx[row, S - 1] = -1
    with pytest.raises(ValueError, match=rf"outside \[0, {K}\)"):
        ops.pq_codebook_grad(x, idx, K)


def test_ema_update_through_the_op():
    x, cb = random_case(200, 4, 3, 16, seed=9)
    cs, es = torch.rand(4, 16) + 0.5, torch.randn(4, 16, 3)
    _, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    mine = [cb.clone(), cs.clone(), es.clone()]
    ref = [cb.clone(), cs.clone(), es.clone()]
    # eps = 0.1: the Laplace smoothing moves the codebooks by far more than the tolerance (1e-5 would not show it)
    pqgan_kernels.pq_ema_update(x, idx, *mine, 0.9, 0.1, backend="cpu")
    reference.pq_ema_update(x, idx, *ref, 0.9, 0.1)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x, cb = random_case(8, 2, 3, 5)
    with pytest.raises(ValueError):
        ops.pq_assign(x[:, :5], cb, False)
    with pytest.raises(ValueError):
        ops.pq_assign(x[:0], cb, False)
    with pytest.raises(ValueError):
        ops.pq_assign(x, cb[0], False)
    with pytest.raises(TypeError):
        ops.pq_assign(x.int(), cb, False)
    idx = torch.zeros(8, 2, dtype=torch.long)
    with pytest.raises(ValueError):
        ops.pq_ema_stats(x, idx + 5, 5)
    with pytest.raises(ValueError):
        ops.pq_codebook_grad(x, idx - 1, 5)
    with pytest.raises(TypeError):
        ops.pq_ema_stats(x, idx.float(), 5)
    with pytest.raises(ValueError):
        ops.pq_ema_stats(x[:, :5], idx, 5)


def test_autograd_through_cpu_backend():
    x, cb = random_case(70, 4, 2, 9, seed=4)
    cb.requires_grad_(True)
    g = torch.randn(70, 8)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    (q * g).sum().backward()
    torch.testing.assert_close(cb.grad, reference.pq_codebook_grad(g, idx, 9), rtol=1e-5, atol=1e-4)


def test_product_quantizer_training_step():
    from pqgan import ProductQuantizer
    torch.manual_seed(0)
    for ema in (0.9, None):
        pq = ProductQuantizer(16, 8, 12, ema_decay=ema, backend="cpu")
        ref = ProductQuantizer(16, 8, 12, ema_decay=ema, backend="reference")
        ref.load_state_dict(pq.state_dict())
        z = torch.randn(2, 16, 5, 3)
        z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        out, out_ref = pq.train()(z1), ref.train()(z2)
        assert torch.equal(out.indices, out_ref.indices)
        torch.testing.assert_close(out.quantized, out_ref.quantized)
        (out.quantized.square().sum() + out.loss).backward()
        (out_ref.quantized.square().sum() + out_ref.loss).backward()
        torch.testing.assert_close(z1.grad, z2.grad)
        for a, b in zip(pq.state_dict().values(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        if ema is None:
            torch.testing.assert_close(pq.codebooks.grad, ref.codebooks.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("S,K,d,N", [(64, 512, 2, 3000), (2, 3000, 45, 500), (1, 1000, 256, 300), (3, 1, 1, 5)])
def test_ema_update_native_apply_matches_reference(S, K, d, N):
    """backend "cpu" updates fp32 contiguous state with the native apply (pq_ema_apply_; the 1000 x 256 case in
    several parallel chunks), other state (fp64, non-contiguous) with ema_apply.py: both equal the oracle's update
    within fp32 rounding (n is summed in fp64 by the native apply), eps large enough to show the smoothing."""
    g = torch.Generator().manual_seed(S + K)
    x = torch.randn(N, S * d, generator=g)
    idx = torch.randint(0, K, (N, S), generator=g)
    state = (torch.randn(S, K, d, generator=g), torch.rand(S, K, generator=g) + 0.5, torch.randn(S, K, d, generator=g))
    ref = [t.clone() for t in state]
    reference.pq_ema_update(x, idx, *ref, 0.9, 0.1)
    variants = {"fp32": [t.clone() for t in state], "fp64": [t.double() for t in state],
                "strided": [t.transpose(0, 1).contiguous().transpose(0, 1) for t in state]}
    for name, mine in variants.items():
        pqgan_kernels.pq_ema_update(x, idx, *mine, 0.9, 0.1, backend="cpu")
        for a, b in zip(mine, ref):
            torch.testing.assert_close(a.float(), b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_native_apply_rejects_what_it_does_not_run():
    """pq_ema_apply_ runs fp32 contiguous state only, and says which argument is at fault."""
    S, K, d = 2, 5, 3
    state = [torch.randn(S, K, d), torch.rand(S, K) + 0.5, torch.randn(S, K, d)]
    stats = [torch.rand(S, K), torch.randn(S, K, d)]
    with pytest.raises(TypeError, match="embed_sum must be float32"):
        ops.pq_ema_apply_(state[0], state[1], state[2].double(), *stats, 0.9, 1e-5)
    with pytest.raises(ValueError, match="codebooks must be a contiguous"):
        ops.pq_ema_apply_(state[0].transpose(0, 1).contiguous().transpose(0, 1), *state[1:], *stats, 0.9, 1e-5)
    with pytest.raises(ValueError, match="cluster_size and counts must be"):
        ops.pq_ema_apply_(*state, torch.rand(S, K - 1), stats[1], 0.9, 1e-5)


def test_opcheck_native_ops():
    x, cb = random_case(21, 3, 2, 7, seed=2)
    idx = torch.randint(0, 7, (21, 3))
    torch.library.opcheck(ops.pq_assign.default, (x, cb, False))
    torch.library.opcheck(ops.pq_assign.default, (x, cb, False, bound_coefficient(2)))
    torch.library.opcheck(ops.pq_assign.default, (x.double(), cb, True))
    torch.library.opcheck(ops.pq_ema_stats.default, (x, idx, 7))
    torch.library.opcheck(ops.pq_codebook_grad.default, (x, idx.int(), 7))
    counts, sums = ops.pq_ema_stats(x, idx, 7)
    state = (torch.randn(3, 7, 2), torch.rand(3, 7) + 0.5, torch.randn(3, 7, 2))
    torch.library.opcheck(ops.pq_ema_apply_.default, (*state, counts, sums, 0.9, 1e-5))


def test_assign_allocates_no_rows_by_codes_buffer():
    """The fused kernel's allocations stay far below one (N, K) fp32 buffer (the reference allocates it)."""
    from torch.profiler import ProfilerActivity, profile
    N, K = 2048, 2048
    x, cb = random_case(N, 1, 1, K, seed=3)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        ops.pq_assign(x, cb, False)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert 0 < largest < N * K * 4 // 16, largest


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_capped_isa_copy_matches_the_oracle(isa):
    """The baseline (non-AVX2) copy, or the AVX2 one on an AVX-512 CPU, forced with PQGAN_CPU_ISA in a fresh
    process (the default process runs the widest copy)."""
    if isa == "avx2" and torch.ops.pqgan_native.cpu_isa() == "generic":
        pytest.skip("this CPU has no AVX2")
    import os
    import subprocess
    import sys
    code = """
import torch, pqgan_kernels._C
from kernel_checks import assert_assignment, random_case
assert torch.ops.pqgan_native.cpu_isa() == ISA, torch.ops.pqgan_native.cpu_isa()
for (N, S, d, K) in [(67, 7, 2, 513), (30, 2, 3, 5), (33, 2, 16, 40), (21, 1, 1, 70), (9, 2, 4, 33)]:
    for dtype in (torch.float32, torch.float64):
        for distance in ("l2", "cosine"):
            x, cb = random_case(N, S, d, K, dtype=dtype, seed=N + d)
            q, i = torch.ops.pqgan_native.pq_assign(x, cb, distance == "cosine")
            assert_assignment(x, cb, q, i, distance=distance)
        x, cb = random_case(N, S, d, K, dtype=dtype, seed=N + d, integer=True)
        q, i = torch.ops.pqgan_native.pq_assign(x, cb, False)
        assert_assignment(x, cb, q, i, integer=True)
"""
    code = f"ISA = {isa!r}\n" + code
    env = dict(os.environ, PQGAN_CPU_ISA=isa)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# The expanded-formula scan (l2, fp32, d <= 4; the AVX2 / AVX-512 copies): every way it decides a row. Codes
# k and k + 16 share a block and a vector lane (blocks of 64 codes, 8 or 16 lanes); k and k + 64 do not.
def _expanded_case(case: str, d: int):
    g = torch.Generator().manual_seed(100 + d)
    N, S, K = 131, 3, 200  # K not a multiple of the 64-code block: padding codes
    cb = torch.randn(S, K, d, generator=g)
    x = torch.randn(N, S * d, generator=g)
    if case == "offset":  # centre >> spread: the expanded formula alone would cancel catastrophically
        cb, x = 1000 + 0.01 * cb, 1000 + 0.01 * x
    elif case in ("same-block-duplicates", "cross-block-duplicates"):
        shift = 16 if case == "same-block-duplicates" else 64
        cb[:, shift:shift + 16] = cb[:, :16]  # exact duplicates: every formula ties them, the lower index wins
        pick = torch.randint(0, 16, (N, S), generator=g)
        x = (cb[torch.arange(S), pick] + 1e-3 * torch.randn(N, S, d, generator=g)).reshape(N, S * d)
    elif case == "near-ties-across-blocks":  # codes j and j + 64 (one lane, two blocks) within rounding of the
        # expanded formula (one far code pulls the centre away, so centred scores are large) but not of the direct
        # one: only a re-check of both blocks finds the true nearest when the later one wins
        cb = 0.01 * torch.randn(S, K, d, generator=g)
        cb[:, 64:128] = cb[:, :64] + 1e-6 * torch.randn(S, 64, d, generator=g)
        cb[:, K - 1] = 1e4
        pick = torch.randint(0, 64, (N, S), generator=g)
        x = (cb[torch.arange(S), pick] + 1e-5 * torch.randn(N, S, d, generator=g)).reshape(N, S * d)
    elif case == "midpoints":  # rows exactly between two codes (integer data: exact distances)
        cb = torch.randint(-8, 9, (S, K, d), generator=g).float()
        a, b = torch.randint(0, K, (2, N, S), generator=g)
        x = ((cb[torch.arange(S), a] + cb[torch.arange(S), b]) / 2).reshape(N, S * d)
    return x, cb


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("case", ["offset", "same-block-duplicates", "cross-block-duplicates",
                                  "near-ties-across-blocks", "midpoints"])
def test_assign_expanded_scan_cases(case, d):
    x, cb = _expanded_case(case, d)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert_assignment(x, cb, q, idx, integer=case == "midpoints")
    if "duplicates" in case:
        shift = 16 if case == "same-block-duplicates" else 64
        assert not bool(((idx >= shift) & (idx < shift + 16)).any())  # never the higher copy of a pair


def test_assign_expanded_scan_non_finite_rows():
    """With value checks off, rows holding inf/NaN get what the direct-formula scan gives them; others the oracle's."""
    x, cb = _expanded_case("offset", 2)
    x[3, 0], x[5, 2], x[8, 1] = float("nan"), float("inf"), float("-inf")
    pqgan_kernels.set_value_checks(False)
    try:
        _, idx = pqgan_kernels.pq_assign(x, cb, backend="cpu")
        with torch_threads(1):
            _, direct = pqgan_kernels.pq_assign(x.double(), cb.double(), backend="cpu")  # fp64: the direct scan
    finally:
        pqgan_kernels.set_value_checks(True)
    bad = ~torch.isfinite(x.view(x.shape[0], -1, 2)).all(-1)  # (N, S) subspaces holding a non-finite value
    assert torch.equal(idx[bad], direct[bad])
    good = ~bad.any(1)
    assert_assignment(x[good], cb, reference.pq_lookup(cb, idx[good]), idx[good])


@pytest.mark.parametrize("coefficient", [float("nan"), float("inf"), -1e-6])
def test_assign_refuses_a_bad_bound_coefficient(coefficient):
    x, cb = random_case(8, 2, 2, 16, seed=3)
    with pytest.raises(ValueError, match="bound_coefficient"):
        ops.pq_assign(x, cb, False, coefficient)


def test_assign_same_codes_with_and_without_the_bound():
    """Coefficient 0 keeps the direct-formula scan, bound.py's enables the expanded one: the codes are the same."""
    x, cb = _expanded_case("offset", 2)
    direct = ops.pq_assign(x, cb, False, 0.0)
    expanded = ops.pq_assign(x, cb, False, bound_coefficient(2))
    assert torch.equal(direct[1], expanded[1]) and torch.equal(direct[0], expanded[0])
