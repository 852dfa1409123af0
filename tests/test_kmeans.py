"""k-means++ seeding and Lloyd iterations (pqgan/kmeans.py) against what their docstrings promise, with answers
worked out by hand: seeds are input points drawn with probability proportional to the squared distance to the
nearest seed so far (uniform when all are zero), every subspace on its own; Lloyd moves codewords to their
clusters' means and leaves empty clusters where they were."""
import pytest
import torch

from pqgan.kmeans import kmeans, kmeans_pp_seed


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_seeds_are_points_of_their_own_subspace():
    # subspace 0: three 0s and a 10; subspace 1: three 5s and a -7. With K=2 the second seed of each subspace is
    # forced (the only point at non-zero distance) or, from the lone point, one of the three equal ones.
    xs = torch.tensor([[0.0, 0.0, 0.0, 10.0], [5.0, 5.0, 5.0, -7.0]]).unsqueeze(-1)    # (S=2, N=4, d=1)
    for seed in range(20):
        seeds = kmeans_pp_seed(xs, 2, _gen(seed))
        assert seeds.shape == (2, 2, 1)
        assert sorted(seeds[0, :, 0].tolist()) == [0.0, 10.0]
        assert sorted(seeds[1, :, 0].tolist()) == [-7.0, 5.0]


def test_seed_probabilities_are_proportional_to_squared_distance():
    """Points 0, 1, 3 in 20000 identical subspaces (independent draws): first seed uniform; second seed given the
    first: from 0 -> 1 w.p. 1/10, 3 w.p. 9/10; from 1 -> 0 w.p. 1/5, 3 w.p. 4/5; from 3 -> 0 w.p. 9/13."""
    S = 20000
    xs = torch.tensor([0.0, 1.0, 3.0]).view(1, 3, 1).expand(S, 3, 1).contiguous()
    seeds = kmeans_pp_seed(xs, 2, _gen(0))[..., 0]                                    # (S, 2)
    first, second = seeds[:, 0], seeds[:, 1]
    for v in (0.0, 1.0, 3.0):
        assert (first == v).double().mean().item() == pytest.approx(1 / 3, abs=0.015)
    expected = {(0.0, 1.0): 1 / 10, (1.0, 0.0): 1 / 5, (3.0, 0.0): 9 / 13}
    for (a, b), p in expected.items():
        given = second[first == a]
        assert not (given == a).any()                                                  # never the same point
        assert (given == b).double().mean().item() == pytest.approx(p, abs=0.02)


def test_seeding_falls_back_to_uniform_when_all_distances_are_zero():
    xs = torch.full((1, 5, 2), 3.0)                                                    # N identical points
    assert torch.equal(kmeans_pp_seed(xs, 4, _gen(0)), torch.full((1, 4, 2), 3.0))
    xs = torch.tensor([[[1.0], [2.0]]])                                                # N = 2 < K = 4
    seeds = kmeans_pp_seed(xs, 4, _gen(1))[0, :, 0].tolist()
    assert set(seeds) == {1.0, 2.0}


def test_lloyd_converges_to_the_cluster_means():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    for seed in range(10):                                           # whatever the seeding, two steps suffice
        cb = kmeans(x, 1, 2, generator=_gen(seed))
        assert cb.shape == (1, 2, 1) and cb.dtype == torch.float32
        assert sorted(cb.flatten().tolist()) == [0.5, 10.5]


def test_every_subspace_is_clustered_on_its_own_columns():
    # columns 0-1 (subspace 0) hold two clusters around (0, 0) / (4, 4); columns 2-3 around (-9, 1) / (9, 1).
    x = torch.tensor([[0.0, 0.0, -9.0, 1.0], [0.0, 2.0, -9.0, 1.0], [4.0, 4.0, 9.0, 1.0], [4.0, 6.0, 9.0, 3.0]])
    cb = kmeans(x, 2, 2, generator=_gen(0), backend="reference")
    got0 = sorted(map(tuple, cb[0].tolist()))
    got1 = sorted(map(tuple, cb[1].tolist()))
    assert got0 == [(0.0, 1.0), (4.0, 5.0)] and got1 == [(-9.0, 1.0), (9.0, 2.0)]


def test_empty_clusters_keep_their_previous_centre():
    # 5, 5, 10 with K = 3: the third seed duplicates a point (all distances zero); the duplicate's cluster is empty
    # (ties go to the lower index) and must stay at that point, not move to 0 or NaN.
    x = torch.tensor([[5.0], [5.0], [10.0]])
    for seed in range(6):
        cb = sorted(kmeans(x, 1, 3, generator=_gen(seed)).flatten().tolist())
        assert cb in ([5.0, 5.0, 10.0], [5.0, 10.0, 10.0])


