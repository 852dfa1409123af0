"""Nothing we read is unpickled (issue 13): a source-level check of pqgan/, pqgan_kernels/ and benchmarks/, and a
pickle bomb -- a file whose unpickling creates a marker file -- at each place we read: the torch hub cache
(LPIPS backbones), a checkpoint directory (in place of each checkpoint file, and beside them under the names other
tools use) and a run directory. In every case the marker must not appear, and a refused file is named."""
import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from pqgan import checkpoint as ckpt
from test_train import ROOT, _tiny_model, image_dir  # noqa: F401  (image_dir is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SCANNED = ("pqgan", "pqgan_kernels", "benchmarks")
# Modules whose loaders unpickle, and calls that do (or that download-and-unpickle).
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNPICKLING_CALLS = {"load_state_dict_from_url", "load_url", "read_pickle", "Unpickler"}


class Bomb:
    """Unpickling this creates ``path`` (builtins.open(path, "w")): proof that code in the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_bomb(path, marker, style="torch"):
    """A pickle bomb at ``path``: torch.save's zip format, or a bare pickle stream."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "torch":
        torch.save({"weight": Bomb(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Bomb(marker)))


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def unpickling_sites(source, filename="<string>"):
    """(line, what) for every place in ``source`` that may unpickle: torch.load without weights_only=True,
    imports of pickle-based modules, np.load(allow_pickle=True), torch.hub / torchvision download loaders,
    lpips.LPIPS with package-loaded weights (pretrained / a non-random trunk) and pretrained=True anywhere."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any((n or "").split(".")[0] in UNPICKLING_MODULES for n in names):
                found.append((node.lineno, "imports " + ", ".join(n for n in names if n)))
            continue
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        is_true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        if name == "torch.load" and not is_true(kw.get("weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and \
                not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False) \
                and "allow_pickle" in kw:
            found.append((node.lineno, "numpy load with allow_pickle"))
        if name.split(".")[-1] in UNPICKLING_CALLS or name in ("torch.hub.load",):
            found.append((node.lineno, name))
        if name.split(".")[-1] == "LPIPS" and name.startswith("lpips") and not (
                isinstance(kw.get("pretrained"), ast.Constant) and kw["pretrained"].value is False
                and is_true(kw.get("pnet_rand"))):
            found.append((node.lineno, "lpips.LPIPS loading its own weights (torchvision hub + torch.load)"))
        if "pretrained" in kw and not name.endswith("LPIPS") and not (
                isinstance(kw["pretrained"], ast.Constant) and kw["pretrained"].value is False):
            found.append((node.lineno, f"{name}(pretrained=...) (torchvision hub loader)"))
    return found


def test_the_source_check_catches_each_pattern():
    """Control: every unpickling pattern is flagged, the safe spellings are not."""
    bad = ["import pickle", "from joblib import load", "torch.load(p)", "torch.load(p, weights_only=False)",
           "np.load(p, allow_pickle=True)", "torch.hub.load_state_dict_from_url(u)", "torch.hub.load(r, m)",
           "lpips.LPIPS(net='alex')", "lpips.LPIPS(net='alex', pretrained=False)", "tv.alexnet(pretrained=True)",
           "pd.read_pickle(p)"]
    for line in bad:
        assert unpickling_sites(line), line
    good = ["torch.load(p, map_location='cpu', weights_only=True)", "np.load(p)", "json.load(f)",
            "lpips.LPIPS(net=n, pretrained=False, pnet_rand=True, verbose=False)", "safetensors.torch.load_file(p)"]
    for line in good:
        assert not unpickling_sites(line), line


def test_no_unpickling_in_the_package_kernels_or_benchmarks():
    offenders = []
    for top in SCANNED:
        for path in sorted(Path(ROOT, top).rglob("*.py")):
            for line, what in unpickling_sites(path.read_text(), str(path)):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert offenders == []


# --- hub cache (LPIPS backbones) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize("style", ["torch", "pickle"])
def test_pickle_bomb_in_the_hub_cache_does_not_run(tmp_path, monkeypatch, net, style):
    pytest.importorskip("lpips")
    from pqgan.config import LossConfig
    from pqgan.evaluate import official_perceptual
    from pqgan.losses import PQGANLoss
    from pqgan.perceptual import build_perceptual, lpips_backbone_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "EXECUTED"
    write_bomb(lpips_backbone_path(net), marker, style)
    assert str(tmp_path) in str(lpips_backbone_path(net))
    for kind in ("lpips", "auto"):                       # pqgan-train / pqgan-eval with loss.perceptual=auto
        with pytest.raises(RuntimeError) as info:
            build_perceptual(kind, net)
        assert not marker.exists()
        assert str(lpips_backbone_path(net)) in str(info.value) and "refused" in str(info.value)
    with pytest.raises(RuntimeError):
        PQGANLoss(LossConfig(perceptual="auto", perceptual_net=net))
    if net == "alex":
        assert official_perceptual() is None             # eval: the official metric is left out, said on stderr
    assert not marker.exists()


def test_lpips_loaded_by_us_equals_the_package(tmp_path, monkeypatch):
    """Control for the loader that replaced torchvision's: a (seeded, random) backbone in the cache gives exactly
    the distances of lpips' own loading path."""
    lpips = pytest.importorskip("lpips")
    import torchvision
    from pqgan.perceptual import build_perceptual, lpips_backbone_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    path = lpips_backbone_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    ours = build_perceptual("lpips", "alex")
    theirs = lpips.LPIPS(net="alex", verbose=False).eval()   # unpickles: acceptable only for our own test file
    x, y = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    torch.testing.assert_close(ours(x, y), theirs(x, y).flatten().detach(), rtol=0, atol=0)
    assert float(ours(x, y).min()) > 0


def test_pickle_bomb_as_stlpips_weights_is_refused(tmp_path):
    from pqgan.perceptual import STLPIPS
    marker = tmp_path / "EXECUTED"
    write_bomb(tmp_path / "alex_shift_tolerant.pth", marker)
    with pytest.raises(RuntimeError) as info:
        STLPIPS("alex", weights=tmp_path / "alex_shift_tolerant.pth")
    assert not marker.exists()
    assert str(tmp_path / "alex_shift_tolerant.pth") in str(info.value)


# --- checkpoint directory and run directory ------------------------------------------------------------------------

EXTRA_NAMES = ("model.pt", "pytorch_model.bin", "optimizer.pt", "rng_state.pth", "training_args.bin", "last.ckpt")


@pytest.fixture
def run_dir(tmp_path, image_dir):  # noqa: F811
    from pqgan.train import run
    out = tmp_path / "run"
    argv = ["--config", "tiny_f8_pq", "--out", str(out), "--steps", "1", "--data", image_dir, "--device", "cpu",
            "--no-progress"]
    for item in ("train.resolution=32", "model.resolution=32", "loss.perceptual=none", "train.batch_size=2",
                 "train.num_workers=0", "train.sample_every=100"):
        argv += ["--set", item]
    run(argv)
    return out, argv


def _eval_argv(path, image_dir, out):  # noqa: F811
    return [str(path), "--data", image_dir, "--split", "all", "--max-images", "2", "--no-fid", "--perceptual",
            "none", "--no-official-lpips", "--device", "cpu", "--out", str(out)]


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.DISC_FILE, ckpt.OPTIM_FILE, ckpt.OPTIM_JSON,
                                  ckpt.CONFIG_FILE, ckpt.STATE_FILE, ckpt.MANIFEST_FILE])
