"""The public kernel API: validation, torch.library registration (opcheck), autograd, torch.compile, dispatch."""
import pytest
import torch

import pqgan_kernels
from pqgan_kernels import reference

from kernel_checks import assert_assignment, random_case


def test_available_backends_lists_reference_and_reasons():
    assert "reference" in pqgan_kernels.available_backends()
    info = pqgan_kernels.backend_info()
    assert set(info) == set(pqgan_kernels.BACKENDS)
    assert all(isinstance(v, str) and v for v in info.values())


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_pq_assign_reference_backend(distance):
    x, cb = random_case(77, 5, 3, 11, seed=3)
    q, idx = pqgan_kernels.pq_assign(x, cb, distance=distance, backend="reference")
    assert_assignment(x, cb, q, idx, distance)


def test_unknown_or_unavailable_backend_is_a_clear_error():
    x, cb = random_case(4, 2, 2, 3)
    with pytest.raises(ValueError, match="unknown backend"):
        pqgan_kernels.pq_assign(x, cb, backend="tpu")
    missing = [b for b in pqgan_kernels.BACKENDS if b not in pqgan_kernels.available_backends()]
    for name in missing:
        with pytest.raises(RuntimeError, match="not available"):
            pqgan_kernels.pq_assign(x, cb, backend=name)


def test_default_backend_override():
    x, cb = random_case(4, 2, 2, 3)
    pqgan_kernels.set_default_backend("reference")
    try:
        assert pqgan_kernels.resolved_backend(x, cb) == "reference"
    finally:
        pqgan_kernels.set_default_backend(None)
    with pytest.raises(ValueError):
        pqgan_kernels.set_default_backend("nope")


@pytest.mark.parametrize("make_args,err,match", [
    (lambda x, cb: (x.long(), cb), TypeError, "float"),
    (lambda x, cb: (x, cb.int()), TypeError, "float"),
    (lambda x, cb: (x[:, :5], cb), ValueError, r"\(N, S\*d\)"),
    (lambda x, cb: (x[:0], cb), ValueError, "empty batch"),
    (lambda x, cb: (x, cb[0]), ValueError, r"\(S, K, d\)"),
    (lambda x, cb: (x, cb[:, :0]), ValueError, "S, K, d >= 1"),
    (lambda x, cb: (x.reshape(-1), cb), ValueError, r"\(N, S\*d\)"),
    (lambda x, cb: (torch.where(x > 1, float("nan"), x), cb), ValueError, "NaN or Inf"),
    (lambda x, cb: (x, torch.where(cb > 1, float("inf"), cb)), ValueError, "NaN or Inf"),
    (lambda x, cb: (x, cb.to("meta")), ValueError, "same device"),
])
def test_pq_assign_bad_input(make_args, err, match):
    x, cb = random_case(8, 2, 3, 4)
    with pytest.raises(err, match=match):
        pqgan_kernels.pq_assign(*make_args(x, cb))


def test_pq_assign_bad_distance():
    x, cb = random_case(8, 2, 3, 4)
    with pytest.raises(ValueError, match="distance"):
        pqgan_kernels.pq_assign(x, cb, distance="l1")


def ema_state(S, K, d, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(S, K, d, generator=g, dtype=dtype), torch.rand(S, K, generator=g, dtype=dtype) + 0.5,
            torch.randn(S, K, d, generator=g, dtype=dtype))


