"""The ProductQuantizer layer (reference backend semantics, whatever backend "auto" picks)."""
import pytest
import torch

import pqgan_kernels
from pqgan import ProductQuantizer
from pqgan_kernels import reference


@pytest.mark.parametrize("dim,S,K", [(32, 1, 16), (16, 16, 7), (128, 64, 32), (24, 8, 5), (12, 3, 1)])
def test_forward_shapes_and_nearest_codes(dim, S, K):
    pq = ProductQuantizer(dim, S, K)
    z = torch.randn(2, dim, 3, 5)
    out = pq.eval()(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 3, 5, S)
    assert out.indices.dtype == torch.int64
    rows = z.movedim(1, -1).reshape(-1, dim)
    q, idx = reference.pq_assign(rows, pq.codebooks)
    assert torch.equal(out.indices.reshape(-1, S), idx)
    assert torch.equal(out.quantized.movedim(1, -1).reshape(-1, dim), q)
    assert out.loss.dim() == 0 and out.stats.perplexity.shape == (S,)


def test_channel_last_and_any_leading_shape():
    pq = ProductQuantizer(8, 4, 6, channel_last=True).eval()
    z = torch.randn(3, 2, 5, 8)
    out = pq(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (3, 2, 5, 4)
    assert torch.equal(pq.decode(out.indices), out.quantized.detach())


def test_straight_through_gradient_is_identity():
    pq = ProductQuantizer(8, 4, 6)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    g = torch.randn_like(z)
    (pq(z).quantized * g).sum().backward()
    assert torch.equal(z.grad, g)


def _rows(z):
    """(B, D, H, W) -> (N, D) in the layer's row order."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _hand_codebook_grad(rows, q, idx, S, K, d, weight):
    """d/d codebooks of weight * mean((q - sg(rows))^2), by a loop over rows and subspaces."""
    grad = torch.zeros(S, K, d, dtype=torch.float64)
    scale = 2.0 * weight / rows.numel()
    for n in range(rows.shape[0]):
        for s in range(S):
            grad[s, idx[n, s]] += scale * (q[n, s * d:(s + 1) * d] - rows[n, s * d:(s + 1) * d]).double()
    return grad


def test_gradient_mode_loss_terms_and_gradients():
    """Codebooks trained by gradient: loss = c_w ||z - sg(q)||^2 + b_w ||sg(z) - q||^2 (means); the commitment
    term alone reaches z (on top of the straight-through path), the codebook term alone reaches the codebooks."""
    S, K, d = 4, 6, 2
    pq = ProductQuantizer(S * d, S, K, ema_decay=None, commitment_weight=0.3, codebook_weight=0.7)
    assert isinstance(pq.codebooks, torch.nn.Parameter) and not hasattr(pq, "embed_sum")
    z = torch.randn(2, S * d, 3, 3, requires_grad=True)
    out = pq(z)
    rows = _rows(z.detach())
    q, idx = reference.pq_assign(rows, pq.codebooks.detach())
    mse = (rows - q).square().mean()
    torch.testing.assert_close(out.loss, (0.3 + 0.7) * mse, rtol=1e-6, atol=0)
    out.loss.backward()
    expected_z = (0.3 * 2.0 * (rows - q) / rows.numel()).reshape(2, 3, 3, S * d).movedim(-1, 1)
    torch.testing.assert_close(z.grad, expected_z, rtol=1e-5, atol=1e-9)
    expected_cb = _hand_codebook_grad(rows, q, idx, S, K, d, 0.7)
    torch.testing.assert_close(pq.codebooks.grad.double(), expected_cb, rtol=1e-5, atol=1e-9)
    assert pq.codebooks.grad.abs().sum() > 0


def test_ema_mode_loss_is_the_commitment_term_only():
    S, K, d = 2, 5, 4
    pq = ProductQuantizer(S * d, S, K, ema_decay=0.9, commitment_weight=0.3, codebook_weight=0.7).eval()
    assert not isinstance(pq.codebooks, torch.nn.Parameter) and not pq.codebooks.requires_grad
    z = torch.randn(3, S * d, 2, 2, requires_grad=True)
    out = pq(z)
    rows = _rows(z.detach())
    q, _ = reference.pq_assign(rows, pq.codebooks)
    torch.testing.assert_close(out.loss, 0.3 * (rows - q).square().mean(), rtol=1e-6, atol=0)
    assert out.loss.grad_fn is not None
    out.loss.backward()
    expected_z = (0.3 * 2.0 * (rows - q) / rows.numel()).reshape(3, 2, 2, S * d).movedim(-1, 1)
    torch.testing.assert_close(z.grad, expected_z, rtol=1e-5, atol=1e-9)


def _hand_ema(rows, idx, codebooks, cluster_size, embed_sum, decay, eps):
    """The Laplace-smoothed EMA step written out with loops (float64)."""
    S, K, d = codebooks.shape
    counts = torch.zeros(S, K, dtype=torch.float64)
    sums = torch.zeros(S, K, d, dtype=torch.float64)
    for n in range(rows.shape[0]):
        for s in range(S):
            counts[s, idx[n, s]] += 1
            sums[s, idx[n, s]] += rows[n, s * d:(s + 1) * d].double()
    cs = decay * cluster_size.double() + (1 - decay) * counts
    es = decay * embed_sum.double() + (1 - decay) * sums
    n = cs.sum(-1, keepdim=True)
    smoothed = (cs + eps) / (n + K * eps) * n
    return es / smoothed.unsqueeze(-1), cs, es


def test_ema_mode_updates_only_in_training_and_matches_the_formula():
    S, K, d = 2, 5, 4
    pq = ProductQuantizer(S * d, S, K, ema_decay=0.8, eps=0.05)
    z = torch.randn(4, S * d, 2, 2)
    before = [t.clone() for t in (pq.codebooks, pq.cluster_size, pq.embed_sum)]
    pq.eval()(z)
    assert all(torch.equal(a, b) for a, b in zip(before, (pq.codebooks, pq.cluster_size, pq.embed_sum)))
    out = pq.train()(z)
    rows = _rows(z)
    _, idx = reference.pq_assign(rows, before[0])
    assert torch.equal(out.indices.reshape(-1, S), idx)        # assigned with the codebooks before the update
    cb, cs, es = _hand_ema(rows, idx, *before, decay=0.8, eps=0.05)
    torch.testing.assert_close(pq.cluster_size.double(), cs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pq.embed_sum.double(), es, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pq.codebooks.double(), cb, rtol=1e-5, atol=1e-6)


def test_gradient_mode_tracks_usage_with_decay_099():
    S, K = 3, 4
    pq = ProductQuantizer(S, S, K, ema_decay=None)
    with torch.no_grad():
        pq.codebooks.copy_(torch.tensor([0.0, 10.0, 20.0, 30.0]).view(1, K, 1).expand(S, K, 1))
    z = torch.tensor([[0.1, 9.0, 31.0], [0.2, 11.0, 29.0], [19.0, 1.0, 30.5]]).view(3, S, 1, 1)
    pq.train()(z)
    counts = torch.tensor([[2.0, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 3]])
    torch.testing.assert_close(pq.cluster_size, 0.99 * torch.ones(S, K) + 0.01 * counts, rtol=0, atol=1e-7)


def test_scalar_quantisation_d1_and_plain_vq():
    sq = ProductQuantizer(6, 6, 9)
    vq = ProductQuantizer(6, 1, 9)
    z = torch.randn(2, 6, 4, 4)
    assert sq(z).indices.shape == (2, 4, 4, 6) and sq.subspace_dim == 1
    assert vq(z).indices.shape == (2, 4, 4, 1) and vq.subspace_dim == 6


def _clustered_batch(num_clusters, dim, per_cluster, spread, seed):
    """Tight well-separated clusters: centres (C, dim) on a grid 10 apart, points (C*per_cluster, dim) shuffled."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.stack([torch.arange(num_clusters, dtype=torch.float32) * 10.0 + 3.0 * j
                           for j in range(dim)], 1)
    points = centres.repeat_interleave(per_cluster, 0) + spread * torch.randn(num_clusters * per_cluster, dim,
                                                                            generator=g)
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    perm = torch.randperm(len(points), generator=g)
    return points[perm], labels[perm]


