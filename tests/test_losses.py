"""PQGAN losses, discriminator and perceptual backends: hinge/vanilla signs, adaptive weight (finite, clamped,
equal to the grad-norm ratio), GAN gating by disc_start, gradient isolation, and LPIPS/ST-LPIPS selection."""
import sys
import types

import pytest
import torch

from pqgan import PQGAN, apply_overrides, load_config
from pqgan.config import LossConfig
from pqgan.discriminator import NLayerDiscriminator
from pqgan.losses import PQGANLoss, adaptive_weight, hinge_d_loss, vanilla_d_loss
from pqgan.perceptual import STLPIPS, build_perceptual, lpips_available, stlpips_available

from model_helpers import random_images

needs_st = pytest.mark.skipif(not stlpips_available("alex"), reason="stlpips-pytorch not installed")


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny():
    cfg = apply_overrides(load_config("tiny_f8_pq"), ["model.resolution=32", "model.ch=16", "model.z_channels=16"])
    return PQGAN(cfg.model)


def test_hinge_and_vanilla_signs():
    big = torch.full((2, 1, 4, 4), 3.0)
    for fn in (hinge_d_loss, vanilla_d_loss):
        good, bad = fn(big, -big), fn(-big, big)  # D right vs D wrong
        assert 0 <= float(good) < 0.1 and float(bad) > 1.0
    assert float(hinge_d_loss(big, -big)) == 0.0
    assert float(hinge_d_loss(torch.zeros(1), torch.zeros(1))) == pytest.approx(1.0)
    assert float(vanilla_d_loss(torch.zeros(1), torch.zeros(1))) == pytest.approx(torch.log(torch.tensor(2.0)))