def test_pq_ema_update_matches_reference():
    x, cb = random_case(60, 3, 4, 6)
    _, idx = reference.pq_assign(x, cb)
    a = ema_state(3, 6, 4)
    b = tuple(t.clone() for t in a)
    pqgan_kernels.pq_ema_update(x, idx, *a, decay=0.9, eps=1e-5, backend="reference")
    reference.pq_ema_update(x, idx, *b, 0.9, 1e-5)
    for t, u in zip(a, b):
        assert torch.equal(t, u)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: dict(a, indices=a["indices"].float()), "int32 or int64"),
    (lambda a: dict(a, indices=a["indices"] + 100), "outside"),
    (lambda a: dict(a, indices=a["indices"][:, :2]), r"indices must be \(N, S\)"),
    (lambda a: dict(a, cluster_size=a["cluster_size"][:, :3]), "cluster_size"),
    (lambda a: dict(a, embed_sum=a["embed_sum"][..., :2]), "embed_sum"),
    (lambda a: dict(a, decay=1.5), "decay"),
    (lambda a: dict(a, eps=0.0), "eps"),
])
def test_pq_ema_update_bad_input(mutate, match):
    x, cb = random_case(10, 3, 4, 6)
    _, idx = reference.pq_assign(x, cb)
    c, cs, es = ema_state(3, 6, 4)
    args = dict(x=x, indices=idx, codebooks=c, cluster_size=cs, embed_sum=es, decay=0.9, eps=1e-5)
    with pytest.raises((ValueError, TypeError), match=match):
        pqgan_kernels.pq_ema_update(**mutate(args))


def test_codebook_gradcheck():
    x, cb = random_case(30, 3, 2, 5, dtype=torch.float64)
    cb.requires_grad_(True)
    fn = lambda c: pqgan_kernels.pq_assign(x, c, backend="reference")[0]
    assert torch.autograd.gradcheck(fn, (cb,))
    assert torch.autograd.gradgradcheck(fn, (cb,))


def test_x_gets_no_gradient_through_the_op():
    x, cb = random_case(30, 3, 2, 5)
    x.requires_grad_(True)
    cb.requires_grad_(True)
    q, _ = pqgan_kernels.pq_assign(x, cb, backend="reference")
    q.square().sum().backward()
    assert x.grad is None or not x.grad.any()
    assert cb.grad is not None and cb.grad.abs().sum() > 0


def test_opcheck_every_op():
    x, cb = random_case(20, 4, 2, 6, seed=5)
    _, idx = reference.pq_assign(x, cb)
    cbg = cb.clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.pqgan.pq_assign.default, (x, cbg, "l2", "reference"))
    torch.library.opcheck(torch.ops.pqgan.pq_assign.default, (x, cb, "cosine", "reference"))
    g = torch.randn(20, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.pqgan.pq_codebook_grad.default, (g, idx, 6, "reference"))
    torch.library.opcheck(torch.ops.pqgan.pq_ema_stats.default, (x, idx, 6, "reference"))
    torch.library.opcheck(torch.ops.pqgan.pq_ema_update.default, (x, idx, *ema_state(4, 6, 2), 0.9, 1e-5,
                                                                  "reference"))


def test_torch_compile_fullgraph_of_the_ops():
    x, cb = random_case(33, 4, 2, 6, seed=9)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(x, cb):
        q, idx = pqgan_kernels.pq_assign(x, cb, backend="reference")
        return q * 2, idx

    q, idx = fn(x, cb)
    q0, idx0 = pqgan_kernels.pq_assign(x, cb, backend="reference")
    assert torch.equal(idx, idx0) and torch.equal(q, q0 * 2)


# --- the public wrappers of the other ops: values, dtypes, backends and named errors ------------------------------

def test_pq_codebook_grad_wrapper_values_and_dtype():
    idx = torch.tensor([[0, 2], [0, 1], [1, 2]])
    g = torch.arange(12, dtype=torch.float16).reshape(3, 4)           # rows (0,1 | 2,3), (4,5 | 6,7), (8,9 | 10,11)
    grad = pqgan_kernels.pq_codebook_grad(g, idx, 3, backend="reference")
    expected = torch.zeros(2, 3, 2)
    expected[0, 0] = torch.tensor([0.0, 1.0]) + torch.tensor([4.0, 5.0])
    expected[0, 1] = torch.tensor([8.0, 9.0])
    expected[1, 2] = torch.tensor([2.0, 3.0]) + torch.tensor([10.0, 11.0])
    expected[1, 1] = torch.tensor([6.0, 7.0])
    assert grad.dtype == torch.float32 and torch.equal(grad, expected)
    assert torch.equal(pqgan_kernels.pq_codebook_grad(g.float(), idx, 3), expected)        # default: auto


