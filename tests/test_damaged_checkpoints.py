"""Every checkpoint file truncated, bit-flipped or missing in turn (issue 13): loading reports one line naming the
file and what is wrong (never a bare SafetensorError / JSONDecodeError, never silently wrong weights), a resume
falls back to the previous complete checkpoint, and pqgan-eval needs only config.json and model.safetensors."""
import json
import os
import shutil

import pytest
import torch

from pqgan import checkpoint as ckpt
from pqgan.evaluate import run as eval_run
from test_train import _tiny_model, image_dir  # noqa: F401  (image_dir is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

FILES = [ckpt.MODEL_FILE, ckpt.DISC_FILE, ckpt.OPTIM_FILE, ckpt.OPTIM_JSON, ckpt.CONFIG_FILE, ckpt.STATE_FILE,
         ckpt.MANIFEST_FILE]
DAMAGES = ["truncated", "bit_flipped", "missing"]
EVAL_NEEDS = {ckpt.MODEL_FILE, ckpt.CONFIG_FILE, ckpt.MANIFEST_FILE}


def _modules():
    cfg, model = _tiny_model()
    torch.manual_seed(1)
    disc = torch.nn.Conv2d(3, 4, 3)
    opt = torch.optim.Adam(list(model.parameters()) + list(disc.parameters()), lr=1e-3)
    loss = sum(p.square().sum() for p in model.parameters()) + disc.weight.sum()
    loss.backward()
    opt.step()                                           # so the optimizer has state tensors
    return cfg, model, disc, opt


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint root with a complete step 6 and step 7 (keep=True)."""
    root = tmp_path_factory.mktemp("ckpts")
    cfg, model, disc, opt = _modules()
    for step in (6, 7):
        ckpt.save_checkpoint(str(root), step=step, model=model, discriminator=disc, optimizers={"g": opt},
                             config=cfg.to_dict(), keep=True)
    return root


def _damage(path, how):
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:                                                # one bit, in the middle of the file
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(flipped))


@pytest.fixture(params=[(f, d) for f in FILES for d in DAMAGES], ids=lambda p: f"{p[0]}-{p[1]}")
def damaged(request, saved, tmp_path):
    """A copy of ``saved`` whose step_00000007/<file> is damaged; returns (root, file, damage)."""
    root = tmp_path / "checkpoints"
    shutil.copytree(saved, root)
    name, how = request.param
    _damage(root / "step_00000007" / name, how)
    return root, name, how


def _load_all(step_dir):
    cfg, model, disc, opt = _modules()
    return ckpt.load_checkpoint(str(step_dir), model=model, discriminator=disc, optimizers={"g": opt})


def test_loading_a_damaged_file_names_it_in_one_line(damaged):
    root, name, how = damaged
    step_dir = root / "step_00000007"
    if name == ckpt.MANIFEST_FILE and how == "missing":
        _load_all(step_dir)                              # read like a checkpoint written before manifests
        return
    with pytest.raises((FileNotFoundError, ckpt.CheckpointError)) as info:
        _load_all(step_dir)
    message = str(info.value)
    assert "\n" not in message and str(step_dir / name) in message, message
    expected = {"missing": ": missing", "truncated": "bytes, but", "bit_flipped": "SHA-256 mismatch"}[how]
    if name == ckpt.MANIFEST_FILE:
        expected = "not valid JSON" if how == "truncated" else "damaged"
    assert expected in message, message


def test_resume_takes_the_previous_complete_checkpoint(damaged):
    root, name, how = damaged
    target, notes = ckpt.find_checkpoint(str(root))
    if name == ckpt.MANIFEST_FILE and how == "missing":
        assert target == str(root / "step_00000007") and notes == []
        return
    assert target == str(root / "step_00000006")
    assert any(str(root / "step_00000007" / name) in note for note in notes), notes
    _load_all(target)


def test_eval_reads_only_what_it_needs(damaged, image_dir, tmp_path, capsys):  # noqa: F811
    root, name, how = damaged
    argv = [str(root / "step_00000007"), "--data", image_dir, "--split", "all", "--max-images", "2",
            "--batch-size", "2", "--no-fid", "--perceptual", "none", "--no-official-lpips", "--device", "cpu",
            "--out", str(tmp_path / "eval")]
    if name in EVAL_NEEDS and not (name == ckpt.MANIFEST_FILE and how == "missing"):
        with pytest.raises(SystemExit) as info:
            eval_run(argv)
        message = str(info.value)
        assert message.startswith("pqgan-eval: ") and "\n" not in message
        assert str(root / "step_00000007" / name) in message, message
        assert not (tmp_path / "eval" / "metrics.json").exists()
    else:
        result = eval_run(argv)
        assert result["step"] == 7 and result["num_images"] == 2
        assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["step"] == 7


def test_eval_of_a_run_dir_falls_back_and_says_so(saved, image_dir, tmp_path, capsys):  # noqa: F811
    """pqgan-eval RUN with the latest checkpoint's model truncated evaluates the previous one, saying why."""
    run = tmp_path / "run"
    shutil.copytree(saved, run / "checkpoints")
    _damage(run / "checkpoints" / "step_00000007" / ckpt.MODEL_FILE, "truncated")
    result = eval_run([str(run), "--data", image_dir, "--split", "all", "--max-images", "2", "--no-fid",
                       "--perceptual", "none", "--no-official-lpips", "--device", "cpu"])
    err = capsys.readouterr().err
    assert result["step"] == 6 and result["checkpoint"] == str(run / "checkpoints" / "step_00000006")
    assert str(run / "checkpoints" / "step_00000007" / ckpt.MODEL_FILE) in err, err
    assert os.path.isfile(run / "eval-all-step_00000006" / "metrics.json")
