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
