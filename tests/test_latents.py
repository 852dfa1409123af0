"""PQGAN latent interface (pqgan/latents.py) and the diffusers adapter (pqgan/diffusers_adapter.py).

decode_latents(encode_latents(x)) is the eval reconstruction, bit for bit; re-quantisation is idempotent and
absorbs any perturbation below half the distance to the nearest other codeword (and only then); the scaling factor
gives unit variance, merges batches exactly, survives checkpoints and defaults to 1 for old ones; the quantiser's
state never changes through the latent interface. With diffusers installed: the adapter in a training step of a
UNet2DModel + DDPMScheduler, a sampling loop, and the LDMPipeline. Tiny configs, 32x32 images, one thread.
"""
import copy

import pytest
import torch

from pqgan import PQGAN
from pqgan.checkpoint import load_pretrained, save_checkpoint
from pqgan.config import load_config
from pqgan.diffusers_adapter import DiffusersPQAutoencoder

from model_helpers import random_images


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name="tiny_f8_pq", seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = load_config(name).model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return PQGAN(cfg).eval()


@pytest.fixture(scope="module")
def f8():
    m = _model("tiny_f8_pq")
    with torch.no_grad():  # non-trivial codebooks: spread like the latents they quantise
        m.quantizer.codebooks.mul_(0.5)
    m.fit_scaling_factor(random_images(4, seed=1))
    return m


