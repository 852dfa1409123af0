"""--resume never deletes a usable checkpoint and never silently starts over (issue 13).

A 2-step run keeps step_00000001 and step_00000002; each test damages a copy of it the way a user or a crash
would, runs ``pqgan-train`` and checks what happened on disk, byte for byte. The kill -9 test publishes checkpoints
in a child process that SIGKILLs itself at seeded random points of the write (after tearing the file it was about
to fsync) and checks that a complete checkpoint, at least as new as the last one reported saved, is always found.
"""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from kernel_checks import torch_threads
from pqgan import checkpoint as ckpt
from pqgan.train import run
from test_train import ROOT, TINY, _tiny_model, image_dir  # noqa: F401  (image_dir is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(out, steps, data, *flags):
    argv = ["--config", "tiny_f8_pq", "--out", str(out), "--steps", str(steps), "--data", data, "--device", "cpu",
            "--no-progress"]
    for item in TINY + ["train.ckpt_every=1"]:
        argv += ["--set", item]
    return argv + list(flags)


def _snapshot(folder, skip=()):
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, folder)
            if rel not in skip:
                out[rel] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _model_of(step_dir):
    return ckpt.load_tensors(os.path.join(step_dir, ckpt.MODEL_FILE))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, image_dir):  # noqa: F811
    out = tmp_path_factory.mktemp("base") / "run"
    with torch_threads(1):                                # as the tests (one_thread): same float reductions
        run(_argv(out, 2, image_dir, "--keep-checkpoints"))
    assert sorted(ckpt.step_dirs(str(out / "checkpoints"))) == ["step_00000001", "step_00000002"]
    return out


@pytest.fixture
def run_dir(base_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


@pytest.mark.parametrize("damage", ["missing", "truncated", "names_a_missing_step"])
def test_resume_with_broken_last_json_takes_the_newest_complete_checkpoint(run_dir, image_dir, damage,  # noqa: F811
                                                                           capsys):
    pointer = run_dir / "checkpoints" / "last.json"
    if damage == "missing":
        pointer.unlink()
    elif damage == "truncated":
        pointer.write_bytes(pointer.read_bytes()[:12])
    else:
        pointer.write_text(json.dumps({"step": 9, "dir": "step_00000009"}))
    before = _snapshot(run_dir, skip={"checkpoints/last.json"})
    result = run(_argv(run_dir, 2, image_dir, "--resume"))
    err = capsys.readouterr().err
    assert result["step"] == 2
    assert "using the newest complete checkpoint instead" in err and "step_00000002" in err, err
    assert "starting from scratch" not in err
    # nothing was rewritten or deleted: both checkpoints and the log are byte-identical
    assert _snapshot(run_dir, skip={"checkpoints/last.json", "config.yaml"}) == \
        {k: v for k, v in before.items() if k != "config.yaml"}
    saved = _model_of(run_dir / "checkpoints" / "step_00000002")
    assert all(torch.equal(v, saved[k]) for k, v in result["model"].state_dict().items())


def test_resume_falls_back_when_the_latest_checkpoint_lost_a_file(run_dir, base_run, image_dir, capsys):  # noqa: F811
    (run_dir / "checkpoints" / "step_00000002" / ckpt.MODEL_FILE).unlink()
    first_record = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    result = run(_argv(run_dir, 2, image_dir, "--resume"))
    err = capsys.readouterr().err
    assert os.path.join("step_00000002", ckpt.MODEL_FILE) + ": missing" in err, err
    assert "using the newest complete checkpoint instead" in err and "step_00000001" in err
    assert result["step"] == 2
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first_record and [json.loads(x)["step"] for x in lines] == [1, 2]   # step 1 kept, 2 redone
    original = _model_of(base_run / "checkpoints" / "step_00000002")   # exact resume reproduces step 2
    assert all(torch.equal(v, original[k]) for k, v in result["model"].state_dict().items())


def test_resume_refuses_when_every_checkpoint_is_damaged(run_dir, image_dir):  # noqa: F811
    for name in ("step_00000001", "step_00000002"):
        path = run_dir / "checkpoints" / name / ckpt.STATE_FILE
        path.write_bytes(path.read_bytes()[:40])
    before = _snapshot(run_dir)
    with pytest.raises(SystemExit) as info:
        run(_argv(run_dir, 4, image_dir, "--resume"))
    message = str(info.value)
    assert "none is complete" in message and "--fresh" in message
    assert os.path.join("step_00000002", ckpt.STATE_FILE) in message
    assert _snapshot(run_dir) == before


def test_a_run_without_resume_refuses_a_run_dir_with_checkpoints(run_dir, image_dir):  # noqa: F811
    before = _snapshot(run_dir)
    with pytest.raises(SystemExit) as info:
        run(_argv(run_dir, 2, image_dir))
    assert "--resume" in str(info.value) and "--fresh" in str(info.value)
    assert _snapshot(run_dir) == before


def test_fresh_moves_the_old_run_aside_and_starts_over(run_dir, image_dir):  # noqa: F811
    before = _snapshot(run_dir)
    with pytest.raises(SystemExit):
        run(_argv(run_dir, 2, image_dir, "--fresh", "--resume"))
    result = run(_argv(run_dir, 1, image_dir, "--fresh"))
    assert result["step"] == 1
    previous = [e for e in os.listdir(run_dir) if e.startswith("previous-")]
    assert len(previous) == 1
    assert _snapshot(run_dir / previous[0]) == before                   # every old file, unchanged
    assert ckpt.step_dirs(str(run_dir / "checkpoints")) == ["step_00000001"]
    assert [json.loads(x)["step"] for x in open(run_dir / "metrics.jsonl")] == [1]


def test_cleanup_removes_only_checkpoints_older_than_the_new_one(tmp_path):
    cfg, model = _tiny_model()
    root = str(tmp_path)
    for step in (1, 2, 5):
        ckpt.save_checkpoint(root, step=step, model=model, config=cfg.to_dict(), keep=True)
    ckpt.atomic_write_json(os.path.join(root, ckpt.LAST), {"step": 2, "dir": "step_00000002"})  # resumed at 2
    newer = _snapshot(os.path.join(root, "step_00000005"))
    ckpt.save_checkpoint(root, step=3, model=model, config=cfg.to_dict())
    assert ckpt.step_dirs(root) == ["step_00000005", "step_00000003"]
    assert _snapshot(os.path.join(root, "step_00000005")) == newer
    ckpt.save_checkpoint(root, step=3, model=model, config=cfg.to_dict())   # same step again: a revision
    assert ckpt.step_dirs(root) == ["step_00000005", "step_00000003.r1"]


# --- kill -9 while a checkpoint is written -------------------------------------------------------------------------

CHILD = r"""
import os, shutil, signal, sys
import torch
from pqgan import checkpoint as ckpt

root, kill_at, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
calls = [0]

def point(fd=None):
    calls[0] += 1
    if calls[0] == kill_at:
        if fd is not None:                    # tear the file whose data was about to reach the disk
            try:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

real_fsync, real_replace, real_unlink, real_rmtree = os.fsync, os.replace, os.unlink, shutil.rmtree
def fsync(fd):
    point(fd)
    real_fsync(fd)
def replace(*a, **k):
    point()
    real_replace(*a, **k)
def unlink(*a, **k):
    point()
    real_unlink(*a, **k)
os.fsync, os.replace, os.unlink = fsync, replace, unlink

model = torch.nn.Linear(3, 2)
opt = torch.optim.Adam(model.parameters())
for step in range(first, last + 1):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    ckpt.save_checkpoint(root, step=step, model=model, optimizers={"opt": opt}, config={"marker": step})
    print("saved", step, flush=True)
print("calls", calls[0], flush=True)
"""


def _child(root, kill_at, first, last):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(kill_at), str(first), str(last)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    saved = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("saved")]
    return proc, saved


