"""The oracle itself, against an independent float64 brute force (a Python loop over subspaces and codes)."""
import itertools

import pytest
import torch

from pqgan_kernels import reference
from pqgan_kernels.ema_apply import pq_ema_apply_

from kernel_checks import pq_distances, random_case


def brute_force(x, cb, distance):
    N = x.shape[0]
    S, K, d = cb.shape
    idx = torch.zeros(N, S, dtype=torch.int64)
    for s in range(S):
        xs = x[:, s * d:(s + 1) * d].double()
        best = torch.full((N,), float("inf"), dtype=torch.float64)
        for k in range(K):
            c = cb[s, k].double()
            if distance == "l2":
                score = ((xs - c) ** 2).sum(1)
            else:
                score = -(xs @ c) / (xs.norm(dim=1).clamp_min(1e-12) * c.norm().clamp_min(1e-12))
            better = score < best  # strict: the first (lowest) index wins ties
            best = torch.where(better, score, best)
            idx[:, s] = torch.where(better, torch.full_like(idx[:, s], k), idx[:, s])
    return idx


@pytest.mark.parametrize("S,d,K", [(1, 16, 37), (4, 1, 5), (7, 2, 13), (3, 3, 64), (2, 4, 100), (5, 8, 9),
                                   (2, 16, 33), (1, 32, 17), (64, 2, 12)])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_oracle_matches_brute_force(S, d, K, distance):
    x, cb = random_case(23, S, d, K, dtype=torch.float64, seed=S * 100 + d * 10 + K)
    q, idx = reference.pq_assign(x, cb, distance)
    assert torch.equal(idx, brute_force(x, cb, distance))
    assert torch.equal(q, reference.pq_lookup(cb, idx))


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_ties_pick_lowest_index(distance):
    x, cb = random_case(50, 4, 2, 9, dtype=torch.float64, integer=True)
    cb[:, 6] = cb[:, 1]  # exact duplicate codewords: index 1 must win
    _, idx = reference.pq_assign(x, cb, distance)
    assert torch.equal(idx, brute_force(x, cb, distance))
    assert not (idx == 6).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_return_input_dtype(dtype):
    x, cb = random_case(31, 4, 4, 19, dtype=dtype)
    q, idx = reference.pq_assign(x, cb)
    assert q.dtype == dtype and idx.dtype == torch.int64
    assert torch.equal(idx, brute_force(x.float(), cb.float(), "l2"))


def test_codebook_grad_is_scatter_add():
    x, cb = random_case(40, 3, 2, 5, dtype=torch.float64)
    _, idx = reference.pq_assign(x, cb)
    g = torch.randn(40, 6, dtype=torch.float64)
    expected = torch.zeros(3, 5, 2, dtype=torch.float64)
    for n, s in itertools.product(range(40), range(3)):
        expected[s, idx[n, s]] += g[n, s * 2:(s + 1) * 2]
    assert torch.allclose(reference.pq_codebook_grad(g, idx, 5), expected, rtol=0, atol=1e-12)


