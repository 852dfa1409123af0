"""One kernel test suite for every backend: the same case grid and data families, judged against the oracle.

Backends: "reference" and "cpu" on the CPU, "triton" in the interpreter on the CPU (conftest sets TRITON_INTERPRET)
or on a GPU, "cuda" on a GPU (GPU cases are marked ``gpu``). Backend-specific checks (ISA override, thread-count
determinism, no (N, K) buffer, fast-mode precision) live in their own files.

Judging an assignment (``check_assignment``). Let D_k be the squared distance in fp64 of a row's sub-vector to code
k, on the inputs as the kernel received them (fp16/bf16 are exact in fp32), and u = 2^-24. A kernel's final scores
are the direct formula in fp32, each within 1.01 (d + 2) u D_k of D_k (see ``pqgan_kernels/bound.py``, step 3), so
its pick can lose to the true best only when the two lie within

    tol = (2 d + 6) u D_second      (l2)            tol = (4 d + 16) u      (cosine, on 1 - cos)

of each other. Rows whose fp64 gap D_second - D_best exceeds tol must return the oracle's index; every other row
must return a code within tol of the best. Integer-valued data has exact fp32 distances: every index must equal
the oracle's, ties to the lowest index. Duplicate codewords score identically: the first copy must win.

Statistics (counts, sums, codebook gradient): counts exact; a sum of n fp32 terms in any order is within
1.01 n u sum|terms| of the exact sum, which is the tolerance used.
"""
from __future__ import annotations

import pytest
import torch

import pqgan_kernels
from pqgan_kernels import reference

U32 = 2.0 ** -24

# --- backends ------------------------------------------------------------------------------------------------

def _backend_params(names=("reference", "cpu", "triton", "cuda")):
    gpu = torch.cuda.is_available()
    params = [pytest.param(("reference", "cpu"), id="reference"), pytest.param(("cpu", "cpu"), id="cpu")]
    if not gpu:
        params.append(pytest.param(("triton", "cpu"), id="triton-interp"))
    params += [pytest.param(("triton", "cuda"), id="triton-cuda", marks=pytest.mark.gpu),
               pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu)]
    return [p for p in params if p.values[0][0] in names]


def _available(request):
    name, device = request.param
    info = pqgan_kernels.backend_info()[name]
    if info != "available":
        pytest.skip(f"backend {name!r} unavailable here: {info}")
    return name, device


@pytest.fixture(params=_backend_params())
def backend(request):
    return _available(request)


@pytest.fixture(params=_backend_params(("triton",)))
def triton_backend(request):
    return _available(request)


# --- data families -------------------------------------------------------------------------------------------

