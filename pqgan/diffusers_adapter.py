"""``DiffusersPQAutoencoder``: a trained ``PQGAN`` where a diffusers pipeline expects its autoencoder (``vae``).

It speaks the ``AutoencoderKL`` / ``VQModel`` protocol that diffusers pipelines and training scripts use, without
importing diffusers:

    ae = DiffusersPQAutoencoder(pqgan)                      # pqgan.fit_scaling_factor(...) first, for unit variance
    latents = ae.encode(images).latent_dist.sample() * ae.config.scaling_factor      # (B, D, h, w)
    images = ae.decode(latents / ae.config.scaling_factor).sample                     # (B, C, h*F, w*F)

Latents here are *unscaled* (the diffusers convention: pipelines multiply / divide by ``config.scaling_factor``
themselves). ``encode`` returns the quantised latent; its ``latent_dist`` is a point mass (``sample()`` ==
``mode()`` == ``mean``, std 0, KL 0), so sampling is deterministic. ``decode`` re-quantises its input (nearest code
per subspace) before decoding, like ``VQModel.decode``, so any diffusion sample decodes from valid PQ codes.
``config`` exposes ``scaling_factor``, ``shift_factor`` (None), ``latent_channels`` (D), ``block_out_channels``
(length log2(F) + 1, so pipelines compute ``vae_scale_factor`` = F), ``in_channels``, ``out_channels`` and
``sample_size``. The adapter is an ``nn.Module``: ``.to()``, ``.eval()``, ``dtype`` and ``device`` work as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from .model import PQGAN


class AdapterConfig(dict):
    """A dict with attribute read access (like diffusers' ``FrozenDict``); a fresh snapshot on every access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the adapter config is a snapshot; change the PQGAN (e.g. fit_scaling_factor) instead")


class PQLatentDistribution:
    """A point mass at the quantised latent, with ``DiagonalGaussianDistribution``'s interface.

    mean / mode() / sample(): (B, D, h, w); std, var: zeros; logvar: -inf is avoided (large negative, -30 as in
    diffusers' clamp); kl(): zeros (B,).
    """

    def __init__(self, latents: torch.Tensor):
        self.mean = latents
        self.std = torch.zeros_like(latents)
        self.var = torch.zeros_like(latents)
        self.logvar = torch.full_like(latents, -30.0)
        self.deterministic = True

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: Any = None) -> torch.Tensor:
        return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)


@dataclass
class PQEncoderOutput:
    """``encode`` result: ``latent_dist`` (a ``PQLatentDistribution``) and ``latents`` (its mean), unscaled."""
    latent_dist: PQLatentDistribution
    latents: torch.Tensor

    def __getitem__(self, i: int):
        return (self.latent_dist,)[i]


@dataclass
class PQDecoderOutput:
    """``decode`` result: ``sample`` (B, C, H, W) images in about [-1, 1]."""
    sample: torch.Tensor

    def __getitem__(self, i: int):
        return (self.sample,)[i]


class DiffusersPQAutoencoder(nn.Module):
    """Wraps ``pqgan`` (a ``PQGAN``); see the module docstring. ``pqgan`` is used as given (call ``.eval()``)."""

    def __init__(self, pqgan: PQGAN):
        super().__init__()
        if not isinstance(pqgan, PQGAN):
            raise TypeError(f"pqgan must be a PQGAN, got {type(pqgan).__name__}")
        self.pqgan = pqgan

    @classmethod
    def from_pretrained(cls, path: str, map_location: Union[str, torch.device] = "cpu") -> "DiffusersPQAutoencoder":
        """From a pqgan checkpoint directory, checkpoint root or run directory (``pqgan.checkpoint.load_pretrained``)."""
        from .checkpoint import load_pretrained
        return cls(load_pretrained(path, map_location=map_location))

    @property
    def config(self) -> AdapterConfig:
        c = self.pqgan.config
        levels = c.ch_mult
        return AdapterConfig(
            scaling_factor=float(self.pqgan.scaling_factor), shift_factor=None, latent_channels=c.embed_dim,
            vq_embed_dim=c.embed_dim, num_vq_embeddings=c.codebook_size, num_subspaces=c.num_subspaces,
            block_out_channels=tuple(c.ch * m for m in levels), in_channels=c.in_channels,
            out_channels=c.out_channels, sample_size=c.resolution, downsample_factor=c.downsample_factor,
            force_upcast=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.pqgan.post_quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.pqgan.post_quant_conv.weight.device

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images (B, C, H, W) in [-1, 1] -> ``PQEncoderOutput`` (unscaled quantised latents (B, D, H/F, W/F))."""
        latents = self.pqgan.encode_latents(x, scaled=False)
        dist = PQLatentDistribution(latents)
        return PQEncoderOutput(dist, latents) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Optional[torch.Generator] = None,
               **kwargs: Any):
        """Unscaled latents (B, D, h, w) -> ``PQDecoderOutput(sample=(B, C, h*F, w*F))``, after re-quantisation.

        Extra diffusers keywords (``force_not_quantize`` ...) are accepted and ignored: decoding always re-quantises.
        """
        sample = self.pqgan.decode_latents(z, scaled=False)
        return PQDecoderOutput(sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode then decode (the eval reconstruction)."""
        return self.decode(self.encode(sample).latents, return_dict=return_dict)


__all__ = ["AdapterConfig", "DiffusersPQAutoencoder", "PQDecoderOutput", "PQEncoderOutput", "PQLatentDistribution"]
