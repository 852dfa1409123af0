"""Image datasets for PQGAN: a recursive image folder, or the photographs that ship with scikit-image.

Each item is a float32 tensor (3, resolution, resolution) in [-1, 1].

    ds = ImageFolder("/path/to/photos", 256, split="train")   # resize shorter side, random crop, random flip
    val = ImageFolder("/path/to/photos", 256, split="val")    # resize shorter side, center crop
    ds = build_dataset(None, 64)                              # scikit-image's bundled sample photographs
    ds = ImageFolder("/path", 256, resize_to=(256, 256))      # whole image resized, no crop/flip (official PQGAN)

The train/val split is a seeded permutation of the sorted file list (``val_fraction`` of the files, at least one
when there are two or more), so it is deterministic and the two splits are disjoint.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "val", "all")

# Colour and greyscale photographs shipped inside the scikit-image wheel (skimage/data/*), i.e. readable offline;
# the other ``skimage.data`` images are fetched with pooch on first use and are not used here.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "motorcycle_left.png", "ihc.png", "retina.jpg", "camera.png", "coins.png", "moon.png",
                  "grass.png", "gravel.png", "brick.png")


def list_images(root: Union[str, os.PathLike]) -> list[Path]:
    """All files under ``root`` (recursively) with an image extension, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def default_images() -> list[Path]:
    """Paths of the photographs bundled with scikit-image (no download), sorted; empty if it is not installed."""
    spec = importlib.util.find_spec("skimage")  # locate without importing (skimage is slow to import)
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for root in spec.submodule_search_locations:
        for name in SKIMAGE_PHOTOS:
            path = Path(root) / "data" / name
            if path.is_file():
                found.append(path)
    return sorted(found)


def split_files(files: Sequence[Path], split: str, val_fraction: float = 0.1, seed: int = 0) -> list[Path]:
    """The ``split`` subset of ``files``: a seeded permutation of the sorted list, the first n_val are "val"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = sorted(Path(f) for f in files)
    if split == "all":
        return files
    n = len(files)
    n_val = 0 if val_fraction == 0 or n < 2 else max(1, round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = perm[:n_val] if split == "val" else perm[n_val:]
    return [files[i] for i in sorted(chosen)]


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """An RGB PIL image (greyscale, palette and alpha images are converted)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Bicubic (antialiased) resize so the shorter side is ``size``."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.BICUBIC)


def resize_exact(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The whole image resized to (height, width), aspect ratio not kept; bilinear with antialiasing like
    torchvision's ``Resize((h, w))`` on PIL images (the official PQGAN loader)."""
    h, w = size
    return image if image.size == (w, h) else image.resize((w, h), Image.BILINEAR)


def crop_square(image: Image.Image, size: int, random_crop: bool, flip: bool) -> Image.Image:
    """A size x size crop (random, or centred) of a PIL image at least that large, flipped left-right with p=0.5."""
    w, h = image.size
    if random_crop:
        left, top = int(torch.randint(w - size + 1, ())), int(torch.randint(h - size + 1, ()))
    else:
        left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    if flip and bool(torch.rand(()) < 0.5):
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


class ImageFolder(Dataset):
    """Images under ``root`` (recursive; jpg/jpeg/png/webp), or an explicit list of files.

    Args:
        root: a folder, or a sequence of image paths.
        resolution: output side R; items are (3, R, R) float32 in [-1, 1].
        split: "train", "val" or "all" (see ``split_files``).
        random_crop, flip: augmentations for "train" and "all" (random crop after resizing the shorter side to R;
            horizontal flip with p=0.5), drawn from torch's RNG. "val" always uses a center crop and no flip.
        resize_to: (height, width): resize the whole image to it instead (no crop, no flip whatever the split).
    """

    def __init__(self, root: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], resolution: int,
                 split: str = "train", val_fraction: float = 0.1, seed: int = 0, random_crop: bool = True,
                 flip: bool = True, resize_to: Optional[tuple[int, int]] = None):
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if isinstance(root, (str, os.PathLike)):
            files = list_images(root)
            where = str(root)
        else:
            files = [Path(f) for f in root]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"image files not found: {missing[:3]}")
            where = f"{len(files)} listed files"
        self.files = split_files(files, split, val_fraction, seed)
        if not self.files:
            raise ValueError(f"no images for split {split!r} in {where}")
        self.resolution, self.split = resolution, split
        self.resize_to = None if resize_to is None else (int(resize_to[0]), int(resize_to[1]))
        if self.resize_to is not None and min(self.resize_to) < 1:
            raise ValueError(f"resize_to must be two positive ints, got {resize_to!r}")
        self.random_crop = random_crop and split != "val" and self.resize_to is None
        self.flip = flip and split != "val" and self.resize_to is None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.resize_to is not None:
            return to_tensor(resize_exact(load_image(self.files[index]), self.resize_to))
        image = resize_shorter(load_image(self.files[index]), self.resolution)
        return to_tensor(crop_square(image, self.resolution, self.random_crop, self.flip))


def build_dataset(root: Optional[Union[str, os.PathLike]] = None, resolution: int = 256, split: str = "train",
                  **kwargs) -> ImageFolder:
    """``ImageFolder(root, ...)``, or with ``root=None`` the scikit-image sample photographs."""
    if root is None:
        files = default_images()
        if not files:
            raise FileNotFoundError("no data folder given and scikit-image's bundled photographs were not found "
                                    "(pip install scikit-image)")
        return ImageFolder(files, resolution, split=split, **kwargs)
    return ImageFolder(root, resolution, split=split, **kwargs)


__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "SKIMAGE_PHOTOS", "build_dataset", "default_images",
           "list_images", "load_image", "split_files", "to_tensor"]