def test_discriminator_shapes():
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=64, n_layers=3)
    assert sum(p.numel() for p in d.parameters()) == 2765633  # the VQGAN PatchGAN
    with torch.device("meta"):
        assert NLayerDiscriminator()(torch.empty(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    w = d.main[0].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.005 and abs(float(w.mean())) < 0.005
    act = NLayerDiscriminator(ndf=8, n_layers=2, norm="act")
    out = act(random_images(4, 32))
    assert out.shape == (4, 1, 6, 6) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        NLayerDiscriminator(norm="layer")


def test_adaptive_weight_is_the_grad_norm_ratio():
    torch.manual_seed(0)
    model = _tiny()
    x = random_images(2, 32, seed=1)
    recon, _ = model(x)
    nll = (recon - x).abs().mean()
    g = -recon.pow(2).mean() * 3
    w = adaptive_weight(nll, g, model.last_layer)
    gn = torch.autograd.grad(nll, model.last_layer, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, model.last_layer, retain_graph=True)[0].norm()
    assert torch.isfinite(w) and not w.requires_grad and float(w) > 0
    torch.testing.assert_close(w, (gn / (gg + 1e-4)).detach())
    assert float(adaptive_weight(nll, g * 1e-9, model.last_layer, max_weight=5.0)) == 5.0  # clamped


def test_generator_and_discriminator_losses():
    torch.manual_seed(0)
    model = _tiny()
    crit = PQGANLoss(LossConfig(perceptual="none", disc_start=10, disc_ndf=8, disc_layers=2))
    assert crit.perceptual is None and crit.perceptual_name == "none"
    x = random_images(2, 32, seed=2)
    recon, q = model(x)

    # before disc_start: no GAN term, D untouched, the D loss is a zero leaf that is safe to backward
    loss, logs = crit.generator_loss(x, recon, q.loss, step=9, last_layer=model.last_layer)
    assert float(logs["g_loss"]) == 0 and float(logs["d_weight"]) == 0 and float(logs["disc_factor"]) == 0
    torch.testing.assert_close(loss.detach(), (x - recon).abs().mean().detach() + q.loss.detach())
    d_loss, _ = crit.discriminator_loss(x, recon, step=9)
    d_loss.backward()
    assert float(d_loss.detach()) == 0 and all(p.grad is None for p in crit.discriminator.parameters())

    # from disc_start: adaptive weight finite and positive; the generator step leaves D's gradients alone
    recon, q = model(x)
    loss, logs = crit.generator_loss(x, recon, q.loss, step=10, last_layer=model.last_layer)
    assert torch.isfinite(logs["d_weight"]) and 0 < float(logs["d_weight"]) <= 0.75 * 1e4
    assert all(torch.isfinite(v) for v in logs.values())
    model.zero_grad()
    loss.backward()
    assert model.last_layer.grad is not None
    assert all(p.grad is None for p in crit.discriminator.parameters())
    assert all(p.requires_grad for p in crit.discriminator.parameters())

    # the D step trains only D
    model.zero_grad()
    d_loss, d_logs = crit.discriminator_loss(x, recon, step=10)
    assert float(d_loss.detach()) > 0 and set(d_logs) == {"d_loss", "logits_real", "logits_fake"}
    d_loss.backward()
    assert all(p.grad is not None for p in crit.discriminator.parameters())
    assert all(p.grad is None for p in model.parameters())

    # without autograd (evaluation) the GAN weight falls back to disc_weight
    with torch.no_grad():
        _, logs = crit.generator_loss(x, recon, q.loss, step=10, last_layer=model.last_layer)
    assert float(logs["d_weight"]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        crit.generator_loss(x, recon[:, :, :16], q.loss, step=0)


def test_lpips_never_downloads(tmp_path, monkeypatch):
    """With an empty hub cache, 'lpips' refuses (no random or downloaded backbone); 'auto' falls to ST-LPIPS."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert not lpips_available("vgg")
    with pytest.raises(RuntimeError, match="will not be downloaded"):
        build_perceptual("lpips", "vgg")
    assert build_perceptual("none") is None
    with pytest.raises(ValueError):
        build_perceptual("ssim")
    if stlpips_available("alex"):
        assert build_perceptual("auto", "alex").name == "ST-LPIPS-alex"


@needs_st
def test_stlpips_distance_behaves():
    torch.manual_seed(0)
    p = STLPIPS("alex")
    assert p.name == "ST-LPIPS-alex" and not any(q.requires_grad for q in p.parameters())
    x = random_images(2, 32, seed=3)
    d0 = p(x, x)
    d1 = p(x, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1))
    d2 = p(x, (x + 0.5 * torch.randn_like(x)).clamp(-1, 1))
    assert d0.shape == (2,) and float(d0.abs().max()) < 1e-6
    assert (d1 > 0).all() and (d2 > d1).all()
    y = x.flip(-1).requires_grad_()
    p(x, y).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0  # a usable training loss
    with pytest.raises(ValueError):
        p(x, x[:, :, :16])


@needs_st
def test_stlpips_matches_the_package(monkeypatch):
    """Our rebuilt network equals stlpips_pytorch's own LPIPS(variant='shift_tolerant') on the same weights
    (its module imports torchsummary only for a debug helper: stubbed here)."""
    pytest.importorskip("IPython")
    monkeypatch.setitem(sys.modules, "torchsummary", types.SimpleNamespace(summary=None))
    stlpips = pytest.importorskip("stlpips_pytorch.stlpips")
    ref = stlpips.LPIPS(net="alex", variant="shift_tolerant", verbose=False).eval()
    x = random_images(2, 48, seed=4)
    y = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(STLPIPS("alex")(x, y), ref(x, y).flatten(), rtol=1e-5, atol=1e-7)


@needs_st
def test_loss_module_state_and_perceptual_term():
    crit = PQGANLoss(LossConfig(perceptual="stlpips", perceptual_net="alex", disc_ndf=8, disc_layers=2,
                                disc_start=100))
    assert crit.perceptual_name == "ST-LPIPS-alex"
    assert all(k.startswith("discriminator.") for k in crit.state_dict())  # the frozen metric is not saved
    crit.to(torch.float64)
    assert next(crit.perceptual.parameters()).dtype == torch.float64  # but it moves with the module
    crit.to(torch.float32)
    x = random_images(2, 32, seed=6)
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    loss, logs = crit.generator_loss(x, y, torch.tensor(0.0), step=0)
    torch.testing.assert_close(loss, logs["l1"] + logs["perceptual"])
    assert float(logs["perceptual"]) > 0