# decay 0.75 tells decay and 1 - decay apart (0.5 cannot).
@pytest.mark.parametrize("decay,cluster_after,embed_after", [
    (0.5, [1.5, 1.0], [2.0, 6.0]),     # 0.5*[1, 1] + 0.5*[2, 1];   0.5*[0, 2] + 0.5*[4, 10]
    (0.75, [1.25, 1.0], [1.0, 4.0]),   # 0.75*[1, 1] + 0.25*[2, 1]; 0.75*[0, 2] + 0.25*[4, 10]
])
def test_ema_update_hand_computed(decay, cluster_after, embed_after):
    # S=1, K=2, d=1: rows 1.0 and 3.0 go to code 0, row 10.0 goes to code 1 (batch counts [2, 1], sums [4, 10]).
    # eps 0.1 makes the smoothing visible (codebooks move by > 0.05).
    x = torch.tensor([[1.0], [3.0], [10.0]], dtype=torch.float64)
    idx = torch.tensor([[0], [0], [1]])
    cb = torch.zeros(1, 2, 1, dtype=torch.float64)
    cluster = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    embed = torch.tensor([[[0.0], [2.0]]], dtype=torch.float64)
    eps = 0.1
    reference.pq_ema_update(x, idx, cb, cluster, embed, decay, eps)
    assert cluster.flatten().tolist() == cluster_after   # exact: every term is a short binary fraction
    assert embed.flatten().tolist() == embed_after
    n = sum(cluster_after)
    smoothed = [(c + eps) / (n + 2 * eps) * n for c in cluster_after]   # decay 0.75: 1.2398, 1.0102
    expected = [e / s for e, s in zip(embed_after, smoothed)]           # decay 0.75: 0.8066, 3.9596 (unsmoothed 0.8, 4)
    assert cb.flatten().tolist() == pytest.approx(expected, rel=1e-12, abs=0)


