"""Deterministic evaluation (pqgan-eval never augments; --resize HxW / centre crop) and the official metric."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pqgan.config import apply_overrides, load_config
from pqgan.data import build_dataset
from pqgan.evaluate import build_eval_dataset, evaluate, parse_size, run

from model_helpers import write_texture_images

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.resolution=32", "model.resolution=32", "loss.perceptual=none", "train.val_fraction=0.5"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Five non-square random-texture images (48x40)."""
    return write_texture_images(tmp_path_factory.mktemp("eval_images"), 5, 48, 40)


def _cfg():
    return apply_overrides(load_config("tiny_f8_pq"), TINY)


@pytest.mark.parametrize("split", ["all", "train", "val"])
def test_eval_dataset_never_augments(image_dir, split):
    """Whatever the split and the RNG state, the same file gives the same tensor: the centre crop, unflipped."""
    cfg = _cfg()
    ds = build_eval_dataset(cfg, image_dir, split, 32)
    torch.manual_seed(1)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(2)
    second = [ds[i] for i in range(len(ds))]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # the training dataset (control) does augment "all"
    train_ds = build_dataset(image_dir, 32, split="all")
    torch.manual_seed(1)
    t1 = torch.stack([train_ds[i] for i in range(len(train_ds))])
    torch.manual_seed(2)
    t2 = torch.stack([train_ds[i] for i in range(len(train_ds))])
    assert not torch.equal(t1, t2)


def test_resize_mode_is_the_whole_image(image_dir):
    ds = build_eval_dataset(_cfg(), image_dir, "all", 32, resize_to=(24, 32))
    x = ds[0]
    assert x.shape == (3, 24, 32)
    with Image.open(ds.files[0]) as im:
        want = np.asarray(im.convert("RGB").resize((32, 24), Image.BILINEAR), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(x, torch.from_numpy(want).permute(2, 0, 1))


def test_parse_size():
    assert parse_size("256x256") == (256, 256) and parse_size("128") == (128, 128) and parse_size("16X32") == (16, 32)
    for bad in ("0x3", "axb", "1x2x3"):
        with pytest.raises(Exception, match="HxW"):
            parse_size(bad)


def test_two_evaluation_passes_agree_and_float64_works(image_dir):
    from pqgan.model import PQGAN
    cfg = _cfg()
    torch.manual_seed(0)
    model = PQGAN(cfg.model)
    ds = build_eval_dataset(cfg, image_dir, "all", 32)
    torch.manual_seed(3)
    a = evaluate(model, ds, batch_size=2)
    torch.manual_seed(4)
    b = evaluate(model, ds, batch_size=3)
    assert a["num_images"] == 5 and a["psnr_pooled_db"] == pytest.approx(b["psnr_pooled_db"], abs=1e-4)  # batching only
    assert a["codebook_usage_per_subspace"] == b["codebook_usage_per_subspace"]
    c = evaluate(model.double(), ds, batch_size=2)
    assert c["psnr_pooled_db"] == pytest.approx(a["psnr_pooled_db"], abs=1e-3)


def test_cli_whole_folder_resize_and_official_metric(tmp_path, image_dir):
    from pqgan import checkpoint as ckpt
    from pqgan.model import PQGAN
    perceptual = pytest.importorskip("pqgan.perceptual")
    cfg = _cfg()
    torch.manual_seed(0)
    model = PQGAN(cfg.model)
    root = tmp_path / "ckpts"
    ckpt.save_checkpoint(str(root), step=7, model=model, config=cfg.to_dict())
    out1, out2 = tmp_path / "e1", tmp_path / "e2"
    args = [str(root), "--data", image_dir, "--split", "all", "--resize", "40x32", "--no-fid", "--perceptual",
            "none", "--batch-size", "2"]
    m1 = run(args + ["--out", str(out1)])
    m2 = run(args + ["--out", str(out2)])
    assert m1["num_images"] == 5 and m1["image_size"] == [40, 32] and m1["preprocess"] == "resize 40x32"
    assert m1["psnr_pooled_db"] == m2["psnr_pooled_db"] and m1["ssim"] == m2["ssim"]
    if perceptual.lpips_available("alex") or perceptual.stlpips_available("alex"):
        name = m1["official_perceptual"]
        assert name in ("LPIPS-alex", "ST-LPIPS-alex") and m1[name] > 0 and m1[name] == m2[name]
        assert json.load(open(out1 / "metrics.json"))[name] == m1[name]
    crop = run([str(root), "--data", image_dir, "--split", "all", "--center-crop", "--no-fid", "--perceptual",
                "none", "--no-official-lpips", "--out", str(tmp_path / "e3")])
    assert crop["image_size"] == [32, 32] and crop["official_perceptual"] is None
