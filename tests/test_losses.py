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


# --- values by hand ------------------------------------------------------------------------------------------------

def test_d_losses_by_hand():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 3.0])
    # hinge: relu(1 - real) = [0.5, 0], relu(1 + fake) = [0.5, 4] -> 0.5 * (0.25 + 2.25)
    assert float(hinge_d_loss(real, fake)) == pytest.approx(1.25, rel=1e-6)
    sp = lambda v: torch.log1p(torch.exp(torch.tensor(v))).item()        # noqa: E731
    expected = 0.5 * ((sp(-0.5) + sp(-2.0)) / 2 + (sp(-0.5) + sp(3.0)) / 2)
    assert float(vanilla_d_loss(real, fake)) == pytest.approx(expected, rel=1e-6)


def test_adaptive_weight_by_hand():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll = (w * torch.tensor([3.0, 4.0])).sum()            # grad (3, 4): norm 5
    g = (w * torch.tensor([0.0, 2.0])).sum()              # grad (0, 2): norm 2
    assert float(adaptive_weight(nll, g, w)) == pytest.approx(5 / (2 + 1e-4), rel=1e-6)
    assert float(adaptive_weight(nll, g, w, max_weight=2.0)) == 2.0
    assert float(adaptive_weight(nll, 0 * g, w)) == 1e4                  # 5 / 1e-4, clamped at the default max
    assert float(adaptive_weight(nll, 0 * g, w, max_weight=1e6)) == pytest.approx(5 / 1e-4, rel=1e-5)


