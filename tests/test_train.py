"""Checkpoints, exact resume, DDP codebook agreement, and the train / eval CLIs end to end (CPU, tiny models)."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pqgan import checkpoint as ckpt
from pqgan.config import apply_overrides, load_config
from pqgan.data import photo_dir

from model_helpers import write_texture_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = photo_dir()  # real photos (PQGAN_DATA) for the CLI test when set; else its synthetic images
PHOTOS = PHOTOS if PHOTOS is not None and PHOTOS.is_dir() else None
# Tiny and fast: 32px images, 4x4 latents, no perceptual network, GAN on from step 1 (so both optimisers move).
TINY = ["train.resolution=32", "model.resolution=32", "loss.perceptual=none", "loss.disc_start=1",
        "train.batch_size=2", "train.log_every=1", "train.sample_every=2", "train.ckpt_every=100",
        "train.num_workers=0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(extra=()):
    out = []
    for item in list(TINY) + list(extra):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Six small random-texture images (40x36), enough for 3 batches of 2."""
    return write_texture_images(tmp_path_factory.mktemp("images"), 6, 40, 36)


def _tiny_model(extra=()):
    from pqgan.model import PQGAN
    cfg = apply_overrides(load_config("tiny_f8_pq"), list(TINY) + list(extra))
    torch.manual_seed(0)
    return cfg, PQGAN(cfg.model)


# --- checkpoint files ----------------------------------------------------------------------------------------------

def test_checkpoint_roundtrip_identical_outputs(tmp_path):
    from pqgan.losses import PQGANLoss
    cfg, model = _tiny_model()
    disc = PQGANLoss(cfg.loss).discriminator
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for _ in range(2):                                   # move weights and create Adam state
        recon, q = model(x)
        ((recon - x).abs().mean() + q.loss).backward()
        opt.step()
        opt.zero_grad()
    root = str(tmp_path / "checkpoints")
    path = ckpt.save_checkpoint(root, step=2, model=model, discriminator=disc, optimizers={"generator": opt},
                                config=cfg.to_dict(), state={"epoch": 0})
    assert os.path.basename(path) == "step_00000002"
    assert json.load(open(os.path.join(root, "last.json")))["dir"] == "step_00000002"
    loaded = ckpt.load_pretrained(str(tmp_path))         # run dir -> checkpoints/last.json -> step dir
    model.eval()
    assert not loaded.training
    with torch.no_grad():
        ref, ref_q = model(x)
        out, out_q = loaded(x)
    assert torch.equal(ref, out) and torch.equal(ref_q.indices, out_q.indices)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # optimizer state and discriminator come back bit-exact
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    disc2 = PQGANLoss(cfg.loss).discriminator
    info = ckpt.load_checkpoint(path, discriminator=disc2, optimizers={"generator": opt2})
    assert info["state"]["step"] == 2 and info["state"]["epoch"] == 0
    for k, v in disc.state_dict().items():
        assert torch.equal(v, disc2.state_dict()[k])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, b["state"][pid][key]), (pid, key)


def test_rng_state_roundtrip():
    import random
    state = ckpt.capture_rng_state()
    state = json.loads(json.dumps(state))                # must survive JSON
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_publish_is_atomic(tmp_path, monkeypatch):
    cfg, model = _tiny_model()
    root = str(tmp_path)
    ckpt.save_checkpoint(root, step=1, model=model, config=cfg.to_dict())
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.decoder.conv_out.weight.add_(1.0)
    real_replace = os.replace
    for fail_on in ("step_00000002", "last.json"):       # killed before / while publishing
        def flaky(src, dst, _target=fail_on):
            if os.path.basename(dst) == _target:
                raise KeyboardInterrupt("killed")
            return real_replace(src, dst)
        monkeypatch.setattr(ckpt.os, "replace", flaky)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(root, step=2, model=model, config=cfg.to_dict())
        monkeypatch.setattr(ckpt.os, "replace", real_replace)
        target = ckpt.resolve_checkpoint(root)
        assert target.endswith("step_00000001")
        loaded = ckpt.load_tensors(os.path.join(target, ckpt.MODEL_FILE))
        assert all(torch.equal(loaded[k], good[k]) for k in good)
    ckpt.save_checkpoint(root, step=3, model=model, config=cfg.to_dict())
    assert sorted(e for e in os.listdir(root)) == ["last.json", "step_00000003"]  # old and temp dirs cleaned


def test_resolve_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_checkpoint(str(tmp_path))
    (tmp_path / "last.json").write_text(json.dumps({"step": 1, "dir": "step_00000001"}))
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_checkpoint(str(tmp_path))


