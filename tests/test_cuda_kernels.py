"""The CUDA kernels (backend "cuda", ops torch.ops.pqgan_native on CUDA tensors) against the oracle in reference.py.

Same tolerance rule as the CPU kernels (``kernel_checks.assert_assignment``); statistics use atomics, so they are
compared at fp32 summation tolerance (rtol 1e-5, atol 1e-5 * N), counts exactly. Skipped without a GPU.
"""
import pytest
import torch

import pqgan_kernels
from pqgan_kernels import reference
from kernel_checks import assert_assignment, random_case

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or pqgan_kernels.backend_info()["cuda"] != "available",
                                 reason="needs a GPU and the extension built with CUDA")]

# every d in {1,2,3,4,8,16,32,64} (+ run-time d 5, 12), S in {1,2,7,64}, K in {1,5,128,513}, N with tails
SHAPES = [(67, 7, 1, 513), (131, 64, 1, 5), (700, 64, 2, 128), (3, 2, 2, 513), (65, 7, 3, 128), (1030, 2, 4, 5),
          (37, 64, 4, 1), (67, 2, 8, 513), (61, 7, 8, 5), (266, 1, 16, 128), (5, 2, 16, 513), (67, 1, 32, 513),
          (129, 7, 32, 5), (33, 2, 64, 128), (64, 1, 64, 1), (1, 1, 5, 17), (90, 3, 12, 33), (50, 1, 16, 9000)]


@pytest.mark.parametrize("N,S,d,K", SHAPES)
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_assign(N, S, d, K, distance):
    x, cb = random_case(N, S, d, K, seed=N + S + d + K, device="cuda")
    q, idx = pqgan_kernels.pq_assign(x, cb, distance=distance, backend="cuda")
    assert_assignment(x, cb, q, idx, distance=distance)


@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (130, 2, 4, 5), (65, 3, 16, 128), (34, 2, 3, 33),
                                     (19, 1, 64, 40), (40, 2, 7, 20)])
def test_assign_exact_ties(N, S, d, K):
    x, cb = random_case(N, S, d, K, seed=7 * N + d, integer=True, device="cuda")
    cb[:, K - K // 2:] = cb[:, :K // 2].clone()
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cuda")
    assert_assignment(x, cb, q, idx, integer=True)
    _, idx_cpu = pqgan_kernels.pq_assign(x.cpu(), cb.cpu(), backend="cpu")
    assert torch.equal(idx.cpu(), idx_cpu)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (130, 2, 4, 5), (65, 3, 16, 128), (33, 2, 32, 17),
                                     (20, 2, 6, 10)])
def test_assign_dtypes(dtype, N, S, d, K):
    x, cb = random_case(N, S, d, K, dtype=dtype, seed=N * d, device="cuda")
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="cuda")
    assert_assignment(x, cb, q, idx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("N,S,d,K", [(67, 7, 2, 513), (1300, 2, 4, 5), (65, 1, 40, 12), (33, 64, 1, 3)])
def test_ema_stats_and_codebook_grad(dtype, index_dtype, N, S, d, K):
    x, _ = random_case(N, S, d, K, dtype=dtype, seed=N + 11, device="cuda")
    idx = torch.randint(0, K, (N, S), generator=torch.Generator().manual_seed(N)).to(index_dtype).cuda()
    counts, sums = pqgan_kernels.pq_ema_stats(x, idx, K, backend="cuda")
    ref_counts, ref_sums = reference.pq_ema_stats(x.cpu(), idx.long().cpu(), K)
    assert counts.dtype == ref_counts.dtype and sums.dtype == ref_sums.dtype
    assert torch.equal(counts.cpu(), ref_counts)
    torch.testing.assert_close(sums.cpu(), ref_sums, rtol=1e-5, atol=1e-5 * N)
    grad = pqgan_kernels.pq_codebook_grad(x, idx, K, backend="cuda")
    torch.testing.assert_close(grad.cpu(), reference.pq_codebook_grad(x.cpu(), idx.long().cpu(), K),
                               rtol=1e-5, atol=1e-5 * N)


def test_product_quantizer_training_step():
    from pqgan import ProductQuantizer
    torch.manual_seed(0)
    # eps = 0.1: far above the tolerance, so an update that ignored the smoothing would fail
    pq = ProductQuantizer(16, 8, 12, ema_decay=0.9, eps=0.1, backend="cuda").cuda()
    ref = ProductQuantizer(16, 8, 12, ema_decay=0.9, eps=0.1, backend="reference").cuda()
    ref.load_state_dict(pq.state_dict())
    z = torch.randn(2, 16, 5, 3, device="cuda")
    out, out_ref = pq.train()(z), ref.train()(z)
    assert torch.equal(out.indices, out_ref.indices)
    for a, b in zip(pq.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_opcheck_native_ops_cuda():
    ops = torch.ops.pqgan_native
    x, cb = random_case(21, 3, 2, 7, seed=2, device="cuda")
    idx = torch.randint(0, 7, (21, 3), device="cuda")
    torch.library.opcheck(ops.pq_assign.default, (x, cb, False))
    torch.library.opcheck(ops.pq_ema_stats.default, (x, idx, 7))
    torch.library.opcheck(ops.pq_codebook_grad.default, (x, idx, 7))
