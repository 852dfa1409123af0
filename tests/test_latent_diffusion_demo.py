"""Smoke test of benchmarks/demos/latent_diffusion_demo.py: both stages run end to end on tiny settings (CPU, seconds)."""
import importlib
import json

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

@pytest.fixture(scope="module")
def demo():
    return importlib.import_module("benchmarks.demos.latent_diffusion_demo")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_cases_follow_the_paper_configs(demo):
    cases = demo.bench_cases(256)
    assert [c["latent"] for c in cases] == [[128, 32, 32], [128, 16, 16], [128, 32, 32]]
    assert [c["image_size"] for c in cases] == [256, 256, 512]


def test_bench_stage_runs(demo, tmp_path):
    assert demo.main(["--stage", "bench", "--image-size", "64", "--bench-batch", "1", "--bench-width", "32",
                      "--bench-repeats", "1", "--bench-warmup", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    f8, f16, f16_2x = result["cases"]
    assert f8["latent"] == f16_2x["latent"] == [128, 8, 8] and f16["latent"] == [128, 4, 4]
    assert f16_2x["forward_gflops"] == f8["forward_gflops"] > 0  # the same denoiser input: the same work
    assert 0.2 < f16["forward_gflops"] / f8["forward_gflops"] < 0.3  # convs 1/4, attention less, time MLP 1
    assert all(c["train_ms_median"] > 0 and c["sample_ms_median"] > 0 for c in result["cases"])


def test_demo_stage_runs(demo, tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(data / f"{i}.png")
    out = tmp_path / "out"
    assert demo.main(["--stage", "demo", "--data", str(data), "--resolution", "32", "--ae-steps", "2",
                      "--ae-batch", "2", "--num-latents", "4", "--diff-steps", "2", "--diff-batch", "2",
                      "--num-samples", "2", "--sample-steps", "2", "--out", str(out)]) == 0
    info = json.loads((out / "demo.json").read_text())
    assert info["latent_shape"] == [16, 4, 4] and info["denoiser"]["steps"] == 2
    with Image.open(out / "samples.png") as im:
        assert im.size[0] > 32 and im.size[1] > 4 * 32
    # the saved autoencoder reloads with its scaling factor
    from pqgan.checkpoint import load_pretrained
    model = load_pretrained(str(out / "pqgan"))
    assert float(model.scaling_factor) == pytest.approx(info["scaling_factor"], rel=1e-6)