def make_case(family: str, N: int, S: int, d: int, K: int, seed: int):
    """x (N, S*d), codebooks (S, K, d) in fp32 for one data family."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    if family == "zero_mean":
        x, cb = randn(N, S * d), randn(S, K, d)
    elif family.startswith("offset"):  # offset-<centre>-<spread>: latents far from the origin
        _, centre, spread = family.split("-")
        centre, spread = float(centre), float(spread)
        shift = centre * (1 + torch.rand(S, 1, d, generator=g, dtype=torch.float64))
        x = (shift.transpose(0, 1) + spread * randn(N, S, d)).reshape(N, S * d)
        cb = shift + spread * randn(S, K, d)
    elif family.startswith("scaled"):
        scale = float(family.split("-", 1)[1])
        x, cb = scale * randn(N, S * d), scale * randn(S, K, d)
    elif family == "integer_ties":
        x = torch.randint(-3, 4, (N, S * d), generator=g).double()
        cb = torch.randint(-3, 4, (S, K, d), generator=g).double()
    elif family == "duplicates":
        x, cb = randn(N, S * d), randn(S, K, d)
        half = (K + 1) // 2
        cb[:, half:] = cb[:, :K - half]  # code half + j is a copy of code j
    elif family == "near_ties":  # rows at (nearly) equal distance from two codes
        cb = randn(S, K, d)
        a = torch.randint(0, K, (N, S), generator=g)
        b = (a + 1) % K
        s_idx = torch.arange(S)
        mid = (cb[s_idx, a] + cb[s_idx, b]) / 2  # (N, S, d)
        x = (mid + 1e-6 * randn(N, S, d)).reshape(N, S * d)
    else:
        raise ValueError(family)
    return x.float(), cb.float()


FAMILIES = ["zero_mean", "offset-10-1", "offset-1000-1", "offset-100-0.001", "offset-1000-0.01", "scaled-1e-4",
            "scaled-1e4", "integer_ties", "duplicates", "near_ties"]

# (N, S, d, K): every d of the grid, tails (N, K not multiples of any tile), K = 1.
SHAPES = [(37, 3, 1, 5), (45, 2, 2, 130), (33, 5, 3, 17), (29, 2, 4, 64), (31, 1, 5, 33), (35, 2, 8, 70),
          (23, 1, 9, 40), (31, 2, 16, 129), (19, 1, 17, 65), (20, 1, 32, 100), (17, 2, 64, 33), (9, 1, 127, 20),
          (11, 1, 128, 67), (7, 1, 256, 40), (13, 2, 16, 1), (12, 3, 2, 1)]


# --- the judge -----------------------------------------------------------------------------------------------

def oracle_rows(x, codebooks, distance="l2"):
    """fp64 judge of a row set: dist (N, S, K), the oracle's index (N, S), best distance, tolerance, clear rows.

    A row is clear when its best/second-best gap exceeds the tolerance (see the module docstring)."""
    N = x.shape[0]
    S, K, d = codebooks.shape
    xs, cbc = x.cpu().double().reshape(N, S, 1, d), codebooks.cpu().double()
    if distance == "l2":
        dist = (xs - cbc[None]).square().sum(-1)
    else:
        dist = 1 - (torch.nn.functional.normalize(xs, dim=-1) * torch.nn.functional.normalize(cbc, dim=-1)[None]).sum(-1)
    two = dist.topk(min(2, K), dim=-1, largest=False).values
    best, second = two[..., 0], two[..., -1]
    tol = (2 * d + 6) * U32 * second if distance == "l2" else torch.full_like(best, (4 * d + 16) * U32)
    return dist, dist.argmin(-1), best, tol, (second - best) > tol


def check_assignment(x, codebooks, quantized, indices, distance, family):
    N = x.shape[0]
    S, K, d = codebooks.shape
    assert indices.dtype == torch.int64 and tuple(indices.shape) == (N, S)
    assert quantized.dtype == x.dtype and tuple(quantized.shape) == tuple(x.shape)
    idx = indices.cpu()
    assert int(idx.min()) >= 0 and int(idx.max()) < K, "index out of range"
    assert torch.equal(quantized.cpu(), reference.pq_lookup(codebooks.cpu(), idx).to(x.dtype)), \
        "quantized is not the lookup of the returned indices"
    dist, best_idx, best, tol, clear = oracle_rows(x, codebooks, distance)
    if family == "integer_ties" and distance == "l2":
        assert torch.equal(idx, best_idx), f"{int((idx != best_idx).sum())} indices differ on exact inputs"
        return
    chosen = dist.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    wrong = clear & (idx != best_idx)
    assert not bool(wrong.any()), (f"{int(wrong.sum())} of {int(clear.sum())} clear rows differ from the oracle, "
                                   f"e.g. row/subspace {wrong.nonzero()[0].tolist()}")
    worse = chosen - best
    assert bool((worse <= tol).all()), f"a pick is worse than the best by {float(worse.max()):.3e} > tolerance"
    if family == "duplicates":
        half = (K + 1) // 2
        copy_of_earlier = (idx >= half) & (idx - half < K - half)
        assert not bool(copy_of_earlier.any()), "a later copy of a duplicate codeword won the tie"


# --- assignment ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("N,S,d,K", SHAPES)
def test_assign_l2_fp32(backend, family, N, S, d, K):
    name, device = backend
    x, cb = make_case(family, N, S, d, K, seed=N * 31 + d)
    q, idx = pqgan_kernels.pq_assign(x.to(device), cb.to(device), backend=name)
    check_assignment(x, cb, q, idx, "l2", family)


@pytest.mark.parametrize("family", ["zero_mean", "offset-100-1", "scaled-1e-4", "duplicates"])
@pytest.mark.parametrize("N,S,d,K", [(37, 3, 1, 5), (29, 2, 4, 64), (31, 2, 16, 129), (9, 1, 127, 20)])
def test_assign_cosine(backend, family, N, S, d, K):
    name, device = backend
    x, cb = make_case(family, N, S, d, K, seed=N + K)
    cb[0, 0] = 0  # a zero codeword has similarity 0 to everything
    if family == "duplicates":
        cb[0, (K + 1) // 2] = 0  # ... and so has its copy
    q, idx = pqgan_kernels.pq_assign(x.to(device), cb.to(device), distance="cosine", backend=name)
    check_assignment(x, cb, q, idx, "cosine", family)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["zero_mean", "offset-10-1", "integer_ties"])
@pytest.mark.parametrize("N,S,d,K", [(45, 2, 2, 130), (31, 2, 16, 129), (11, 1, 128, 67)])
def test_assign_half_inputs(backend, dtype, family, N, S, d, K):
    name, device = backend
    x, cb = make_case(family, N, S, d, K, seed=7)
    x, cb = x.to(dtype), cb.to(dtype)
    q, idx = pqgan_kernels.pq_assign(x.to(device), cb.to(device), backend=name)
    check_assignment(x, cb, q, idx, "l2", family)


# --- statistics ----------------------------------------------------------------------------------------------

def _indices(kind: str, N: int, S: int, K: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, K, (N, S), generator=g)
    if kind == "skewed":  # 80 % of the rows on one code
        idx[torch.rand(N, generator=g) < 0.8] = K // 2
    return idx


def _assert_sums(got, values, idx, K, expected):
    """got/expected (S, K, d); tolerance 1.01 n u sum|terms| per code (see the module docstring)."""
    counts, abs_sums = reference.pq_ema_stats(values.abs().double(), idx, K)
    tol = 1.01 * (counts + 1).unsqueeze(-1) * U32 * abs_sums + 1e-30
    err = (got.cpu().double() - expected.double()).abs()
    assert bool((err <= tol).all()), f"sum off by {float(err.max()):.3e} (tolerance {float(tol.max()):.3e})"


@pytest.mark.parametrize("kind", ["uniform", "skewed"])
@pytest.mark.parametrize("family", ["zero_mean", "offset-1000-1", "scaled-1e4"])
@pytest.mark.parametrize("N,S,d,K", [(70, 3, 2, 40), (33, 2, 16, 7), (25, 1, 1, 513), (40, 2, 70, 5)])
def test_ema_stats_and_codebook_grad(backend, kind, family, N, S, d, K):
    name, device = backend
    x, _ = make_case(family, N, S, d, K, seed=N)
    idx = _indices(kind, N, S, K, seed=d)
    counts, sums = pqgan_kernels.pq_ema_stats(x.to(device), idx.to(device), K, backend=name)
    ref_counts, ref_sums = reference.pq_ema_stats(x.double(), idx, K)
    assert torch.equal(counts.cpu().double(), ref_counts)
    _assert_sums(sums, x, idx, K, ref_sums)
    grad = pqgan_kernels.pq_codebook_grad(x.to(device), idx.to(device), K, backend=name)
    _assert_sums(grad, x, idx, K, reference.pq_codebook_grad(x.double(), idx, K))


# --- the Triton dot kernel's search precisions: each must return the same codes (only speed differs) -----------

@pytest.mark.parametrize("mode,precision", [("exact", "tf32"), ("fast", "tf32"), ("fast", "bf16"),
                                            ("fast", "tf32x3")])
@pytest.mark.parametrize("family", ["zero_mean", "offset-10-1", "offset-1000-1", "offset-100-0.001",
                                    "integer_ties", "duplicates", "near_ties"])
@pytest.mark.parametrize("N,S,d,K", [(31, 2, 16, 129), (20, 1, 32, 100), (7, 1, 256, 40), (35, 2, 3, 70)])
def test_triton_dot_kernel_every_precision(triton_backend, mode, precision, family, N, S, d, K):
    _, device = triton_backend
    from pqgan_kernels import triton_assign
    x, cb = make_case(family, N, S, d, K, seed=d + K)
    # fast_path_mismatch runs the dot kernel whatever d is (also d <= SMALL_D_MAX): exact vs this precision
    rates = triton_assign.fast_path_mismatch(x.to(device), cb.to(device), precision=precision)
    assert rates["after_recheck"] == 0.0, rates
    q, idx = triton_assign.assign(x.to(device), cb.to(device), "l2", mode=mode, precision=precision)
    check_assignment(x, cb, q, idx, "l2", family)