def _check_resumable(root):
    """The checkpoint a resume takes loads completely; returns its step."""
    target, notes = ckpt.find_checkpoint(str(root))
    assert target is not None, notes
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    loaded = ckpt.load_checkpoint(target, model=model, optimizers={"opt": opt})
    step = loaded["state"]["step"]
    assert loaded["config"]["marker"] == step and torch.all(model.weight == step)
    return step


def test_kill_9_at_random_points_of_checkpoint_writes_leaves_a_resumable_run(tmp_path):
    proc, saved = _child(tmp_path / "count", 0, 1, 3)
    assert proc.returncode == 0 and saved == [1, 2, 3], proc.stderr[-2000:]
    per_save = int(proc.stdout.split("calls")[1]) // 3
    # seeded random points inside the 2nd and 3rd saves (the 1st leaves nothing older to fall back to)
    points = sorted(random.Random(13).sample(range(per_save + 1, 3 * per_save + 1), 4))
    for kill_at in points:
        root = tmp_path / f"kill{kill_at}"
        proc, saved = _child(root, kill_at, 1, 3)
        assert proc.returncode == -9, (kill_at, proc.returncode, proc.stderr[-2000:])
        step = _check_resumable(root)
        assert step >= max(saved), (kill_at, step, saved)      # nothing reported saved was lost
        model = torch.nn.Linear(3, 2)                            # the resumed run goes on (here) and cleans up
        opt = torch.optim.Adam(model.parameters())
        for later in range(step + 1, 5):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(later)
            ckpt.save_checkpoint(str(root), step=later, model=model, optimizers={"opt": opt},
                                 config={"marker": later})
        assert _check_resumable(root) == 4
        assert ckpt.step_dirs(str(root)) == ["step_00000004"]
        assert [e for e in os.listdir(root) if e.startswith(".tmp")] == []
