"""--resume reproduces an uninterrupted run exactly, with training that draws random numbers every step (dead-code
re-seeding picks random batch rows), so a resume that does not restore the RNG state, the optimisers or the data
position shows up. There is no learning-rate scheduler in pqgan.train (constant lr): nothing to restore there."""
import json

import numpy as np
import pytest
import torch

from pqgan import checkpoint as ckpt

from model_helpers import write_texture_images

pytestmark = pytest.mark.usefixtures("one_thread")

# 32px images, 4x4 latents, batch 2 -> 32 rows per step for 64 codes: half of every codebook is dead each step and
# re-seeded from random rows. GAN on from step 1 so both optimisers move.
SETTINGS = ["train.resolution=32", "model.resolution=32", "loss.perceptual=none", "loss.disc_start=1",
            "train.batch_size=2", "train.log_every=1", "train.sample_every=100", "train.ckpt_every=100",
            "train.num_workers=0", "train.val_fraction=0", "model.dead_code_threshold=1.0",
            "model.ch=16", "model.z_channels=16"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Six small random-texture images (36x40): 3 batches per epoch, so 5 steps cross an epoch end."""
    return write_texture_images(tmp_path_factory.mktemp("images"), 6, 36, 40)


def _train(out, steps, image_dir, resume=False, extra=()):
    from pqgan.train import run
    argv = ["--config", "tiny_f8_pq", "--out", str(out), "--steps", str(steps), "--data", image_dir,
            "--device", "cpu", "--no-progress"]
    for item in SETTINGS:
        argv += ["--set", item]
    return run(argv + (["--resume"] if resume else []) + list(extra))


def _log(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, image_dir):
    root = tmp_path_factory.mktemp("runs")
    straight = _train(root / "a", 5, image_dir)
    _train(root / "b", 2, image_dir)
    torch.manual_seed(12345)                              # whatever the process did in between must not matter
    np.random.seed(12345)
    resumed = _train(root / "b", 5, image_dir, resume=True)
    return root, straight, resumed


def test_resume_is_bit_exact_with_random_dead_code_picks(runs):
    root, straight, resumed = runs
    assert resumed["step"] == 5
    for a, b in ((straight["model"], resumed["model"]), (straight["loss"].discriminator,
                                                          resumed["loss"].discriminator)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_resume_logs_the_same_losses_step_by_step(runs):
    """Same batches in the same order (data position and augmentation) and same updates, step by step."""
    root, _, _ = runs
    a, b = _log(root / "a"), _log(root / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    keys = ["loss/generator", "loss/discriminator", "gen/l1", "quant/loss", "quant/usage_mean"]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert all(r["quant/usage_mean"] < 0.5 for r in a)   # most codes unused each step: dead, so re-seeded


def test_resume_restores_both_optimisers(runs):
    root, _, _ = runs
    ta = ckpt.load_tensors(str(root / "a" / "checkpoints" / "step_00000005" / ckpt.OPTIM_FILE))
    tb = ckpt.load_tensors(str(root / "b" / "checkpoints" / "step_00000005" / ckpt.OPTIM_FILE))
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    gen = {float(v) for k, v in tb.items() if k.startswith("generator/") and k.endswith("/step")}
    disc = {float(v) for k, v in tb.items() if k.startswith("discriminator/") and k.endswith("/step")}
    assert gen == {5.0} and disc == {4.0}     # Adam's step counts continued from 2 (D trains from step index 1)
    ja = ckpt.read_json(str(root / "a" / "checkpoints" / "step_00000005" / ckpt.OPTIM_JSON))
    jb = ckpt.read_json(str(root / "b" / "checkpoints" / "step_00000005" / ckpt.OPTIM_JSON))
    assert ja == jb


def test_resume_restores_the_rng_streams(runs):
    """The RNG states saved at the end equal the uninterrupted run's (torch, numpy, python)."""
    root, _, _ = runs
    sa = ckpt.read_json(str(root / "a" / "checkpoints" / "step_00000005" / ckpt.STATE_FILE))
    sb = ckpt.read_json(str(root / "b" / "checkpoints" / "step_00000005" / ckpt.STATE_FILE))
    assert sa["rng"] == sb["rng"] and sa["step"] == sb["step"] == 5 and sa["epoch"] == sb["epoch"] == 1


def test_without_resume_the_second_run_starts_over(tmp_path, image_dir, runs):
    """Control: 2 steps, then the 3 remaining steps run WITHOUT --resume (--fresh: it starts again from step 0,
    so it ends as a 3-step run) differ from the uninterrupted 5-step run (so the checks above can fail). A second
    run from step 0 to 5 would reproduce the straight run exactly, so it cannot serve as this control."""
    _, straight, _ = runs
    _train(tmp_path / "c", 2, image_dir)
    fresh = _train(tmp_path / "c", 3, image_dir, extra=["--fresh"])   # no --resume: starts again from step 0
    assert fresh["step"] == 3
    assert not torch.equal(fresh["model"].quantizer.codebooks, straight["model"].quantizer.codebooks) or \
        any(not torch.equal(v, straight["model"].state_dict()[k]) for k, v in fresh["model"].state_dict().items())