class _Recon(torch.nn.Module):
    """A one-parameter 'model': recon = a * img (so last_layer = a)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, img):
        return self.a * img


def test_generator_loss_terms_by_hand():
    cfg = LossConfig(perceptual="none", l1_weight=2.0, codebook_loss_weight=0.5, disc_weight=0.3, disc_factor=0.7,
                     disc_start=3, disc_ndf=8, disc_layers=2)
    crit = PQGANLoss(cfg)
    model = _Recon()
    x = random_images(2, 32, seed=7)
    recon = model(x)
    quant = torch.tensor([0.2, 0.4])                                     # reduced by its mean
    l1 = (x - recon).abs().mean()
    # before disc_start: 2 * l1 + 0.5 * 0.3
    loss, logs = crit.generator_loss(x, recon, quant, step=2, last_layer=model.a)
    torch.testing.assert_close(loss, 2.0 * l1 + 0.5 * 0.3)
    torch.testing.assert_close(logs["nll"], (2.0 * l1).detach())
    assert float(logs["quant"]) == pytest.approx(0.3) and float(logs["disc_factor"]) == 0.0
    # from disc_start: + 0.3 * w * 0.7 * g with g = -mean D(recon), w the grad-norm ratio at a
    loss, logs = crit.generator_loss(x, recon, quant, step=3, last_layer=model.a)
    g = -crit.discriminator(recon).mean()
    w = adaptive_weight(2.0 * l1, g, model.a)
    torch.testing.assert_close(logs["g_loss"], g.detach())
    torch.testing.assert_close(logs["d_weight"], 0.3 * w)
    torch.testing.assert_close(loss, 2.0 * l1 + 0.5 * 0.3 + 0.3 * w * 0.7 * g, rtol=1e-5, atol=1e-6)
    assert float(logs["disc_factor"]) == pytest.approx(0.7)
    torch.testing.assert_close(logs["total"], loss.detach())
    # without a last layer (or without autograd) the weight is disc_weight itself
    _, logs = crit.generator_loss(x, recon, quant, step=3)
    assert float(logs["d_weight"]) == pytest.approx(0.3)


@pytest.mark.parametrize("kind", ["hinge", "vanilla"])
def test_discriminator_loss_is_disc_factor_times_the_d_loss(kind):
    crit = PQGANLoss(LossConfig(perceptual="none", disc_factor=0.7, disc_start=0, disc_ndf=8, disc_layers=2,
                                disc_loss=kind))
    x, y = random_images(2, 32, seed=8), random_images(2, 32, seed=9)
    loss, logs = crit.discriminator_loss(x, y, step=0)
    real, fake = crit.discriminator(x), crit.discriminator(y)
    fn = hinge_d_loss if kind == "hinge" else vanilla_d_loss
    torch.testing.assert_close(loss, 0.7 * fn(real, fake))
    torch.testing.assert_close(logs["logits_real"], real.mean().detach())
    torch.testing.assert_close(logs["logits_fake"], fake.mean().detach())


@pytest.mark.parametrize("override,active", [({}, [False, True, True]), ({"disc_weight": 0.0}, [False] * 3),
                                             ({"disc_factor": 0.0}, [False] * 3)])
def test_disc_active(override, active):
    crit = PQGANLoss(LossConfig(perceptual="none", disc_start=5, disc_ndf=8, disc_layers=2, **override))
    assert [crit.disc_active(s) for s in (4, 5, 6)] == active


def test_config_forms():
    assert PQGANLoss({"perceptual": "none", "disc_ndf": 8, "disc_layers": 2}).config.disc_ndf == 8
    assert PQGANLoss(LossConfig(perceptual="none", perceptual_weight=0.0)).perceptual is None
    with pytest.raises(TypeError, match="LossConfig or a dict"):
        PQGANLoss(3)


@needs_st
def test_reconstruction_loss_weights_the_perceptual_term():
    crit = PQGANLoss(LossConfig(perceptual="stlpips", perceptual_net="alex", l1_weight=0.5, perceptual_weight=3.0,
                                disc_ndf=8, disc_layers=2))
    x, y = random_images(2, 32, seed=10), random_images(2, 32, seed=11)
    total, logs = crit.reconstruction_loss(x.half(), y.half())          # computed in float32
    xf, yf = x.half().float(), y.half().float()
    l1 = (xf - yf).abs().mean()
    with torch.no_grad():
        p = crit.perceptual(xf, yf).mean()
    assert float(p) > 0.01
    torch.testing.assert_close(total.detach(), 0.5 * l1 + 3.0 * p)
    torch.testing.assert_close(logs["perceptual"], p)
    torch.testing.assert_close(logs["l1"], l1)


def test_defaults_discriminator_shape_and_zero_logs():
    crit = PQGANLoss()                                                   # None: the default LossConfig
    assert crit.config == LossConfig()
    small = PQGANLoss(LossConfig(perceptual="none", disc_ndf=8, disc_layers=2, disc_norm="act"))
    ref = NLayerDiscriminator(3, 8, 2, norm="act")
    assert [p.shape for p in small.discriminator.parameters()] == [p.shape for p in ref.parameters()]
    assert PQGANLoss(LossConfig(perceptual="none", perceptual_weight=0.0)).perceptual_name == "none"
    x = random_images(1, 32)
    loss, logs = small.discriminator_loss(x, x, step=-1)                  # before disc_start = 0
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"} and all(float(v) == 0 for v in logs.values())
    with pytest.raises(TypeError, match="got int"):
        PQGANLoss(3)


def test_adaptive_weight_is_never_negative_and_respects_the_config_max():
    w = torch.tensor([1.0], requires_grad=True)
    assert float(adaptive_weight((w * 3).sum(), (w * 0).sum(), w, max_weight=7.0)) == 7.0
    crit = PQGANLoss(LossConfig(perceptual="none", disc_ndf=8, disc_layers=2, adaptive_weight_max=0.5,
                                disc_weight=1.0))
    model = _Recon()
    x = random_images(2, 32, seed=12)
    recon = model(x)
    _, logs = crit.generator_loss(x, recon, torch.tensor(0.0), step=0, last_layer=model.a)
    assert float(logs["d_weight"]) <= 0.5


@needs_st
def test_the_perceptual_network_moves_with_the_module_even_for_double():
    crit = PQGANLoss(LossConfig(perceptual="stlpips", perceptual_net="alex", disc_ndf=8, disc_layers=2))
    crit.double()
    assert all(p.dtype == torch.float64 for p in crit.perceptual.parameters())
    off = PQGANLoss(LossConfig(perceptual="stlpips", perceptual_net="alex", perceptual_weight=0.0, disc_ndf=8,
                               disc_layers=2))
    assert off.perceptual is None and off.perceptual_name == "none"        # weight 0: no network is built
    assert all(p.dtype == torch.float64 for p in crit.discriminator.parameters())
