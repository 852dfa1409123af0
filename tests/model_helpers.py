"""Helpers shared by the model-level tests: random image tensors, and folders of image files for the CLIs."""
import os

import numpy as np
import torch
from PIL import Image


def random_images(b: int, r: int = 32, seed: int = 0) -> torch.Tensor:
    """(b, 3, r, r) uniform in [-1, 1], reproducible."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, r, r, generator=g) * 2 - 1


def write_texture_images(folder, count: int, height: int, width: int, seed: int = 0) -> str:
    """count RGB PNGs img0.png, img1.png, ... of height x width pixels into folder (which must exist): random
    colour blocks of 8x8 pixels plus noise (std 12), so crops are not constant. Returns str(folder)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        blocks = rng.uniform(0, 255, (-(-height // 8), -(-width // 8), 3))
        img = np.kron(blocks, np.ones((8, 8, 1)))[:height, :width] + rng.normal(0, 12, (height, width, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"img{i}.png"))
    return str(folder)