def test_ema_apply_keeps_unused_codes_decaying():
    # A code with no assignment keeps embed_sum / cluster_size, both shrunk by the same decay (codeword unchanged
    # up to the smoothing), and the counts of other subspaces do not leak into it.
    cb = torch.zeros(2, 2, 1, dtype=torch.float64)
    cluster = torch.tensor([[2.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    embed = torch.tensor([[[2.0], [4.0]], [[6.0], [8.0]]], dtype=torch.float64)
    counts = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    sums = torch.tensor([[[8.0], [0.0]], [[0.0], [0.0]]], dtype=torch.float64)
    pq_ema_apply_(cb, cluster, embed, counts, sums, 0.9, 1e-3)
    assert cluster.flatten().tolist() == pytest.approx([2.2, 1.8, 1.8, 1.8], abs=1e-15)
    assert embed.flatten().tolist() == pytest.approx([2.6, 3.6, 5.4, 7.2], abs=1e-15)
    n0, n1 = 4.0, 3.6
    s = [(2.2 + 1e-3) / (n0 + 2e-3) * n0, (1.8 + 1e-3) / (n0 + 2e-3) * n0, (1.8 + 1e-3) / (n1 + 2e-3) * n1]
    assert cb.flatten().tolist() == pytest.approx([2.6 / s[0], 3.6 / s[1], 5.4 / s[2], 7.2 / s[2]], rel=1e-12)


def test_ema_stats_counts_and_sums():
    x, cb = random_case(64, 4, 3, 7, dtype=torch.float64)
    _, idx = reference.pq_assign(x, cb)
    counts, sums = reference.pq_ema_stats(x, idx, 7)
    for s in range(4):
        for k in range(7):
            mask = idx[:, s] == k
            assert counts[s, k] == mask.sum()
            assert torch.allclose(sums[s, k], x[mask, s * 3:(s + 1) * 3].sum(0))


# --- precision, dtypes and devices (the oracle's promises in its module docstring) ------------------------------

@pytest.mark.parametrize("dtypes,expected", [((torch.float32,), torch.float32), ((torch.float16, torch.bfloat16),
                                                                                  torch.float32),
                                             ((torch.float32, torch.float64), torch.float64),
                                             ((torch.float64, torch.float16), torch.float64)])
def test_compute_dtype(dtypes, expected):
    assert reference.compute_dtype(*[torch.zeros(1, dtype=t) for t in dtypes]) == expected


def test_mixed_precision_is_computed_in_float64():
    # x = 0.5 (fp32) between codewords 0 and 1 - 1e-12 (fp64): code 1 is nearer in fp64; in fp32 the codeword
    # rounds to 1.0 and the tie would go to code 0.
    x = torch.tensor([[0.5]], dtype=torch.float32)
    cb = torch.tensor([[[0.0], [1.0 - 1e-12]]], dtype=torch.float64)
    q, idx = reference.pq_assign(x, cb)
    assert idx.item() == 1 and q.dtype == torch.float32
    # the other way round: x = 0.5 + 1e-12 (fp64) would round to 0.5 in fp32 (a tie -> code 0)
    q, idx = reference.pq_assign(torch.tensor([[0.5 + 1e-12]], dtype=torch.float64),
                                 torch.tensor([[[0.0], [1.0]]], dtype=torch.float32))
    assert idx.item() == 1 and q.dtype == torch.float64 and q.item() == 1.0


def test_half_precision_inputs_are_upcast_before_the_distances():
    # squared distances 90000 and 67600 overflow float16 (max 65504): computed in fp16 both would be inf (a tie
    # -> code 0); in fp32, code 1 is nearer.
    x = torch.zeros(1, 1, dtype=torch.float16)
    cb = torch.tensor([[[300.0], [260.0]]], dtype=torch.float16)
    q, idx = reference.pq_assign(x, cb)
    assert idx.item() == 1 and q.dtype == torch.float16 and q.item() == 260.0
    g = torch.tensor([[60000.0], [60000.0]], dtype=torch.float16)      # sum 120000 overflows fp16, not fp32
    grad = reference.pq_codebook_grad(g, torch.tensor([[1], [1]]), 2)
    assert grad.dtype == torch.float32 and grad.flatten().tolist() == [0.0, 120000.0]
    counts, sums = reference.pq_ema_stats(g, torch.tensor([[1], [1]]), 2)
    assert counts.dtype == sums.dtype == torch.float32 and sums.flatten().tolist() == [0.0, 120000.0]
    counts, sums = reference.pq_ema_stats(g.double(), torch.tensor([[1], [1]]), 2)
    assert counts.dtype == sums.dtype == torch.float64 and counts.tolist() == [[0.0, 2.0]]


def test_bad_distance_is_named():
    with pytest.raises(ValueError, match=r"distance must be one of \('l2', 'cosine'\), got 'l1'"):
        reference.pq_assign(torch.zeros(1, 2), torch.zeros(1, 3, 2), "l1")


def test_every_function_stays_on_the_input_device():
    """meta tensors: no CPU tensor may be created on the way (each would raise or land on the wrong device)."""
    x = torch.empty(6, 4, device="meta")
    cb = torch.empty(2, 3, 2, device="meta")
    idx = torch.zeros(6, 2, dtype=torch.long, device="meta")
    q, i = reference.pq_assign(x, cb)
    assert q.device.type == i.device.type == "meta" and q.shape == (6, 4) and i.shape == (6, 2)
    assert reference.pq_lookup(cb, idx).device.type == "meta"
    assert reference.pq_codebook_grad(x, idx, 3).device.type == "meta"
    counts, sums = reference.pq_ema_stats(x, idx, 3)
    assert counts.device.type == sums.device.type == "meta" and sums.shape == (2, 3, 2)


def test_pq_distances_by_hand():
    x = torch.tensor([[3.0, 4.0, 1.0, 0.0]])
    cb = torch.tensor([[[0.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [1.0, 1.0]]])
    idx = torch.tensor([[1, 0]])
    l2 = pq_distances(x, cb, idx)                         # |(3,4)-(3,0)|^2 = 16, |(1,0)-(0,2)|^2 = 5
    assert l2.dtype == torch.float64 and l2.tolist() == [[16.0, 5.0]]
    cos = pq_distances(x, cb, idx, "cosine")              # 1 - 3/5 = 0.4, 1 - 0 = 1
    assert cos.flatten().tolist() == pytest.approx([0.4, 1.0], abs=1e-15)
    idx = torch.tensor([[1, 1]])
    cos = pq_distances(x, cb, idx, "cosine")              # (1,0).(1,1)/sqrt2 -> 1 - 1/sqrt2
    assert cos.flatten().tolist() == pytest.approx([0.4, 1 - 2 ** -0.5], abs=1e-15)
