"""The one check of an image pair shared by the losses, the perceptual networks and the metrics."""
from __future__ import annotations

from typing import Optional

import torch


def check_image_pair(x: torch.Tensor, y: torch.Tensor, channels: Optional[int] = None) -> None:
    """x and y must be floating (B, C, H, W) tensors of the same shape (and C == channels when given)."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"images must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape or x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise ValueError(f"expected two {want} images of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not x.is_floating_point() or not y.is_floating_point():
        raise TypeError(f"images must be floating point, got {x.dtype} and {y.dtype}")