@pytest.mark.parametrize("op,name", [(pqgan_kernels.pq_codebook_grad, "grad_quantized"),
                                     (pqgan_kernels.pq_ema_stats, "x")], ids=["pq_codebook_grad", "pq_ema_stats"])
@pytest.mark.parametrize("make,err,match", [
    (lambda v, i: (v.long(), i), TypeError, "{name} must be float16, bfloat16, float32 or float64"),
    (lambda v, i: (v, i.float()), TypeError, "indices must be int32 or int64"),
    (lambda v, i: (v, i[None]), ValueError, r"do not match: \(3, 4\) vs \(1, 3, 2\)"),
    (lambda v, i: (v[None], i), ValueError, r"do not match: \(1, 3, 4\) vs \(3, 2\)"),
    (lambda v, i: (v[:2], i), ValueError, r"do not match: \(2, 4\) vs \(3, 2\)"),
    (lambda v, i: (v[:, :3], i), ValueError, r"do not match: \(3, 3\) vs \(3, 2\)"),
    (lambda v, i: (v[:0], i[:0]), ValueError, r"{name} is an empty batch \(N = 0\)"),
    (lambda v, i: (v, i.to("meta")), ValueError, "{name} on cpu, indices on meta"),
    (lambda v, i: (v, i + 3), ValueError, "outside"),
])
def test_scatter_wrappers_bad_input(op, name, make, err, match):
    """pq_codebook_grad and pq_ema_stats share their checks: values (N, S*d) ``name``, indices (N, S)."""
    values, indices = make(torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(err, match=match.format(name=name)):
        op(values, indices, 3)


def test_one_subspace_of_odd_width_is_valid():
    g, x = torch.ones(3, 3), torch.arange(9.0).reshape(3, 3)
    idx = torch.tensor([[1], [1], [0]])
    assert pqgan_kernels.pq_codebook_grad(g, idx, 2).tolist() == [[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]]
    counts, sums = pqgan_kernels.pq_ema_stats(x, idx, 2)
    assert counts.tolist() == [[1.0, 2.0]] and sums.tolist() == [[[6.0, 7.0, 8.0], [3.0, 5.0, 7.0]]]


def test_pq_ema_stats_wrapper_values_one_row():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    counts, sums = pqgan_kernels.pq_ema_stats(x, torch.tensor([[2, 0]]), 3)        # N = 1 is a batch too
    assert counts.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert sums.tolist() == [[[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]], [[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]]


def test_pq_lookup_wrapper_values_gradient_and_errors():
    cb = torch.arange(12.0).reshape(2, 3, 2).requires_grad_(True)
    idx = torch.tensor([[2, 0], [1, 1]])
    out = pqgan_kernels.pq_lookup(cb, idx)
    assert out.tolist() == [[4.0, 5.0, 6.0, 7.0], [2.0, 3.0, 8.0, 9.0]]
    out.sum().backward()
    assert cb.grad.sum(-1).tolist() == [[0.0, 2.0, 2.0], [2.0, 2.0, 0.0]]   # times chosen x d
    with pytest.raises(TypeError, match="codebooks must be float16, bfloat16, float32 or float64"):
        pqgan_kernels.pq_lookup(cb.detach().long(), idx)
    with pytest.raises(ValueError, match=r"codebooks must be \(S, K, d\), got shape \(2, 3\)"):
        pqgan_kernels.pq_lookup(cb.detach()[0, :, :].t(), idx)
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        pqgan_kernels.pq_lookup(cb.detach(), idx.float())
    with pytest.raises(ValueError, match=r"indices must be \(N, 2\), got shape \(2, 1\)"):
        pqgan_kernels.pq_lookup(cb.detach(), idx[:, :1])
    with pytest.raises(ValueError, match=r"indices must be \(N, 2\), got shape \(4,\)"):
        pqgan_kernels.pq_lookup(cb.detach(), idx.flatten())
    with pytest.raises(ValueError, match="outside"):
        pqgan_kernels.pq_lookup(cb.detach(), idx + 1)


def test_gradient_dtypes_follow_the_inputs():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    cb = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(2)).half().requires_grad_(True)
    q, _ = pqgan_kernels.pq_assign(x, cb, backend="reference")
    q.sum().backward()
    assert cb.grad.dtype == torch.float16
    g = torch.randn(10, 4, dtype=torch.float16, requires_grad=True)
    idx = torch.randint(0, 3, (10, 2))
    out = pqgan_kernels.pq_codebook_grad(g, idx, 3, backend="reference")
    assert out.dtype == torch.float32
    (out * torch.arange(12.0).reshape(2, 3, 2)).sum().backward()           # d/dg: the lookup of the weights
    assert g.grad.dtype == torch.float16
    assert torch.equal(g.grad.float(), reference.pq_lookup(torch.arange(12.0).reshape(2, 3, 2), idx))


def test_resolved_backend_defaults_and_inputs(monkeypatch):
    from pqgan_kernels import dispatch
    monkeypatch.setattr(dispatch, "_default", None)
    monkeypatch.delenv("PQGAN_BACKEND", raising=False)
    x = torch.zeros(2, 4)
    auto = "cpu" if "cpu" in pqgan_kernels.available_backends() else "reference"
    assert pqgan_kernels.resolved_backend(x) == auto
    assert pqgan_kernels.resolved_backend(x, backend="reference") == "reference"
    if "triton" in pqgan_kernels.available_backends():             # triton refuses float64 codebooks
        with pytest.raises(ValueError, match="float64 codebooks"):
            pqgan_kernels.resolved_backend(x, torch.zeros(2, 3, 2, dtype=torch.float64), "triton")
        with pytest.raises(ValueError, match="float64 codebooks"):
            pqgan_kernels.pq_assign(x, torch.zeros(2, 3, 2, dtype=torch.float64), backend="triton")
        with pytest.raises(ValueError, match="float64 codebooks"):
            pqgan_kernels.pq_ema_update(x, torch.zeros(2, 2, dtype=torch.long),
                                        torch.zeros(2, 3, 2, dtype=torch.float64),
                                        torch.ones(2, 3, dtype=torch.float64),
                                        torch.zeros(2, 3, 2, dtype=torch.float64), backend="triton")


def test_the_distance_reaches_the_backend_choice(monkeypatch):
    """A backend that refuses cosine is skipped by auto for cosine only (the wrapper passes the distance on)."""
    import dataclasses

    from pqgan_kernels import dispatch
    first = dispatch.auto_order(torch.device("cpu"), None, None)[0]
    if first not in pqgan_kernels.available_backends():
        pytest.skip(f"{first} unavailable")
    real = dispatch.get_backend(first)
    monkeypatch.setitem(dispatch._registry, first, dataclasses.replace(
        real, unsupported=lambda x, cb, distance: "no cosine" if distance == "cosine" else None))
    monkeypatch.setattr(dispatch, "_default", None)
    monkeypatch.delenv("PQGAN_BACKEND", raising=False)
    x, cb = random_case(6, 2, 2, 3)
    assert pqgan_kernels.resolved_backend(x, cb) == first
    assert dispatch.resolve_backend("auto", x, cb, "cosine") == "reference"
    with pytest.raises(ValueError, match="no cosine"):
        pqgan_kernels.pq_assign(x, cb, distance="cosine", backend=first)
