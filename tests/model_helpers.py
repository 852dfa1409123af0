"""Helpers shared by the model-level tests."""
import torch


def random_images(b: int, r: int = 32, seed: int = 0) -> torch.Tensor:
    """(b, 3, r, r) uniform in [-1, 1], reproducible."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, r, r, generator=g) * 2 - 1
