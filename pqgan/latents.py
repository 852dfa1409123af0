"""Latent interface of ``PQGAN`` for latent diffusion models: scaled, always-valid PQ latents.

A diffusion model is trained on ``encode_latents(img)``: the quantised latent (every position is a concatenation of
S codewords), times a stored ``scaling_factor`` that gives the latents unit variance on the training data. Its
samples are decoded by ``decode_latents(z)``, which unscales and *re-quantises* them (snaps each subspace to its
nearest codeword, eval semantics: no EMA / usage update) before the decoder, so generated latents are always decoded
from valid codes. With B the batch, D = embed_dim, h = H / F, w = W / F, S = num_subspaces:

    encode_latents(img (B, C, H, W))          -> z (B, D, h, w) float32, scaled (``scaled=False``: raw codewords)
    latents_to_indices(z (B, D, h, w))        -> indices (B, h, w, S) int64 (nearest code per subspace)
    snap_latents(z (B, D, h, w))              -> z' (B, D, h, w) float32: z re-quantised, same scaling as z
    decode_latents(z (B, D, h, w))            -> img (B, C, h*F, w*F)
    fit_scaling_factor(images or loader)      -> float: sets scaling_factor = 1 / std(quantised latents)

``scaling_factor`` is a 0-d float32 buffer, so it travels in ``state_dict`` / checkpoints; a state_dict without it
(a checkpoint from before this interface) loads with factor 1.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Union

import torch

SCALING_KEY = "scaling_factor"


def _batch_tensor(item: Any) -> torch.Tensor:
    """The image tensor of one loader item: a tensor, the first element of a tuple/list, or a dict's image entry."""
    if isinstance(item, dict):
        for key in ("image", "images", "pixel_values", "input"):
            if key in item:
                return item[key]
        raise ValueError(f"dict batches must hold one of 'image', 'images', 'pixel_values', 'input'; got {list(item)}")
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("empty tuple/list batch")
        return item[0]
    return item


class LatentInterface:
    """Mixin for ``PQGAN`` (which registers the ``scaling_factor`` buffer); see the module docstring."""

    scaling_factor: torch.Tensor

    # --- scaling ---------------------------------------------------------------------------------------------------

    def _scale(self) -> torch.Tensor:
        return self.scaling_factor.float()

    def _check_latents(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"latents must be a floating tensor, got dtype {z.dtype}")
        D = self.config.embed_dim
        if z.dim() != 4 or z.shape[1] != D or 0 in z.shape:
            raise ValueError(f"latents must be (B, {D}, h, w) with B, h, w > 0, got shape {tuple(z.shape)}")

    # --- encode / re-quantise / decode -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_latents(self, img: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> quantised latents (B, D, H/F, W/F) float32, times scaling_factor."""
        z = self.encode_to_latent(img)
        return self.snap_latents(z, scaled=False) * (self._scale() if scaled else 1.0)

    def latents_to_indices(self, z: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
        """(B, D, h, w) latents (scaled unless ``scaled=False``) -> nearest codes (B, h, w, S) int64."""
        self._check_latents(z)
        zf = z.detach().float()
        if scaled:
            zf = zf / self._scale()
        return self.quantizer.encode(zf)

    @torch.no_grad()
    def snap_latents(self, z: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
        """Re-quantise (B, D, h, w) latents to the nearest code per subspace; the result has z's scaling."""
        codes = self.quantizer.decode(self.latents_to_indices(z, scaled=scaled)).float()
        return codes * self._scale() if scaled else codes

    def decode_latents(self, z: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
        """(B, D, h, w) latents (e.g. a diffusion sample) -> images (B, C, h*F, w*F), decoded from re-quantised codes.

        The snap is not differentiable (gradients reach the decoder weights, not z).
        """
        return self.decode_indices(self.latents_to_indices(z, scaled=scaled))

    # --- fitting the factor ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_scaling_factor(self, data: Union[torch.Tensor, Iterable[Any]], *, batch_size: int = 16,
                           max_batches: Optional[int] = None) -> float:
        """Set ``scaling_factor`` = 1 / std of the quantised latents of ``data`` (eval mode) and return it.

        data: an image tensor (B, C, H, W) in [-1, 1] (encoded ``batch_size`` at a time), or an iterable of batches
            (a DataLoader) whose items are tensors, tuples/lists with the images first, or dicts with an "image" key.
        max_batches: use at most this many batches. The std is the population std over every latent element
            (batch, channel and position), accumulated in float64 (Chan's parallel update).
        """
        if isinstance(data, torch.Tensor):
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            batches: Iterable[Any] = data.split(batch_size)
        else:
            batches = data
        device = self.post_quant_conv.weight.device
        count, mean, m2 = 0, 0.0, 0.0
        was_training = self.training
        self.eval()
        try:
            for i, item in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                img = _batch_tensor(item)
                if not isinstance(img, torch.Tensor):
                    raise TypeError(f"batches must hold image tensors, got {type(img).__name__}")
                if img.dim() == 3:
                    img = img.unsqueeze(0)
                z = self.encode_latents(img.to(device), scaled=False).double()
                n, b_mean = z.numel(), float(z.mean())
                b_m2 = float(((z - b_mean) ** 2).sum())
                delta, total = b_mean - mean, count + n
                mean += delta * n / total
                m2 += b_m2 + delta * delta * count * n / total
                count = total
        finally:
            self.train(was_training)
        if count < 2:
            raise ValueError("fit_scaling_factor needs at least one image with two or more latent elements")
        std = math.sqrt(m2 / count)
        if not math.isfinite(std) or std <= 0.0:
            raise ValueError(f"cannot fit a scaling factor: latent std is {std}")
        self.scaling_factor.fill_(1.0 / std)
        return 1.0 / std

    # --- checkpoints from before the interface ------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + SCALING_KEY
        present = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not present:  # an older checkpoint: factor 1, and not an error under strict loading
            self.scaling_factor.fill_(1.0)
            if key in missing_keys:
                missing_keys.remove(key)


__all__ = ["LatentInterface", "SCALING_KEY"]