# --- training ------------------------------------------------------------------------------------------------------

def _train(out, steps, image_dir, resume=False, extra=()):
    from pqgan.train import run
    argv = ["--config", "tiny_f8_pq", "--out", str(out), "--steps", str(steps), "--data", image_dir,
            "--device", "cpu", "--no-progress"] + _sets(extra)
    if resume:
        argv.append("--resume")
    return run(argv)


def test_resume_matches_uninterrupted_run(tmp_path, image_dir):
    """4 steps straight == 2 steps + resume to 4, bit for bit (with a loader worker, crossing an epoch end)."""
    workers = ["train.num_workers=1", "train.val_fraction=0"]   # 6 images: 3 batches an epoch
    straight = _train(tmp_path / "a", 4, image_dir, extra=workers)
    _train(tmp_path / "b", 2, image_dir, extra=workers)
    assert ckpt.read_json(str(tmp_path / "b" / "checkpoints" / "last.json"))["step"] == 2
    resumed = _train(tmp_path / "b", 4, image_dir, resume=True, extra=workers)
    assert resumed["step"] == 4
    sa, sb = straight["model"].state_dict(), resumed["model"].state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    da, db = straight["loss"].discriminator.state_dict(), resumed["loss"].discriminator.state_dict()
    for k in da:
        assert torch.equal(da[k], db[k]), k
    # optimizer state (Adam step counts and moments) continued too
    for name in ("generator", "discriminator"):
        ta = ckpt.load_tensors(str(tmp_path / "a" / "checkpoints" / "step_00000004" / "optimizer.safetensors"))
        tb = ckpt.load_tensors(str(tmp_path / "b" / "checkpoints" / "step_00000004" / "optimizer.safetensors"))
        keys = [k for k in ta if k.startswith(name + "/")]
        assert keys and all(torch.equal(ta[k], tb[k]) for k in keys)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    adam_steps = {float(v) for k, v in tb.items() if k.startswith("generator/") and k.endswith("/step")}
    assert adam_steps == {4.0}
    # the GAN was on: the discriminator moved away from its initialisation
    assert any(json.loads(line)["loss/discriminator"] > 0 for line in open(tmp_path / "a" / "metrics.jsonl"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, image_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = _train(out, 2, image_dir, extra=["model.ema_decay=0.9", "model.dead_code_threshold=0.5"])
    state = {k: v.contiguous() for k, v in result["model"].state_dict().items()}
    ckpt.save_tensors(os.path.join(out, f"rank{rank}.safetensors"), state)


def test_ddp_two_cpu_processes_keep_codebooks_identical(tmp_path, image_dir):
    import torch.multiprocessing as mp
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    mp.spawn(_ddp_worker, args=(2, _free_port(), out, image_dir), nprocs=2, join=True)
    r0 = ckpt.load_tensors(os.path.join(out, "rank0.safetensors"))
    r1 = ckpt.load_tensors(os.path.join(out, "rank1.safetensors"))
    assert set(r0) == set(r1)
    for k in r0:                                         # buffers are not broadcast: EMA agreement is the quantiser's
        assert torch.equal(r0[k], r1[k]), k
    _, fresh = _tiny_model(["model.ema_decay=0.9"])
    assert not torch.equal(r0["quantizer.codebooks"], fresh.state_dict()["quantizer.codebooks"])
    saved = ckpt.load_tensors(os.path.join(ckpt.resolve_checkpoint(out), ckpt.MODEL_FILE))
    assert torch.equal(saved["quantizer.codebooks"], r0["quantizer.codebooks"])
    state = ckpt.read_json(os.path.join(ckpt.resolve_checkpoint(out), ckpt.STATE_FILE))
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["rng"][0] != state["rng"][1]


# --- command lines -------------------------------------------------------------------------------------------------

def _cli(module, args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", module] + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cli_train_then_evaluate(tmp_path, image_dir):
    """Real photos (PQGAN_DATA) where set, else the synthetic images."""
    data = str(PHOTOS) if PHOTOS else image_dir
    run = tmp_path / "run"
    _cli("pqgan.train", ["--config", "tiny_f8_pq", "--out", str(run), "--steps", "3", "--data", data,
                         "--no-progress"] + _sets(["train.val_fraction=0.5"]))
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss/generator"]) and r["quant/perplexity_mean"] >= 1 for r in records)
    sample = Image.open(run / "samples" / "step_00000002.png")
    assert sample.size[0] == 2 * 32 + 3 * 2              # input | reconstruction, 2 px padding
    assert ckpt.read_json(str(run / "checkpoints" / "last.json"))["step"] == 3

    ev = tmp_path / "eval"
    proc = _cli("pqgan.evaluate", [str(run), "--data", data, "--split", "val", "--out", str(ev),
                                   "--max-images", "5", "--batch-size", "2", "--no-fid", "--perceptual", "none"])
    metrics = json.load(open(ev / "metrics.json"))
    n = 5 if PHOTOS else 3                               # 6 synthetic images, half of them in "val"
    assert metrics["num_images"] == n and metrics["step"] == 3 and metrics["split"] == "val"
    assert 0 < metrics["psnr_mean_per_image_db"] < 60 and 0 < metrics["psnr_pooled_db"] < 60
    assert -1 <= metrics["ssim"] <= 1
    assert metrics["bits_per_image"] == 4 * 4 * 8 * 6    # 4x4 latents, S=8, K=64 -> 6 bits
    assert len(metrics["codebook_usage_per_subspace"]) == 8
    assert metrics["fid"] is None
    assert Image.open(ev / "reconstructions.png").size == (2 * 32 + 3 * 2, n * 32 + (n + 1) * 2)
    assert "psnr_pooled_db" in proc.stdout


def test_evaluate_with_perceptual_metric(tmp_path, image_dir):
    """In-process evaluate() with the loss module's perceptual backend, labelled by its name."""
    from pqgan.evaluate import evaluate
    from pqgan.data import build_dataset
    perceptual_mod = pytest.importorskip("pqgan.perceptual")
    if not perceptual_mod.stlpips_available("alex"):
        pytest.skip("stlpips-pytorch not installed")
    net = perceptual_mod.build_perceptual("stlpips", "alex")
    _, model = _tiny_model()
    ds = build_dataset(image_dir, 32, split="all")
    m = evaluate(model, ds, batch_size=3, perceptual=net, grid_path=str(tmp_path / "g.png"))
    assert m["num_images"] == 6 and m[net.name] > 0 and "ST-LPIPS" in net.name
    assert (tmp_path / "g.png").is_file()


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, image_dir):
    """SIGKILL a training process that checkpoints every step; the latest checkpoint loads and --resume goes on."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "pqgan.train", "--config", "tiny_f8_pq", "--out", str(run), "--steps", "10000",
            "--data", image_dir, "--no-progress"] + _sets(["train.ckpt_every=1"])
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = run / "checkpoints" / "last.json"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if pointer.is_file() and json.loads(pointer.read_text())["step"] >= 2:
                break
            time.sleep(0.05)
        time.sleep(0.13)                                     # land somewhere inside a later step or save
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    target = ckpt.resolve_checkpoint(str(run))
    _, model = _tiny_model()
    step = ckpt.load_checkpoint(target, model=model)["state"]["step"]
    assert step >= 2
    resumed = _train(run, step + 1, image_dir, resume=True)
    assert resumed["step"] == step + 1
    logged = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert logged == list(range(1, step + 2))                # records past the checkpoint were dropped
    assert [e for e in os.listdir(run / "checkpoints") if e.startswith(".tmp")] == []


def test_default_eval_out_dir(tmp_path):
    from pqgan.evaluate import default_out_dir
    root = tmp_path / "run" / "checkpoints"
    (root / "step_00000007").mkdir(parents=True)
    (root / "last.json").write_text(json.dumps({"step": 7, "dir": "step_00000007"}))
    assert default_out_dir(str(root / "step_00000007"), "val") == str(tmp_path / "run" / "eval-val-step_00000007")
    assert default_out_dir(str(tmp_path / "mine"), "all") == str(tmp_path / "mine") + "-eval-all"


def test_batches_are_sharded_and_resumable():
    """Ranks see disjoint samples; starting at step t yields exactly the batches an uninterrupted stream has there."""
    from pqgan.train import DistInfo, ResumableBatches
    data = list(range(12))                                   # items are their own indices
    streams = [ResumableBatches(data, 2, DistInfo(rank, 2), seed=3, num_workers=0, pin_memory=False)
               for rank in (0, 1)]
    assert streams[0].batches_per_epoch == 3
    firsts = []
    for s in streams:
        it = s(0)
        firsts.append([next(it).tolist() for _ in range(7)])  # crosses two epoch ends
    epoch0 = [sum(f[:3], []) for f in firsts]
    assert sorted(epoch0[0] + epoch0[1]) == data              # one epoch covers the data once, split by rank
    assert sum(firsts[0][3:6], []) != epoch0[0]               # reshuffled each epoch
    for start in (1, 3, 5):
        it = streams[0](start)
        assert [next(it).tolist() for _ in range(7 - start)] == firsts[0][start:]
