"""Smoke test of benchmarks/study/study_pq_vs_vq.py: 2 training steps of two tiny configs on synthetic photos.

Checks the per-run and combined JSON fields, that a re-run skips finished runs (resume), and that --report fills
the table section of a markdown file and writes the PNG plot. Synthetic images keep it independent of BSDS500.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.study import study_pq_vs_vq as study

RUNS = "vq_D16_S1_K256,pq_D16_S8_K256"


def _photos(folder: Path, count: int, seed: int) -> Path:
    """Smooth random colour images (48x40), so crops are not constant."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:48] / 40.0
    for i in range(count):
        a = rng.uniform(0, 6, size=(3, 3))
        img = np.stack([np.sin(a[c, 0] * xx + a[c, 1] * yy + a[c, 2]) for c in range(3)], -1)
        img = ((img * 0.4 + 0.5 + rng.normal(0, 0.05, img.shape)).clip(0, 1) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    train = _photos(base / "train", 6, 0)
    test = _photos(base / "test", 3, 1)
    perceptual = "stlpips" if importlib.util.find_spec("stlpips_pytorch") else "none"
    args = ["--runs", RUNS, "--steps", "2", "--batch-size", "2", "--crop", "32", "--scale", "32",
            "--eval-crop", "32", "--eval-images", "2", "--train-dirs", str(train), "--eval-dir", str(test),
            "--out", str(base / "out"), "--perceptual", perceptual, "--log-every", "0"]
    assert study.main(args) == 0
    return base, args


def test_run_json_fields(study_dir):
    base, _ = study_dir
    combined = json.loads((base / "out" / "study.json").read_text())
    assert combined["gan"] is False
    names = [r["name"] for r in combined["runs"]]
    assert names == RUNS.split(",")
    assert "pq_D128_S64_K256" in combined["missing"]
    for rec in combined["runs"]:
        for key in ("bits_per_image", "psnr", "ssim", "stlpips", "codebook_usage", "codebook_perplexity",
                    "train_time_s", "D", "S", "d", "K", "budget", "groups", "machine"):
            assert key in rec, key
        assert rec["budget"]["steps"] == 2 and rec["train_steps"] == 2
        assert rec["num_eval_images"] == 2 and rec["eval_image_size"] == [32, 32]
        assert 0 < rec["codebook_usage"] <= 1 and 1 <= rec["codebook_perplexity"] <= rec["K"]
        assert np.isfinite(rec["psnr"]) and -1 <= rec["ssim"] <= 1
        assert rec["bits_per_image"] == 4 * 4 * rec["S"] * 8          # 32px / F8 -> 4x4 latents, K=256 -> 8 bits
    vq, pq = combined["runs"]
    assert (vq["kind"], vq["S"], vq["d"]) == ("VQ", 1, 16)
    assert (pq["kind"], pq["S"], pq["d"]) == ("PQ", 8, 2)


def test_resume_skips_finished_runs(study_dir, capsys):
    base, args = study_dir
    path = base / "out" / "runs" / "vq_D16_S1_K256.json"
    before = path.read_text()
    assert study.main(args) == 0
    assert "done, skipped" in capsys.readouterr().out
    assert path.read_text() == before


def test_report_fills_markdown_and_plot(study_dir):
    base, _ = study_dir
    docs = base / "results.md"
    docs.write_text(f"# Results\n\n{study.TABLE_BEGIN}\nold\n{study.TABLE_END}\n\ntext after\n")
    plot = base / "plot.png"
    assert study.main(["--report", "--out", str(base / "out"), "--docs", str(docs), "--plot", str(plot),
                       "--eval-dir", str(base / "test")]) == 0
    text = docs.read_text()
    assert "old" not in text and "vq_D16_S1_K256" in text and "text after" in text
    assert "Missing" in text and "per-image mean colour" in text
    assert plot.is_file() and plot.stat().st_size > 1000


def test_bad_selection():
    with pytest.raises(SystemExit):
        study.main(["--runs", "no_such_run", "--list"])
    runs = study.study_runs()
    assert len(runs) == 14
    assert runs["pq_D128_S64_K256"]["groups"] == ["d_sweep", "s_sweep", "k_sweep"]
