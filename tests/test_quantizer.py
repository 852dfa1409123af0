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


def test_losses_and_gradient_trained_codebooks():
    pq = ProductQuantizer(8, 4, 6, ema_decay=None, commitment_weight=1.0, codebook_weight=0.25)
    assert isinstance(pq.codebooks, torch.nn.Parameter)
    z = torch.randn(2, 8, 3, 3)
    out = pq(z)
    rows = z.movedim(1, -1).reshape(-1, 8)
    q, _ = reference.pq_assign(rows, pq.codebooks.detach())
    mse = (rows - q).square().mean()
    assert torch.allclose(out.loss, 1.25 * mse, rtol=1e-5)
    out.loss.backward()
    assert pq.codebooks.grad is not None and pq.codebooks.grad.abs().sum() > 0


def test_ema_mode_updates_only_in_training_and_matches_reference():
    pq = ProductQuantizer(8, 2, 5, ema_decay=0.9)
    assert not isinstance(pq.codebooks, torch.nn.Parameter)
    z = torch.randn(4, 8, 2, 2)
    before = pq.codebooks.clone()
    pq.eval()(z)
    assert torch.equal(pq.codebooks, before)
    state = [t.clone() for t in (pq.codebooks, pq.cluster_size, pq.embed_sum)]
    out = pq.train()(z)
    rows = z.movedim(1, -1).reshape(-1, 8)
    reference.pq_ema_update(rows, out.indices.reshape(-1, 2), *state, 0.9, pq.eps)
    assert torch.allclose(pq.codebooks, state[0], atol=1e-6)
    assert torch.allclose(pq.cluster_size, state[1]) and torch.allclose(pq.embed_sum, state[2], atol=1e-6)
    assert out.loss.requires_grad is False or out.loss.grad_fn is not None


def test_scalar_quantisation_d1_and_plain_vq():
    sq = ProductQuantizer(6, 6, 9)
    vq = ProductQuantizer(6, 1, 9)
    z = torch.randn(2, 6, 4, 4)
    assert sq(z).indices.shape == (2, 4, 4, 6) and sq.subspace_dim == 1
    assert vq(z).indices.shape == (2, 4, 4, 1) and vq.subspace_dim == 6


def test_kmeans_init_fits_the_first_batch():
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 5
    z = (centres[torch.randint(8, (512,))] + 0.01 * torch.randn(512, 4)).reshape(8, 64, 4).permute(0, 2, 1)
    z = z.reshape(8, 4, 8, 8)
    pq = ProductQuantizer(4, 1, 8, kmeans_init=True)
    out = pq.train()(z)
    assert bool(pq.initted)
    assert out.loss.item() < 0.25 * 1e-3  # commitment weight * residual variance of the tight clusters


def test_dead_codes_are_reseeded_from_inputs():
    torch.manual_seed(0)
    pq = ProductQuantizer(4, 2, 16, ema_decay=0.5, dead_code_threshold=1.0)
    with torch.no_grad():
        pq.codebooks[:, 8:] += 100.0  # far away: never chosen, become dead
        pq.embed_sum.copy_(pq.codebooks)
    z = torch.randn(4, 4, 4, 4)
    for _ in range(4):
        pq.train()(z)
    assert pq.codebooks.abs().max() < 50, "dead codes were not re-seeded from the inputs"


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