@pytest.mark.parametrize("name", ["tiny_f8_pq", "tiny_f16_pq"])
def test_decode_latents_of_encode_latents_is_the_eval_reconstruction(name):
    m = _model(name)
    x = random_images(2)
    factor = m.fit_scaling_factor(x)
    assert factor != 1.0
    with torch.no_grad():
        recon, q = m(x)
    z = m.encode_latents(x)
    F = m.downsample_factor
    assert z.shape == (2, m.config.embed_dim, 32 // F, 32 // F) and z.dtype == torch.float32
    assert torch.equal(m.latents_to_indices(z), q.indices)
    assert torch.equal(m.latents_to_indices(z), m.encode(x))
    with torch.no_grad():
        out = m.decode_latents(z)
    assert torch.equal(out, recon)
    # scaled and unscaled views agree
    assert torch.allclose(m.encode_latents(x, scaled=False) * m.scaling_factor, z, rtol=1e-6, atol=0)
    assert torch.equal(m.encode_latents(x, scaled=False), q.quantized)


def test_requantisation_is_idempotent(f8):
    x = random_images(2, seed=2)
    z = f8.encode_latents(x)
    assert torch.equal(f8.snap_latents(z), z)
    assert torch.equal(f8.snap_latents(f8.snap_latents(z)), f8.snap_latents(z))
    # codes -> codewords -> codes, on random codes (every code, not only the ones an encoder picks)
    S, K = f8.config.num_subspaces, f8.config.codebook_size
    idx = torch.randint(K, (3, 4, 4, S), generator=torch.Generator().manual_seed(3))
    raw = f8.quantizer.decode(idx)
    assert torch.equal(f8.latents_to_indices(raw, scaled=False), idx)
    assert torch.equal(f8.latents_to_indices(raw * f8.scaling_factor), idx)


def _spacing_noise(m, idx, fraction, seed):
    """Noise (B, D, h, w) in scaled units whose per-subspace norm is ``fraction`` of the distance from the chosen
    codeword to its nearest other codeword in the same subspace."""
    cb = m.quantizer.codebooks.detach().float()  # (S, K, d)
    S, K, d = cb.shape
    dist = torch.cdist(cb, cb)
    dist.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    spacing = dist.min(-1).values  # (S, K)
    gap = spacing[torch.arange(S), idx]  # (B, h, w, S)
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(*idx.shape, d, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    noise = direction * (fraction * gap).unsqueeze(-1) * m.scaling_factor  # (B, h, w, S, d)
    return noise.reshape(*idx.shape[:-1], S * d).permute(0, 3, 1, 2)


def test_noise_below_half_the_code_spacing_is_absorbed(f8):
    x = random_images(2, seed=4)
    z = f8.encode_latents(x)
    idx = f8.latents_to_indices(z)
    noisy = z + _spacing_noise(f8, idx, 0.45, seed=5)
    assert not torch.equal(noisy, z)
    assert torch.equal(f8.latents_to_indices(noisy), idx)
    with torch.no_grad():
        assert torch.equal(f8.decode_latents(noisy), f8.decode_latents(z))
    # control: moving one subspace of one position onto another codeword changes the codes and the image
    S, K, d = f8.quantizer.codebooks.shape
    other = idx.clone()
    other[0, 1, 2, 3] = (idx[0, 1, 2, 3] + 1) % K
    moved = f8.quantizer.decode(other) * f8.scaling_factor
    assert torch.equal(f8.latents_to_indices(moved), other)
    with torch.no_grad():
        assert not torch.equal(f8.decode_latents(moved), f8.decode_latents(z))


def test_scaling_factor_fit_gives_unit_variance_and_merges_batches():
    m = _model("tiny_f8_pq")
    x = random_images(5, seed=6)
    a = m.fit_scaling_factor(x, batch_size=5)
    assert float(m.scaling_factor) == pytest.approx(a, rel=1e-6)
    assert float(m.encode_latents(x).std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)
    b = m.fit_scaling_factor(x, batch_size=2)  # 2 + 2 + 1 images: Chan's merge == one pass
    assert b == pytest.approx(a, rel=1e-9)
    loader = [(x[:3], torch.zeros(3)), {"image": x[3:]}]  # tuple and dict batches
    assert m.fit_scaling_factor(loader) == pytest.approx(a, rel=1e-9)
    assert m.fit_scaling_factor([x[:2], x[2:]], max_batches=1) == pytest.approx(
        _model("tiny_f8_pq").fit_scaling_factor(x[:2]), rel=1e-9)
    m.train()
    m.fit_scaling_factor(x)
    assert m.training  # mode restored
    with pytest.raises(ValueError):
        m.fit_scaling_factor([])


def test_scaling_factor_survives_checkpoints_and_old_ones_load_with_one(f8, tmp_path):
    assert "scaling_factor" in f8.state_dict()
    save_checkpoint(str(tmp_path / "ckpt"), step=1, model=f8, config=load_config("tiny_f8_pq").to_dict())
    loaded = load_pretrained(str(tmp_path / "ckpt"))
    assert float(loaded.scaling_factor) == float(f8.scaling_factor) != 1.0
    x = random_images(1, seed=7)
    assert torch.equal(loaded.encode_latents(x), f8.encode_latents(x))
    old = {k: v for k, v in f8.state_dict().items() if k != "scaling_factor"}
    fresh = _model("tiny_f8_pq", seed=1)
    fresh.scaling_factor.fill_(5.0)
    fresh.load_state_dict(old)  # strict
    assert float(fresh.scaling_factor) == 1.0
    with pytest.raises(RuntimeError):  # other missing keys still fail under strict loading
        fresh.load_state_dict({k: v for k, v in old.items() if k != "post_quant_conv.bias"})


def test_latent_interface_never_updates_the_quantiser():
    m = _model("tiny_f8_pq", ema_decay=0.9, dead_code_threshold=0.5).train()
    before = copy.deepcopy(m.quantizer.state_dict())
    x = random_images(2, seed=8)
    z = m.encode_latents(x)
    m.decode_latents(z + 0.3 * torch.randn_like(z))
    m.snap_latents(z)
    m.fit_scaling_factor(x)
    after = m.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_latents_are_rejected(f8):
    z = f8.encode_latents(random_images(1))
    with pytest.raises(ValueError):
        f8.decode_latents(z[:, :-1])
    with pytest.raises(ValueError):
        f8.decode_latents(z[0])
    with pytest.raises(TypeError):
        f8.decode_latents(z.long())
    with pytest.raises(TypeError):
        f8.decode_latents(z.numpy())
    bad = z.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        f8.decode_latents(bad)


# --- diffusers ---------------------------------------------------------------------------------------------------

def _unet(channels, side):
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=side, in_channels=channels, out_channels=channels, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


def test_adapter_protocol(f8):
    ae = DiffusersPQAutoencoder(f8)
    x = random_images(2, seed=9)
    enc = ae.encode(x)
    assert torch.equal(enc.latent_dist.sample(), enc.latent_dist.mode())
    assert torch.equal(enc.latents, f8.encode_latents(x, scaled=False))
    assert torch.equal(enc[0].mean, enc.latents) and ae.encode(x, return_dict=False)[0].mode().shape == enc.latents.shape
    assert float(enc.latent_dist.std.abs().max()) == 0.0 and enc.latent_dist.kl().shape == (2,)
    cfg = ae.config
    assert cfg.scaling_factor == float(f8.scaling_factor) and cfg.latent_channels == f8.config.embed_dim
    assert 2 ** (len(cfg.block_out_channels) - 1) == f8.downsample_factor  # diffusers' vae_scale_factor
    assert ae.dtype == torch.float32 and ae.device.type == "cpu"
    with pytest.raises(AttributeError):
        cfg.scaling_factor = 2.0
    scaled = enc.latents * cfg.scaling_factor
    with torch.no_grad():
        img = ae.decode(scaled / cfg.scaling_factor).sample
        assert torch.equal(img, f8.decode_latents(scaled))
        assert torch.equal(ae.decode(enc.latents, return_dict=False)[0], img)
        assert torch.equal(ae(x).sample, img)
    with pytest.raises(TypeError):
        DiffusersPQAutoencoder(torch.nn.Linear(2, 2))


def test_adapter_trains_and_samples_with_diffusers_unet_and_ddpm(f8):
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler
    ae = DiffusersPQAutoencoder(f8)
    x = random_images(2, seed=10)
    latents = ae.encode(x).latent_dist.sample() * ae.config.scaling_factor  # (2, 16, 4, 4)
    unet = _unet(latents.shape[1], latents.shape[-1])
    sched = DDPMScheduler(num_train_timesteps=50)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 50, (2,), generator=g)
    loss = torch.nn.functional.mse_loss(unet(sched.add_noise(latents, noise, t), t).sample, noise)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    # sampling: 2 scheduler steps, then decode through the adapter (re-quantised)
    sched.set_timesteps(2)
    sample = torch.randn(latents.shape, generator=g)
    with torch.no_grad():
        for step in sched.timesteps:
            sample = sched.step(unet(sample, step).sample, step, sample, generator=g).prev_sample
        img = ae.decode(sample / ae.config.scaling_factor).sample
    assert img.shape == x.shape and torch.isfinite(img).all()
    assert torch.equal(img, f8.decode_latents(f8.snap_latents(sample)))


def test_adapter_in_ldm_pipeline(f8):
    diffusers = pytest.importorskip("diffusers")
    LDMPipeline = getattr(diffusers, "LDMPipeline", None)
    if LDMPipeline is None:
        pytest.skip("this diffusers has no LDMPipeline")
    from diffusers import DDIMScheduler
    ae = DiffusersPQAutoencoder(f8)
    side = 32 // f8.downsample_factor
    pipe = LDMPipeline(vqvae=ae, unet=_unet(f8.config.embed_dim, side), scheduler=DDIMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 32, 32, 3)
