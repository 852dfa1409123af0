"""The bad-image zoo (issue 13): each kind of awkward or broken file with its expected outcome, then training and
evaluation over a folder holding a bad file (skipped, warned about once by name, counted as ``skipped_files``;
the run stops only past the allowed fraction)."""
import contextlib
import errno
import json
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pqgan import checkpoint as ckpt
from pqgan.data import (BadImageWarning, ImageFolder, ImageReadError, TooManyBadImages, load_image, to_rgb,
                        to_tensor)
from test_train import TINY, _tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
R = 16                                                   # output side of the datasets below


def png16(path, array):
    """Write a 16-bit PNG by hand (PIL cannot write 16-bit RGB): array (H, W) grey or (H, W, 3) RGB, uint16."""
    array = np.asarray(array, dtype=">u2")
    h, w = array.shape[:2]
    colour = 2 if array.ndim == 3 else 0
    rows = b"".join(b"\x00" + array[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def _uniform(size, colour):
    return Image.new("RGB", size, colour)


def _unit(t):
    """[-1, 1] tensor -> [0, 1]."""
    return (t + 1) / 2


# --- each file on its own ------------------------------------------------------------------------------------------

def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    for value, expected in ((32768, 128), (65535, 255), (0, 0), (257 * 40, 40)):
        png16(tmp_path / "g.png", np.full((6, 7), value))
        image = load_image(tmp_path / "g.png")
        assert image.mode == "RGB" and np.all(np.asarray(image) == expected), (value, np.asarray(image)[0, 0])
    png16(tmp_path / "g.png", np.full((6, 7), 32768))
    assert float(_unit(to_tensor(load_image(tmp_path / "g.png"))).mean()) == pytest.approx(0.5, abs=0.003)


def test_16_bit_rgb_is_scaled(tmp_path):
    png16(tmp_path / "c.png", np.stack([np.full((5, 9), v) for v in (32768, 65535, 0)], axis=-1))
    values = _unit(to_tensor(load_image(tmp_path / "c.png")))
    assert values.shape == (3, 5, 9)
    torch.testing.assert_close(values[:, 0, 0], torch.tensor([0.5, 1.0, 0.0]), atol=0.003, rtol=0)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I"])
def test_every_16_bit_grey_mode_is_scaled(mode):
    a = np.full((3, 4), 32768)
    raw = a.astype({"I;16B": ">u2", "I": "<i4"}.get(mode, "<u2")).tobytes()
    image = Image.frombytes(mode, (4, 3), raw)
    assert np.all(np.asarray(to_rgb(image)) == 128)


def test_awkward_but_valid_images_load(tmp_path):
    """5x5, 1x300, CMYK, palette and alpha images all become (3, R, R) RGB with their colours."""
    _uniform((5, 5), (10, 200, 30)).save(tmp_path / "tiny.png")
    _uniform((1, 300), (90, 80, 70)).save(tmp_path / "line.png")
    Image.new("CMYK", (20, 12), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)     # pure cyan
    pal = Image.new("P", (10, 10))
    pal.putpalette([0, 0, 0, 250, 5, 5] + [0] * 762)
    pal.putpixel((3, 3), 1)
    pal.save(tmp_path / "palette.png")
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (40, 50, 60)
    rgba[:5, :, 3] = 255                                 # half opaque, half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    ds = ImageFolder(tmp_path, R, split="all", random_crop=False, flip=False, max_bad_fraction=0.0)
    got = {p.name: ds[i] for i, p in enumerate(ds.files)}
    assert all(t.shape == (3, R, R) for t in got.values()) and ds.skipped_files == 0
    as_255 = {k: (_unit(v) * 255) for k, v in got.items()}
    torch.testing.assert_close(as_255["tiny.png"].mean((1, 2)), torch.tensor([10.0, 200.0, 30.0]), atol=0.6, rtol=0)
    torch.testing.assert_close(as_255["line.png"].mean((1, 2)), torch.tensor([90.0, 80.0, 70.0]), atol=0.6, rtol=0)
    torch.testing.assert_close(as_255["cmyk.jpg"].mean((1, 2)), torch.tensor([0.0, 255.0, 255.0]), atol=3, rtol=0)
    assert torch.equal(as_255["alpha.png"][:, 0, 0].round(), torch.tensor([40.0, 50.0, 60.0]))  # alpha ignored
    palette = np.asarray(load_image(tmp_path / "palette.png"))
    assert tuple(palette[3, 3]) == (250, 5, 5) and tuple(palette[0, 0]) == (0, 0, 0)


def _broken_files(folder):
    """Corrupt bytes, a truncated JPEG and PNG, a symlink loop; returns their names."""
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    noise.save(folder / "full.jpg", quality=90)
    noise.save(folder / "full.png")
    (folder / "corrupt.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:600])
    (folder / "truncated.png").write_bytes((folder / "full.png").read_bytes()[:900])
    (folder / "full.jpg").unlink()
    (folder / "full.png").unlink()
    os.symlink("loop.png", folder / "loop.png")
    return ["corrupt.png", "truncated.jpg", "truncated.png", "loop.png"]


@pytest.mark.parametrize("name", ["corrupt.png", "truncated.jpg", "truncated.png", "loop.png"])
def test_undecodable_file_error_names_it(tmp_path, name):
    _broken_files(tmp_path)
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)


def test_io_error_names_the_file(tmp_path, monkeypatch):
    """An EIO from the disk (injected into PIL's open) comes back naming the file and the error."""
    _uniform((8, 8), (1, 2, 3)).save(tmp_path / "ok.png")

    def failing_open(path, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(Image, "open", failing_open)
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / "ok.png")
    assert str(tmp_path / "ok.png") in str(info.value) and "Input/output error" in str(info.value)


def test_bad_files_are_skipped_warned_once_and_counted(tmp_path):
    bad = _broken_files(tmp_path)
    for i in range(4):
        _uniform((20, 20), (i * 60, 10, 10)).save(tmp_path / f"good{i}.png")
    with pytest.warns(BadImageWarning) as record:
        ds = ImageFolder(tmp_path, R, split="all", max_bad_fraction=0.5)
        for _ in range(2):                               # two epochs: each bad file still warns only once
            items = [ds[i] for i in range(len(ds))]
    messages = [str(w.message) for w in record]
    for name in bad:
        assert sum(str(tmp_path / name) in m for m in messages) == 1, (name, messages)
    assert ds.skipped_files == 4 and sorted(p.name for p in ds.skipped) == sorted(bad)
    assert len(ds) == 7 and all(t.shape == (3, R, R) for t in items)   # bad ones replaced by the next good file
    with pytest.warns(BadImageWarning):
        drop = ImageFolder(tmp_path, R, split="all", on_bad="drop", max_bad_fraction=0.5)
        kept = [drop[i] for i in range(len(drop))]
    assert sum(t is None for t in kept) == 3 and drop.skipped_files == 4


def test_too_many_bad_files_stop_with_their_names(tmp_path):
    _broken_files(tmp_path)
    for i in range(4):
        _uniform((20, 20), (i * 60, 10, 10)).save(tmp_path / f"good{i}.png")
    with pytest.warns(BadImageWarning), pytest.raises(TooManyBadImages) as info:
        ds = ImageFolder(tmp_path, R, split="all", max_bad_fraction=0.3)   # 1 of 8 unlisted so far: allowed
        for i in range(len(ds)):
            ds[i]
    assert "of 8 image files are unreadable" in str(info.value) and str(tmp_path / "corrupt.png") in str(info.value)


@contextlib.contextmanager
def _without_root_reads():
    """As root, chmod 000 does not stop reads: run the block with effective uid nobody (65534) instead."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(65534)
    except PermissionError:
        pytest.skip("running as root without CAP_SETUID: chmod 000 cannot make a file unreadable here")
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_file_is_skipped():
    folder = tempfile.mkdtemp(prefix="pqgan-unreadable-")     # not under pytest's 0700 tmp dir: nobody can enter
    try:
        os.chmod(folder, 0o755)
        for name in ("a.png", "locked.png", "z.png"):
            _uniform((20, 20), (100, 10, 10)).save(os.path.join(folder, name))
        locked = os.path.join(folder, "locked.png")
        os.chmod(locked, 0)
        load_image(os.path.join(folder, "a.png"))          # PIL's plugins imported before privileges drop
        ds = ImageFolder(folder, R, split="all", on_bad="drop", max_bad_fraction=0.5)
        with _without_root_reads(), pytest.warns(BadImageWarning) as record:
            items = [ds[i] for i in range(3)]
        assert [t is None for t in items] == [False, True, False]
        assert ds.skipped_files == 1 and any(locked in str(w.message) and "Permission denied" in str(w.message)
                                             for w in record)
    finally:
        shutil.rmtree(folder)


# --- training and evaluation over a folder with a bad file ---------------------------------------------------------

@pytest.fixture
def folder_with_a_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "img9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    return root


def _train_argv(out, data, steps, *flags):
    argv = ["--config", "tiny_f8_pq", "--out", str(out), "--steps", str(steps), "--data", str(data), "--device",
            "cpu", "--no-progress"]
    for item in TINY + ["train.val_fraction=0", "train.ckpt_every=1", "train.sample_every=100"]:
        argv += ["--set", item]
    return argv + list(flags)


@pytest.mark.parametrize("workers", [0, 1])
def test_training_skips_a_bad_file_and_counts_it(folder_with_a_bad_file, tmp_path, workers):
    """With a loader worker the bad file is met in the worker process; the count still reaches the log."""
    from pqgan.train import run
    bad = str(folder_with_a_bad_file / "img9.png")
    argv = _train_argv(tmp_path / "run", folder_with_a_bad_file, 6, "--max-bad-fraction", "0.2",
                       "--set", f"train.num_workers={workers}")
    with pytest.warns(BadImageWarning) if workers == 0 else contextlib.nullcontext() as record:
        result = run(argv)                               # 10 files, 5 batches per epoch: 6 steps draw every file
    assert result["step"] == 6
    if workers == 0:                                     # a worker's warning goes to its own stderr
        assert sum(bad in str(w.message) for w in record) == 1
    log = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert log[-1]["step"] == 6 and log[-1]["skipped_files"] == 1


def test_training_past_the_allowed_fraction_stops_and_keeps_its_work(folder_with_a_bad_file, tmp_path):
    from pqgan.train import run
    out = tmp_path / "run"
    with pytest.warns(BadImageWarning), pytest.raises(SystemExit) as info:   # default: 1% of 10 files
        run(_train_argv(out, folder_with_a_bad_file, 6))
    message = str(info.value)
    assert str(folder_with_a_bad_file / "img9.png") in message and "allowed fraction" in message
    done = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert len(done) >= 1                                # the bad file is drawn after the first step (seed 0)
    assert ckpt.read_json(str(out / "checkpoints" / "last.json"))["step"] == done[-1]


def test_eval_leaves_out_a_bad_file_and_reports_it(folder_with_a_bad_file, tmp_path):
    from pqgan.evaluate import run as eval_run
    cfg, model = _tiny_model()
    ckpt.save_checkpoint(str(tmp_path / "ckpts"), step=3, model=model, config=cfg.to_dict())
    truncated = folder_with_a_bad_file / "img8.png"
    truncated.write_bytes(truncated.read_bytes()[:700])
    argv = [str(tmp_path / "ckpts"), "--data", str(folder_with_a_bad_file), "--split", "all", "--no-fid",
            "--perceptual", "none", "--no-official-lpips", "--device", "cpu", "--batch-size", "4",
            "--out", str(tmp_path / "eval")]
    with pytest.warns(BadImageWarning):
        result = eval_run(argv + ["--max-bad-fraction", "0.25"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["num_images"] == 8 and saved["skipped_files"] == 2
    assert sorted(saved["skipped_file_names"]) == sorted([str(truncated), str(folder_with_a_bad_file / "img9.png")])
    assert result["skipped_files"] == 2
    with pytest.warns(BadImageWarning), pytest.raises(SystemExit) as info:
        eval_run(argv)
    assert "allowed fraction" in str(info.value) and "img" in str(info.value)