def test_iters_zero_returns_the_seeds_and_fp64_stays_fp64():
    x = torch.randn(50, 6, dtype=torch.float64, generator=_gen(3))
    cb = kmeans(x, 3, 4, iters=0, generator=_gen(4))
    seeds = kmeans_pp_seed(x.reshape(50, 3, 2).transpose(0, 1).contiguous(), 4, _gen(4))
    assert cb.dtype == torch.float64 and torch.equal(cb, seeds)
    assert kmeans(x.half(), 3, 4, iters=1, generator=_gen(4)).dtype == torch.float32


def test_the_generator_alone_decides_the_result():
    x = torch.randn(64, 4, generator=_gen(5))
    a = kmeans(x, 2, 5, generator=_gen(6))
    torch.manual_seed(123)                                      # the global RNG must not matter
    b = kmeans(x, 2, 5, generator=_gen(6))
    assert torch.equal(a, b)
    torch.manual_seed(7)
    c = kmeans(x, 2, 5)                                         # without a generator: the global RNG
    torch.manual_seed(7)
    assert torch.equal(c, kmeans(x, 2, 5))


def test_more_iterations_never_increase_the_within_cluster_error():
    x = torch.randn(200, 2, generator=_gen(8))

    def sse(cb):
        return (x[:, None, :] - cb[0][None]).square().sum(-1).min(1).values.sum().item()
    errors = [sse(kmeans(x, 1, 6, iters=i, generator=_gen(9))) for i in (0, 1, 3, 10)]
    assert all(b <= a + 1e-4 for a, b in zip(errors, errors[1:])) and errors[-1] < 0.8 * errors[0]


def test_seeding_as_many_codes_as_distinct_points_takes_each_point_once():
    # after every point is a seed all distances are zero; before that, a point already chosen has distance 0 and
    # can never be drawn again
    xs = torch.tensor([0.0, 1.0, 3.0, 7.0]).view(1, 4, 1).expand(500, 4, 1).contiguous()
    seeds = kmeans_pp_seed(xs, 4, _gen(2))[..., 0]
    assert torch.equal(seeds.sort(1).values, torch.tensor([0.0, 1.0, 3.0, 7.0]).expand(500, 4))


def test_zero_distances_in_one_subspace_only():
    # subspace 0: identical points (all distances zero -> uniform fallback); subspace 1: distinct points
    xs = torch.stack([torch.full((5, 1), 2.0), torch.arange(5.0).view(5, 1)])
    seeds = kmeans_pp_seed(xs, 3, _gen(3))
    assert torch.equal(seeds[0], torch.full((3, 1), 2.0)) and len(set(seeds[1, :, 0].tolist())) == 3


def test_lloyd_ends_at_a_fixed_point():
    """Converged k-means: every non-empty cluster's codeword is the mean of its members (singletons included)."""
    x = torch.randn(20, 1, generator=_gen(11))
    cb = kmeans(x, 1, 8, iters=50, generator=_gen(12))
    idx = (x - cb[0].T).abs().argmin(1)
    sizes = torch.bincount(idx, minlength=8)
    assert (sizes == 1).any(), "the case needs a singleton cluster"
    for k in range(8):
        if sizes[k] > 0:
            assert cb[0, k, 0].item() == pytest.approx(x[idx == k, 0].mean().item(), abs=1e-6)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_backend_and_distance_are_passed_to_every_kernel_call(distance, monkeypatch):
    import dataclasses

    import pqgan_kernels
    from pqgan_kernels import dispatch
    calls = []
    for name in pqgan_kernels.available_backends():
        real = dispatch.get_backend(name)

        def assign(x, cb, dist, _name=name, _real=real):
            calls.append((_name, "assign", dist))
            return _real.assign(x, cb, dist)

        def stats(x, idx, k, _name=name, _real=real):
            calls.append((_name, "stats", None))
            return _real.ema_stats(x, idx, k)
        monkeypatch.setitem(dispatch._registry, name, dataclasses.replace(real, assign=assign, ema_stats=stats))
    kmeans(torch.randn(30, 4, generator=_gen(13)), 2, 3, iters=2, distance=distance, backend="reference",
           generator=_gen(14))
    assert calls == [("reference", "assign", distance), ("reference", "stats", None)] * 2


def test_a_cluster_left_with_one_member_moves_onto_it():
    """Points 0, 1, 5 and K = 2. From the seeds {0, 1} Lloyd goes through clusters {0}, {1, 5} (centres 0, 3) and
    then {0, 1}, {5}: the second centre must move from 3 onto its single member 5. 300 subspaces draw their seeds
    independently, so some start from {0, 1}; every one must end at {0.5, 5}."""
    S = 300
    x = torch.tensor([0.0, 1.0, 5.0]).view(3, 1).expand(3, S).contiguous()
    seeds = kmeans_pp_seed(x.T.unsqueeze(-1).contiguous(), 2, _gen(15))[..., 0]
    assert (seeds.sort(1).values == torch.tensor([0.0, 1.0])).all(1).any()
    cb = kmeans(x, S, 2, generator=_gen(15))[..., 0].sort(1).values
    assert torch.equal(cb, torch.tensor([0.5, 5.0]).expand(S, 2))
