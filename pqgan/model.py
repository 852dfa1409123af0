"""PQGAN: a VQGAN-style autoencoder whose bottleneck is a ``ProductQuantizer``.

Images are (B, C, R, R) in [-1, 1]. With F = 2**(len(ch_mult) - 1) and h = w = R / F:

    encode_to_latent(img) -> z   (B, D, h, w)   continuous, after quant_conv
    quantize(z)           -> QuantizerOutput(quantized (B, D, h, w), indices (B, h, w, S), loss, stats)
    decode_latent(zq)     -> img (B, C, R, R)   via post_quant_conv and the decoder
    encode(img)           -> indices (B, h, w, S) int64
    decode_indices(idx)   -> img
    forward(img)          -> (recon, QuantizerOutput)

Latent interface for diffusion models (``pqgan/latents.py``): encode_latents(img) -> scaled quantised latents,
decode_latents(z) -> images from re-quantised z, fit_scaling_factor(data); ``scaling_factor`` is a buffer.

VQ (S = 1) and scalar quantisation (d = D / S = 1) are the same class with other config numbers.

With ``model.norm_mean`` / ``model.norm_std`` set (the official PQGAN weights: ImageNet statistics), the networks
work on normalised images n = (x01 - mean) / std; ``PQGAN`` still takes and returns [-1, 1] images
(``to_network`` / ``from_network`` convert). Every method works in float32 and float64 (``model.double()``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Union

import torch
from torch import nn

from .config import Config, ModelConfig
from .latents import LatentInterface
from .modules import Decoder, Encoder
from .quantizer import ProductQuantizer, QuantizerOutput


class PQGAN(LatentInterface, nn.Module):
    """Encoder -> 1x1 quant_conv -> ProductQuantizer -> 1x1 post_quant_conv -> Decoder."""

    def __init__(self, config: Union[ModelConfig, Config, dict[str, Any]]):
        super().__init__()
        if isinstance(config, Config):
            config = config.model
        if isinstance(config, dict):
            config = ModelConfig(**config)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig or a dict, got {type(config).__name__}")
        self.config = config
        c = config
        self.encoder = Encoder(ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks,
                               attn_resolutions=c.attn_resolutions, in_channels=c.in_channels,
                               resolution=c.resolution, z_channels=c.z_channels, dropout=c.dropout,
                               double_z=c.double_z)
        self.decoder = Decoder(ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks,
                               attn_resolutions=c.attn_resolutions, out_channels=c.out_channels,
                               resolution=c.resolution, z_channels=c.z_channels, dropout=c.dropout)
        self.quant_conv = nn.Conv2d(c.z_channels * (2 if c.double_z else 1), c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)
        self.quantizer = ProductQuantizer(c.embed_dim, c.num_subspaces, c.codebook_size, ema_decay=c.ema_decay,
                                          commitment_weight=c.commitment_weight, codebook_weight=c.codebook_weight,
                                          distance=c.distance, kmeans_init=c.kmeans_init,
                                          dead_code_threshold=c.dead_code_threshold, backend=c.backend,
                                          codebook_init=c.codebook_init)
        # Latent-diffusion scale (see pqgan/latents.py): 1 / std of the quantised latents once fitted.
        self.register_buffer("scaling_factor", torch.ones((), dtype=torch.float32))
        # Image normalisation the networks were trained with (identity for [-1, 1] models); not saved: config.
        mean = c.norm_mean if c.norm_mean is not None else (0.5,) * c.in_channels
        std = c.norm_std if c.norm_std is not None else (0.5,) * c.in_channels
        self.register_buffer("norm_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def normalizes(self) -> bool:
        """True when the networks see mean/std-normalised images rather than [-1, 1] ones."""
        return self.config.norm_mean is not None

    def to_network(self, img: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, C, H, W) -> what the encoder takes: (x01 - norm_mean) / norm_std, or img itself."""
        if not self.normalizes:
            return img
        mean, std = self.norm_mean.to(img.dtype), self.norm_std.to(img.dtype)
        return ((img + 1) / 2 - mean) / std

    def from_network(self, out: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_network``: decoder outputs (B, C, H, W) -> [-1, 1] images (not clamped)."""
        if not self.normalizes:
            return out
        mean, std = self.norm_mean.to(out.dtype), self.norm_std.to(out.dtype)
        return (out * std + mean) * 2 - 1

    @classmethod
    def from_config(cls, config: Union[ModelConfig, Config, dict[str, Any], str]) -> "PQGAN":
        """From a ModelConfig, a Config, a dict of ModelConfig fields, or a config name / YAML path."""
        if isinstance(config, str):
            from .config import load_config
            config = load_config(config).model
        return cls(config)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's final conv weight: the adaptive GAN weight compares gradient norms here."""
        return self.decoder.conv_out.weight

    def _check_image(self, img: torch.Tensor) -> None:
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"img must be a torch.Tensor, got {type(img).__name__}")
        if not img.is_floating_point():
            raise TypeError(f"img must be a floating tensor in [-1, 1], got dtype {img.dtype}")
        f = self.downsample_factor
        if img.dim() != 4 or img.shape[1] != self.config.in_channels:
            raise ValueError(f"img must be (B, {self.config.in_channels}, H, W), got shape {tuple(img.shape)}")
        if img.shape[0] == 0 or img.shape[2] % f or img.shape[3] % f or img.shape[2] == 0 or img.shape[3] == 0:
            raise ValueError(f"img height and width must be positive multiples of {f}, got shape "
                             f"{tuple(img.shape)}")

    def encode_to_latent(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> continuous pre-quantisation latents (B, D, H/F, W/F)."""
        self._check_image(img)
        return self.quant_conv(self.encoder(self.to_network(img)))

    def _quant_dtype(self, z: torch.Tensor) -> torch.dtype:
        """float64 for a float64 model/latent, else float32 (half-precision latents are upcast)."""
        return torch.float64 if z.dtype == torch.float64 else torch.float32

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise (B, D, h, w) latents in float32, or float64 for float64 latents (outside any autocast)."""
        kind = z.device.type
        autocast_on = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        ctx = torch.autocast(kind, enabled=False) if autocast_on else contextlib.nullcontext()
        with ctx:
            return self.quantizer(z.to(self._quant_dtype(z)))

    def decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) quantised latents -> (B, C, h*F, w*F) images."""
        if zq.dim() != 4 or zq.shape[1] != self.config.embed_dim:
            raise ValueError(f"latents must be (B, {self.config.embed_dim}, h, w), got shape {tuple(zq.shape)}")
        return self.from_network(self.decoder(self.post_quant_conv(zq.to(self.post_quant_conv.weight.dtype))))

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        q = self.quantize(self.encode_to_latent(img))
        return self.decode_latent(q.quantized), q

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> indices (B, H/F, W/F, S) int64."""
        z = self.encode_to_latent(img)
        return self.quantizer.encode(z.to(self._quant_dtype(z)))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w, S) -> images (B, C, h*F, w*F)."""
        if indices.dim() != 4:
            raise ValueError(f"indices must be (B, h, w, S={self.config.num_subspaces}), got shape "
                             f"{tuple(indices.shape)}")
        zq = self.quantizer.decode(indices)
        return self.decode_latent(zq.to(self.post_quant_conv.weight.dtype))

    def num_parameters(self, part: str = "all") -> int:
        """Parameter count of "all", "encoder", "decoder" or "quantizer"."""
        modules = {"all": self, "encoder": self.encoder, "decoder": self.decoder, "quantizer": self.quantizer}
        if part not in modules:
            raise ValueError(f"part must be one of {sorted(modules)}, got {part!r}")
        return sum(p.numel() for p in modules[part].parameters())


__all__ = ["PQGAN"]
