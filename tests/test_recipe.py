"""The official PQGAN training recipe in the paper configs, and the two training options it needs:
train.preprocess=resize (whole image to R x R, no crop/flip) and loss.on_normalized (losses on normalised images)."""
import numpy as np
import pytest
import torch
from PIL import Image

from pqgan.config import IMAGENET_MEAN, IMAGENET_STD, apply_overrides, load_config

from model_helpers import write_texture_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name, steps", [("f8_k512_d128_s64", 600_000), ("f16_k128_d128_s64", 550_000)])
def test_paper_configs_carry_the_official_recipe(name, steps):
    cfg = load_config(name)
    t, loss, m = cfg.train, cfg.loss, cfg.model
    assert t.learning_rate == 4.5e-6                                   # flat: not scaled by the batch
    assert apply_overrides(cfg, ["train.batch_size=4"]).train.learning_rate == 4.5e-6
    assert t.betas == (0.5, 0.9) and t.batch_size == 30 and t.preprocess == "resize" and t.bf16
    assert t.steps == steps and t.resolution == 256 and t.weight_decay == 0.0
    assert loss.disc_start == 1 and loss.disc_weight == 0.8 and loss.disc_loss == "hinge"
    assert loss.perceptual_net == "vgg" and loss.l1_weight == 1.0 and loss.perceptual_weight == 1.0
    assert loss.on_normalized and loss.codebook_loss_weight == 1.0 and loss.disc_layers == 3
    assert m.norm_mean == IMAGENET_MEAN and m.norm_std == IMAGENET_STD
    assert (m.commitment_weight, m.codebook_weight, m.ema_decay) == (1.0, 0.25, None)


def test_other_configs_keep_our_preprocessing():
    for name in ("tiny_f8_pq", "tiny_f8_vq", "tiny_f16_pq"):
        cfg = load_config(name)
        assert cfg.train.preprocess == "crop" and not cfg.loss.on_normalized and cfg.model.norm_mean is None


def test_config_validation():
    with pytest.raises(ValueError, match="preprocess"):
        apply_overrides(load_config("tiny_f8_pq"), ["train.preprocess=stretch"])
    with pytest.raises(ValueError, match="together"):
        apply_overrides(load_config("tiny_f8_pq"), ["model.norm_mean=[0.5,0.5,0.5]"])
    with pytest.raises(ValueError, match="norm_std"):
        apply_overrides(load_config("tiny_f8_pq"), ["model.norm_mean=[0.5,0.5,0.5]", "model.norm_std=[1,0,1]"])


@pytest.fixture
def one_photo(tmp_path):
    """One 48x40 image, img0.png (not square, so a crop and a resize differ)."""
    write_texture_images(tmp_path, 1, 48, 40)
    return tmp_path


@pytest.mark.parametrize("normalized", [True, False])
def test_one_training_step_sees_the_recipe_images(tmp_path, one_photo, monkeypatch, normalized):
    """train.preprocess=resize feeds the whole image resized to R x R; with loss.on_normalized the loss gets
    (x01 - mean) / std of that image (and the matching reconstruction), otherwise the [-1, 1] image (control)."""
    from pqgan import losses, train
    seen = {}
    original = losses.PQGANLoss.generator_loss

    def spy(self, img, recon, *args, **kwargs):
        seen.setdefault("img", img.detach().clone())
        seen.setdefault("recon", recon.detach().clone())
        return original(self, img, recon, *args, **kwargs)

    monkeypatch.setattr(losses.PQGANLoss, "generator_loss", spy)
    from pqgan.model import PQGAN
    forward = PQGAN.forward

    def spy_forward(self, img):
        recon, q = forward(self, img)
        seen.setdefault("model_out", recon.detach().clone())
        return recon, q

    monkeypatch.setattr(PQGAN, "forward", spy_forward)
    cfg = apply_overrides(load_config("tiny_f8_pq"), [
        "train.resolution=32", "model.resolution=32", "loss.perceptual=none", "train.batch_size=1",
        "train.num_workers=0", "train.preprocess=resize", f"loss.on_normalized={str(normalized).lower()}",
        f"model.norm_mean={list(IMAGENET_MEAN)}", f"model.norm_std={list(IMAGENET_STD)}", "train.val_fraction=0",
        "train.steps=1", "train.ckpt_every=100"])
    cfg.train.data_root = str(one_photo)
    result = train.train(cfg, str(tmp_path / "run"), progress=False)
    with Image.open(one_photo / "img0.png") as im:
        x01 = torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR),
                                          dtype=np.float32) / 255).permute(2, 0, 1)[None]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    want = (x01 - mean) / std if normalized else x01 * 2 - 1
    torch.testing.assert_close(seen["img"], want, atol=1e-5, rtol=0)
    assert result["model"].normalizes
    out = seen["model_out"]                                            # the model's [-1, 1] reconstruction
    want_recon = ((out + 1) / 2 - mean) / std if normalized else out
    torch.testing.assert_close(seen["recon"], want_recon, atol=1e-5, rtol=0)


def test_every_vq_config_has_a_setting_against_collapse():
    """S=1 with the N(0, 1) init and nothing else collapses to one code (issue 17): every VQ config opts out."""
    from pqgan.config import available_configs
    vq = [n for n in available_configs() if load_config(n).model.num_subspaces == 1]
    assert set(vq) >= {"tiny_f8_vq", "f8_vq_k16384_d8", "f16_vq_k16384_d8"}
    for name in vq:
        m = load_config(name).model
        assert m.kmeans_init and m.dead_code_threshold > 0, name