def test_pickle_bomb_in_place_of_a_checkpoint_file_does_not_run(run_dir, image_dir, tmp_path, name):  # noqa: F811
    from pqgan.evaluate import run as eval_run
    from pqgan.train import run
    out, argv = run_dir
    step_dir = out / "checkpoints" / "step_00000001"
    marker = tmp_path / "EXECUTED"
    write_bomb(step_dir / name, marker)
    assert str(step_dir / name) in ckpt.checkpoint_problem(str(step_dir))
    if name in (ckpt.MODEL_FILE, ckpt.CONFIG_FILE, ckpt.MANIFEST_FILE):
        with pytest.raises((ckpt.CheckpointError, FileNotFoundError)) as info:
            ckpt.load_pretrained(str(out))
        assert str(step_dir / name) in str(info.value)
        with pytest.raises(SystemExit) as info:
            eval_run(_eval_argv(out, image_dir, tmp_path / "eval"))
        assert str(step_dir / name) in str(info.value)
    with pytest.raises(SystemExit) as info:              # the only checkpoint is damaged: resume refuses
        run(argv + ["--resume", "--steps", "2"])
    assert str(step_dir / name) in str(info.value)
    assert not marker.exists()


def test_pickle_bombs_beside_the_checkpoint_and_in_the_run_dir_do_not_run(run_dir, image_dir, tmp_path):  # noqa: F811
    from pqgan.evaluate import run as eval_run
    from pqgan.train import run
    out, argv = run_dir
    marker = tmp_path / "EXECUTED"
    step_dir = out / "checkpoints" / "step_00000001"
    for folder in (out, out / "checkpoints", step_dir):
        for name in EXTRA_NAMES:
            write_bomb(folder / name, marker)
    log = (out / "metrics.jsonl").read_bytes()
    (out / "metrics.jsonl").write_bytes(log + pickle.dumps(Bomb(marker)))   # junk after the records
    write_bomb(out / "config.yaml", marker)
    result = eval_run(_eval_argv(out, image_dir, tmp_path / "eval"))
    assert result["step"] == 1
    resumed = run(argv + ["--resume", "--steps", "2"])
    assert resumed["step"] == 2
    assert (out / "metrics.jsonl").read_bytes().startswith(log)             # the real records are kept
    _, model = _tiny_model(["train.resolution=32", "model.resolution=32"])
    ckpt.load_checkpoint(str(out), model=model)
    assert not marker.exists()