@pytest.mark.parametrize("ema", [0.99, None])
def test_kmeans_init_puts_the_codewords_on_the_cluster_means_of_the_first_batch(ema):
    """kmeans_init: on the first training batch only, each subspace's codebook becomes the k-means solution of
    that batch's sub-vectors, here the means of K well-separated clusters (computed independently below)."""
    K, S, d = 6, 2, 3
    sub = [_clustered_batch(K, d, 20, 0.05, seed=s) for s in range(S)]
    rows = torch.cat([p for p, _ in sub], 1)                            # (120, S*d)
    z = rows.reshape(8, 15, S * d).movedim(-1, 1).reshape(8, S * d, 15, 1)
    pq = ProductQuantizer(S * d, S, K, ema_decay=ema, kmeans_init=True)
    assert not bool(pq.initted)
    pq.eval()(z)
    assert not bool(pq.initted)                                          # evaluation never initialises
    out = pq.train()(z)
    assert bool(pq.initted)
    for s, (points, labels) in enumerate(sub):
        means = torch.stack([points[labels == c].mean(0) for c in range(K)])          # (K, d)
        got = pq.codebooks[s].detach()
        order = torch.cdist(means, got).argmin(1)
        assert sorted(order.tolist()) == list(range(K))                  # one codeword per cluster
        if ema is None:                                                  # (EMA mode then moves them a little)
            torch.testing.assert_close(got[order], means, rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(got[order], means, rtol=0, atol=1e-3)
    # residual of the fit: commitment * within-cluster variance (spread 0.05 -> 0.0025 per coordinate)
    assert out.loss.item() == pytest.approx(0.25 * 0.0025 if ema else 1.25 * 0.0025, rel=0.3)
    if ema is not None:                                                 # the EMA state matches the new codewords
        torch.testing.assert_close(pq.embed_sum / pq.cluster_size.unsqueeze(-1), pq.codebooks, rtol=1e-3,
                                   atol=1e-3)
    control = ProductQuantizer(S * d, S, K, ema_decay=ema, kmeans_init=False)
    control.load_state_dict({k: v for k, v in pq.state_dict().items() if k != "initted"}, strict=False)
    z2 = z * 3.0                                                         # a second batch: no re-initialisation
    pq.train()(z2)
    control.train()(z2)
    torch.testing.assert_close(pq.codebooks, control.codebooks, rtol=0, atol=0)


def test_kmeans_init_then_forward_uses_the_new_codebooks():
    K = 4
    points, _ = _clustered_batch(K, 2, 8, 0.01, seed=3)
    pq = ProductQuantizer(2, 1, K, ema_decay=None, kmeans_init=True, channel_last=True)
    out = pq.train()(points)
    q, idx = reference.pq_assign(points, pq.codebooks.detach())
    assert torch.equal(out.indices.reshape(-1, 1), idx) and torch.equal(out.quantized.detach(), q)


def _dead_code_layer(ema, threshold=2.0):
    """S=2, d=2, K=8 with codes 4..7 of both codebooks 100 away from every input: they are never chosen."""
    pq = ProductQuantizer(4, 2, 8, ema_decay=ema, dead_code_threshold=threshold)
    with torch.no_grad():
        pq.codebooks[:, 4:] += 100.0
        if ema is not None:
            pq.embed_sum.copy_(pq.codebooks * pq.cluster_size.unsqueeze(-1))
    return pq


def _hand_counts(idx, S, K):
    counts = torch.zeros(S, K)
    for n in range(idx.shape[0]):
        for s in range(S):
            counts[s, idx[n, s]] += 1
    return counts


@pytest.mark.parametrize("ema", [0.5, None])
def test_dead_codes_are_reseeded_from_current_inputs(ema):
    """After the first step the running usage is this batch's counts; codes used fewer than `threshold` times
    become sub-vectors of the current batch, with running usage reset to the threshold (raw cluster_size
    thr * (1 - decay) + decay after one step; embed_sum = codeword * cluster_size); every other code is left as a
    control layer without re-seeding leaves it."""
    decay = 0.99 if ema is None else ema
    pq = _dead_code_layer(ema)
    control = _dead_code_layer(ema, threshold=0.0)
    control.load_state_dict(pq.state_dict())
    z = torch.randn(4, 4, 2, 2)                                           # 16 rows
    rows = _rows(z)
    _, idx = reference.pq_assign(rows, pq.codebooks.detach())
    dead = _hand_counts(idx, 2, 8) < 2.0
    assert dead[:, 4:].all() and not dead.all(), "the far codes (and only some others) must be dead"
    pq.train()(z)
    control.train()(z)
    restart = 2.0 * (1 - decay) + decay
    for s in range(2):
        subvectors = rows[:, 2 * s:2 * s + 2]
        for k in range(8):
            code = pq.codebooks[s, k].detach()
            if dead[s, k]:
                assert (subvectors == code).all(1).any(), f"code {s},{k} is not a sub-vector of the batch"
                assert float(pq.cluster_size[s, k]) == pytest.approx(restart, rel=1e-6)
                if ema is not None:
                    torch.testing.assert_close(pq.embed_sum[s, k], code * restart)
            else:
                assert torch.equal(code, control.codebooks[s, k].detach())
                assert pq.cluster_size[s, k] == control.cluster_size[s, k]
                if ema is not None:
                    assert torch.equal(pq.embed_sum[s, k], control.embed_sum[s, k])
    torch.testing.assert_close(pq.running_usage()[dead], torch.full((int(dead.sum()),), 2.0))


@pytest.mark.parametrize("ema", [0.8, None])
def test_running_usage_is_the_bias_corrected_count_average(ema):
    """running_usage(): cluster_size itself before training; the batch counts after one step; after two steps
    the decay-weighted mean (decay c1 + c2) / (1 + decay) of the two batches' counts."""
    decay = 0.99 if ema is None else ema
    S, K = 1, 4
    pq = ProductQuantizer(1, S, K, ema_decay=ema, channel_last=True)
    with torch.no_grad():
        pq.codebooks.copy_(torch.tensor([0.0, 10.0, 20.0, 30.0]).view(1, K, 1))
        if ema is not None:
            pq.embed_sum.copy_(pq.codebooks)
    assert torch.equal(pq.running_usage(), torch.ones(S, K))
    b1 = torch.tensor([[0.0], [0.5], [10.0], [30.0]])                      # counts 2, 1, 0, 1
    b2 = torch.tensor([[10.0], [10.5], [9.5], [20.0]])                     # counts 0, 3, 1, 0
    pq.train()(b1)
    torch.testing.assert_close(pq.running_usage(), torch.tensor([[2.0, 1.0, 0.0, 1.0]]), rtol=0, atol=1e-5)
    pq.train()(b2)
    c1, c2 = torch.tensor([2.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 3.0, 1.0, 0.0])
    torch.testing.assert_close(pq.running_usage()[0], (decay * c1 + c2) / (1 + decay), rtol=0, atol=1e-4)


def test_dead_codes_draw_from_the_whole_batch():
    """The re-seeded codes of one step are spread over the batch's rows (not all one row)."""
    pq = ProductQuantizer(2, 1, 64, ema_decay=0.5, dead_code_threshold=1.0)
    with torch.no_grad():
        pq.codebooks[:, 1:] += 1000.0
        pq.embed_sum.copy_(pq.codebooks)
    z = torch.arange(32, dtype=torch.float32).view(32, 1, 1).repeat(1, 2, 1).unsqueeze(-1) * 0.01
    pq.train()(z)
    picked = pq.codebooks[0, 1:, 0]
    assert picked.abs().max() < 1.0 and len(set(picked.tolist())) > 16


def test_no_reseeding_when_threshold_is_zero():
    pq = _dead_code_layer(0.5, threshold=0.0)
    z = torch.randn(4, 4, 2, 2)
    for _ in range(3):
        pq.train()(z)
    assert pq.codebooks[:, 4:].min() > 50


def test_stats_by_hand():
    """perplexity / usage from this batch's histogram; dead_codes from the EMA usage (below threshold, or 1e-3)."""
    S, K = 2, 4
    pq = ProductQuantizer(S, S, K, ema_decay=0.5, dead_code_threshold=0.0, channel_last=True)
    with torch.no_grad():
        pq.codebooks.copy_(torch.tensor([0.0, 10.0, 20.0, 30.0]).view(1, K, 1).expand(S, K, 1))
        pq.cluster_size.copy_(torch.tensor([[1.0, 5e-4, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    z = torch.tensor([[0.0, 10.0], [10.0, 10.0], [20.0, 10.0], [30.0, 10.0]])   # subspace 0: all 4 codes; 1: one
    stats = pq.eval()(z).stats
    torch.testing.assert_close(stats.usage, torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(stats.perplexity, torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(stats.dead_codes, torch.tensor([2.0, 0.0]))   # 5e-4 and 0 are below 1e-3
    z2 = torch.tensor([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0], [10.0, 30.0]])  # two codes, 2:2 and 1:2:1
    stats = pq.eval()(z2).stats
    p = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(stats.perplexity, torch.tensor([2.0, float(torch.exp(-(p * p.log()).sum()))]))
    torch.testing.assert_close(stats.usage, torch.tensor([0.5, 0.75]))
    pq.dead_code_threshold = 0.75                                              # reported against the threshold
    torch.testing.assert_close(pq.eval()(z2).stats.dead_codes, torch.tensor([2.0, 4.0]))


def test_cosine_distance_picks_the_direction_and_returns_the_raw_codeword():
    pq = ProductQuantizer(2, 1, 2, distance="cosine", channel_last=True).eval()
    with torch.no_grad():
        pq.codebooks.copy_(torch.tensor([[[1.0, 0.0], [10.0, 10.0]]]))
    z = torch.tensor([[1.0, 0.9], [1.0, -0.1]])
    out = pq(z)
    assert out.indices.flatten().tolist() == [1, 0]                             # l2 would pick code 0 for both
    assert torch.equal(out.quantized, torch.tensor([[10.0, 10.0], [1.0, 0.0]]))
    l2 = ProductQuantizer(2, 1, 2, channel_last=True).eval()
    l2.load_state_dict(pq.state_dict())
    assert l2(z).indices.flatten().tolist() == [0, 0]


def test_encode_decode_pack_round_trip():
    pq = ProductQuantizer(128, 64, 512).eval()
    z = torch.randn(2, 128, 4, 4)
    idx = pq.encode(z)
    assert torch.equal(idx, pq(z).indices)
    packed = pq.pack(idx)
    assert packed.shape == (2, 4, 4, 64 * 9 // 8)
    assert torch.equal(pq.unpack(packed), idx)
    assert torch.equal(pq.decode(pq.unpack(packed)), pq(z).quantized)


@pytest.mark.parametrize("z,err,match", [
    (torch.randn(2, 7, 3, 3), ValueError, "channels"),
    (torch.randint(0, 3, (2, 8, 3, 3)), TypeError, "float"),
    (torch.randn(0, 8, 3, 3), ValueError, "empty batch"),
    (torch.full((2, 8, 3, 3), float("nan")), ValueError, "NaN"),
    (torch.randn(8), ValueError, "shape"),
])
def test_bad_input(z, err, match):
    with pytest.raises(err, match=match):
        ProductQuantizer(8, 4, 6)(z)


def test_bad_construction_and_decode():
    with pytest.raises(ValueError, match="divisible"):
        ProductQuantizer(10, 4, 6)
    with pytest.raises(ValueError, match="backend"):
        ProductQuantizer(8, 4, 6, backend="gpu")
    pq = ProductQuantizer(8, 4, 6)
    with pytest.raises(ValueError, match="outside"):
        pq.decode(torch.full((2, 4), 6))
    with pytest.raises(ValueError, match="S=4"):
        pq.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError):
        pq.decode(torch.zeros(2, 4))


def test_trains_in_a_tiny_autoencoder():
    torch.manual_seed(0)
    enc, dec = torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(16, 3, 1)
    pq = ProductQuantizer(16, 8, 32, kmeans_init=True)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-2)
    x = torch.rand(8, 3, 8, 8)
    losses = []
    for _ in range(60):
        out = pq(enc(x))
        loss = (dec(out.quantized) - x).square().mean() + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("ema", [0.99, None])
def test_torch_compile_module_fullgraph(ema):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1))
    pq = ProductQuantizer(8, 4, 6, ema_decay=ema)

    def step(x):
        out = pq(model(x))
        return out.quantized.square().mean() + out.loss, out.indices

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 4, 4)
    pq.eval()
    loss_c, idx_c = compiled(x)
    loss_e, idx_e = step(x)
    assert torch.equal(idx_c, idx_e) and torch.allclose(loss_c, loss_e)
    pq.train()
    before = pq.cluster_size.clone()
    loss_c, _ = compiled(x)
    loss_c.backward()
    assert not torch.equal(before, pq.cluster_size)


@pytest.mark.parametrize("args,kwargs,match", [
    ((0, 1, 4), {}, r"dim, num_subspaces and codebook_size must be >= 1, got 0, 1, 4"),
    ((4, 0, 4), {}, r"must be >= 1, got 4, 0, 4"),
    ((4, 1, 0), {}, r"must be >= 1, got 4, 1, 0"),
    ((10, 4, 6), {}, r"dim \(10\) must be divisible by num_subspaces \(4\)"),
    ((8, 4, 6), {"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\) or None, got 1.0"),
    ((8, 4, 6), {"ema_decay": -0.1}, r"ema_decay must be in \[0, 1\) or None, got -0.1"),
    ((8, 4, 6), {"distance": "l1"}, r"distance must be one of \('l2', 'cosine'\), got 'l1'"),
    ((8, 4, 6), {"backend": "gpu"}, r"backend must be 'auto' or one of .*, got 'gpu'"),
    ((8, 4, 6), {"codebook_init": "zeros"}, r"codebook_init must be 'normal' or 'uniform', got 'zeros'"),
])
def test_bad_construction_names_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProductQuantizer(*args, **kwargs)


def test_construction_boundaries_and_attributes():
    pq = ProductQuantizer(6, 3, 5, ema_decay=0.0, backend="reference", codebook_weight=0.7, commitment_weight=0.2)
    assert (pq.dim, pq.num_subspaces, pq.codebook_size, pq.subspace_dim) == (6, 3, 5, 2)
    assert pq.use_ema and pq.usage_decay == 0.0 and pq.eps == 1e-5 and pq.backend == "reference"
    assert pq.codebooks.shape == pq.embed_sum.shape == (3, 5, 2) and torch.equal(pq.codebooks, pq.embed_sum)
    assert torch.equal(pq.cluster_size, torch.ones(3, 5)) and bool(pq.initted) and int(pq.usage_steps) == 0
    assert ProductQuantizer(6, 3, 5, ema_decay=None).usage_decay == 0.99
    assert not bool(ProductQuantizer(6, 3, 5, kmeans_init=True).initted)
    assert pq.bits_per_position == 3 * 3 and ProductQuantizer(128, 64, 512).bits_per_position == 64 * 9
    assert repr(pq) == ("ProductQuantizer(dim=6, num_subspaces=3, codebook_size=5, subspace_dim=2, ema_decay=0.0, "
                        "distance='l2', backend='reference')")
    assert ProductQuantizer(1, 1, 1).codebooks.shape == (1, 1, 1)


def test_uniform_and_normal_codebook_init():
    uni = ProductQuantizer(64, 32, 50, codebook_init="uniform", ema_decay=None)
    assert uni.codebooks.abs().max() <= 1 / 50 and uni.codebooks.std() > 0.5 / 50 / 3 ** 0.5
    normal = ProductQuantizer(64, 32, 50)
    assert 0.9 < float(normal.codebooks.std()) < 1.1 and torch.equal(normal.codebooks, normal.embed_sum)


def test_checkpoints_without_usage_steps_load_as_long_trained():
    pq = ProductQuantizer(4, 2, 3)
    state = {k: v for k, v in pq.state_dict().items() if k != "usage_steps"}
    fresh = ProductQuantizer(4, 2, 3)
    fresh.load_state_dict(state)
    assert int(fresh.usage_steps) == 1_000_000
    with torch.no_grad():
        fresh.cluster_size.fill_(0.25)
    torch.testing.assert_close(fresh.running_usage(), torch.full((2, 3), 0.25))   # bias 0.99**1e6 = 0
    fresh.load_state_dict(pq.state_dict())
    assert int(fresh.usage_steps) == 0


@pytest.mark.parametrize("z,channel_last,match", [
    (torch.randn(2, 7, 3), False, r"expected 8 channels on axis 1, got shape \(2, 7, 3\)"),
    (torch.randn(2, 3, 7), True, r"expected 8 channels on axis -1, got shape \(2, 3, 7\)"),
    (torch.randn(8), False, r"expected input of shape \(B, D, \.\.\.\), got shape \(8,\)"),
    (torch.randn(()), True, r"expected input of shape \(\.\.\., D\), got shape \(\)"),
    (torch.randn(0, 8), True, r"empty batch: input of shape \(0, 8\)"),
])
def test_bad_input_messages(z, channel_last, match):
    with pytest.raises(ValueError, match=match):
        ProductQuantizer(8, 4, 6, channel_last=channel_last)(z)


def test_one_dimensional_channel_last_input_and_3d_layouts():
    pq = ProductQuantizer(4, 2, 3, channel_last=True).eval()
    z = torch.randn(4)
    out = pq(z)
    assert out.quantized.shape == (4,) and out.indices.shape == (2,)
    assert torch.equal(out.quantized, pq.decode(out.indices))
    cf = ProductQuantizer(4, 2, 3).eval()
    cf.load_state_dict(pq.state_dict())
    z3 = torch.randn(2, 4, 5)                                         # (B, D, L): one spatial axis
    out3 = cf(z3)
    assert out3.indices.shape == (2, 5, 2) and out3.quantized.shape == (2, 4, 5)
    assert torch.equal(out3.indices, pq(z3.movedim(1, -1)).indices)
    assert torch.equal(cf.encode(z3), out3.indices) and torch.equal(cf.decode(out3.indices), out3.quantized)


def test_decode_and_pack_errors():
    pq = ProductQuantizer(8, 4, 6)
    with pytest.raises(ValueError, match=r"indices must end with S=4, got shape \(2, 3\)"):
        pq.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices must end with S=4, got shape \(\)"):
        pq.decode(torch.tensor(0))
    with pytest.raises(ValueError, match=r"empty batch: indices of shape \(0, 4\)"):
        pq.decode(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        pq.decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"indices must end with S=4, got shape \(2, 3\)"):
        pq.pack(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        pq.pack(torch.full((2, 4), 6))
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        pq.pack(torch.zeros(2, 4))
    assert pq.pack(torch.tensor([[5, 0, 1, 2]])).tolist() == [[5 | 0 << 3 | 1 << 6, (2 << 9) >> 8]]   # 3 bits per code, LSB first
    assert pq.unpack(pq.pack(torch.tensor([[5, 0, 1, 2]]))).tolist() == [[5, 0, 1, 2]]


def test_encode_does_not_train():
    pq = ProductQuantizer(4, 2, 3, ema_decay=0.5, dead_code_threshold=5.0, kmeans_init=True).train()
    state = {k: v.clone() for k, v in pq.state_dict().items()}
    pq.encode(torch.randn(2, 4, 3, 3))
    assert all(torch.equal(v, pq.state_dict()[k]) for k, v in state.items())


def test_more_named_errors_and_dtypes():
    pq = ProductQuantizer(4, 2, 3)
    with pytest.raises(TypeError, match="^z must be float16, bfloat16, float32 or float64"):
        pq(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="^indices has values outside"):
        pq.pack(torch.full((1, 2), 3))
    assert pq.usage_steps.dtype == torch.int64
    legacy = ProductQuantizer(4, 2, 3)
    legacy.load_state_dict({k: v for k, v in pq.state_dict().items() if k != "usage_steps"})
    assert legacy.usage_steps.dtype == torch.int64


def test_channel_first_input_without_spatial_axes():
    pq = ProductQuantizer(4, 2, 3).eval()                              # (B, D): channel axis 1, no spatial axes
    z = torch.randn(5, 4)
    out = pq(z)
    assert out.quantized.shape == (5, 4) and out.indices.shape == (5, 2)


def test_stats_of_a_single_row_and_the_threshold_boundary():
    pq = ProductQuantizer(2, 2, 4, channel_last=True, dead_code_threshold=0.75).eval()
    with torch.no_grad():
        pq.cluster_size.copy_(torch.tensor([[0.75, 0.5, 1.0, 0.75], [0.74, 0.76, 0.75, 2.0]]))
    stats = pq(torch.randn(1, 2)).stats
    torch.testing.assert_close(stats.perplexity, torch.ones(2))          # one row: one code per subspace
    torch.testing.assert_close(stats.usage, torch.full((2,), 0.25))
    torch.testing.assert_close(stats.dead_codes, torch.tensor([1.0, 1.0]))   # strictly below the threshold


def test_dead_code_stat_counts_the_codes_found_dead_before_reseeding():
    """With restarts on, the logged dead count is what this step found (re-seeding revives them afterwards)."""
    torch.manual_seed(0)
    pq = ProductQuantizer(4, 2, 16, ema_decay=0.9, dead_code_threshold=0.5, codebook_init="normal")
    z = torch.zeros(8, 4).add_(torch.arange(4.0))[:, :, None]  # every row the same: one code per subspace used
    stats = pq.train()(z).stats
    assert stats.dead_codes.tolist() == [15.0, 15.0]
    assert bool((pq.running_usage() >= 0.5).all())  # ... and all of them were re-seeded
