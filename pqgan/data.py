"""Image datasets for PQGAN: a recursive image folder, or the photographs that ship with scikit-image.

Each item is a float32 tensor (3, resolution, resolution) in [-1, 1].

    ds = ImageFolder("/path/to/photos", 256, split="train")   # resize shorter side, random crop, random flip
    val = ImageFolder("/path/to/photos", 256, split="val")    # resize shorter side, center crop
    ds = build_dataset(None, 64)                              # scikit-image's bundled sample photographs
    ds = ImageFolder("/path", 256, resize_to=(256, 256))      # whole image resized, no crop/flip (official PQGAN)

The train/val split is a seeded permutation of the sorted file list (``val_fraction`` of the files, at least one
when there are two or more), so it is deterministic and the two splits are disjoint.

Bad files: a file that cannot be read or decoded (corrupt, truncated, unreadable, a broken symlink or symlink loop)
is skipped with one ``BadImageWarning`` naming it and counted in ``ImageFolder.skipped_files`` (shared with loader
workers); a training item falls back to the next readable file, an evaluation item (``on_bad="drop"``) is None.
More than ``max_bad_fraction`` (default 1%) of the files bad raises ``TooManyBadImages``. Every image mode is
converted to 8-bit RGB: 16-bit greyscale (I;16, I;16B, I) is scaled by 1/257 (not clipped), alpha is ignored.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "val", "all")
MAX_BAD_FRACTION = 0.01          # default: more than 1% unreadable files stops a run
ON_BAD = ("substitute", "drop")
# What decoding a bad file raises (PIL raises OSError subclasses, SyntaxError / ValueError / EOFError for some
# broken streams, DecompressionBombError for absurd sizes); anything else is a bug and propagates.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class ImageReadError(OSError):
    """An image file that cannot be read or decoded; the message names the file."""


class TooManyBadImages(RuntimeError):
    """More than the allowed fraction of a dataset's files are unreadable."""


class BadImageWarning(UserWarning):
    """One unreadable image file was skipped (the message names it)."""

# Colour and greyscale photographs shipped inside the scikit-image wheel (skimage/data/*), i.e. readable offline;
# the other ``skimage.data`` images are fetched with pooch on first use and are not used here.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "motorcycle_left.png", "ihc.png", "retina.jpg", "camera.png", "coins.png", "moon.png",
                  "grass.png", "gravel.png", "brick.png")


PHOTOS_ENV = "PQGAN_DATA"  # names a folder of real photos (e.g. BSDS500) for tests, benchmarks and demos


def photo_dir() -> Optional[Path]:
    """The photo folder named by the ``PQGAN_DATA`` environment variable, or None when it is unset or empty."""
    value = os.environ.get(PHOTOS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def list_images(root: Union[str, os.PathLike], skipped: Optional[list] = None) -> list[Path]:
    """All files under ``root`` (recursively; symlinked folders are not followed) with an image extension, sorted.

    Entries with an image extension that are not regular files (broken symlinks, symlink loops, folders) are
    left out with a ``BadImageWarning`` each, and appended to ``skipped`` when it is given.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            found.append(p)
        elif not p.is_dir():
            why = "a broken symlink or symlink loop" if p.is_symlink() else "not a regular file"
            warnings.warn(f"skipping {p}: {why}", BadImageWarning, stacklevel=2)
            if skipped is not None:
                skipped.append(p)
    return found


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


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image. 16-bit greyscale (I;16, I;16L, I;16B, and I, which PNG readers use for 16-bit
    grey) is scaled by 1/257 so 65535 -> 255 and 32768 -> 128 (PIL's own conversion clips it to 255); alpha is
    dropped; palette, CMYK, 1-bit and greyscale go through PIL's conversion. ValueError for modes PIL cannot
    convert."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image).astype(np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """An 8-bit RGB PIL image (see ``to_rgb``), fully decoded. ImageReadError naming ``path`` when it cannot be
    opened, read or decoded (missing, unreadable, corrupt, truncated)."""
    try:
        with Image.open(path) as im:
            im.load()                                     # decode now: truncated data fails here, not later
            return to_rgb(im)
    except _DECODE_ERRORS as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {reason})") from e


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
        on_bad: what an unreadable file's item becomes: "substitute" (the next readable file; for training) or
            "drop" (None; for evaluation, whose loader leaves it out). Each bad file warns once and is counted in
            ``skipped_files``.
        max_bad_fraction: ``TooManyBadImages`` once more than this fraction of the files (this split plus the
            entries ``list_images`` left out) turned out bad.
    """

    def __init__(self, root: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], resolution: int,
                 split: str = "train", val_fraction: float = 0.1, seed: int = 0, random_crop: bool = True,
                 flip: bool = True, resize_to: Optional[tuple[int, int]] = None, on_bad: str = "substitute",
                 max_bad_fraction: float = MAX_BAD_FRACTION):
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.unlisted: list[Path] = []                    # image-named entries list_images could not use
        if isinstance(root, (str, os.PathLike)):
            files = list_images(root, skipped=self.unlisted)
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
        self.on_bad, self.max_bad_fraction = on_bad, float(max_bad_fraction)
        # 1 = this file failed to load; in shared memory so loader workers' findings reach the main process
        self._bad = torch.zeros(len(self.files), dtype=torch.uint8).share_memory_()
        self._check_bad_fraction()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def skipped(self) -> list[Path]:
        """Files skipped so far: those ``list_images`` left out, then those that failed to load."""
        return self.unlisted + [self.files[i] for i in torch.nonzero(self._bad).flatten().tolist()]

    @property
    def skipped_files(self) -> int:
        """How many files were skipped so far (see ``skipped``)."""
        return len(self.unlisted) + int(self._bad.sum())

    def _check_bad_fraction(self) -> None:
        total = len(self.files) + len(self.unlisted)
        if self.skipped_files > self.max_bad_fraction * total:
            names = ", ".join(str(p) for p in self.skipped[:5]) + (", ..." if self.skipped_files > 5 else "")
            raise TooManyBadImages(
                f"{self.skipped_files} of {total} image files are unreadable, more than the allowed fraction "
                f"{self.max_bad_fraction:g}: {names} (fix or remove them, or allow more with max_bad_fraction)")

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image of file ``index``; ImageReadError (naming the file) when it is bad."""
        return load_image(self.files[index])

    def _transform(self, image: Image.Image) -> torch.Tensor:
        if self.resize_to is not None:
            return to_tensor(resize_exact(image, self.resize_to))
        image = resize_shorter(image, self.resolution)
        return to_tensor(crop_square(image, self.resolution, self.random_crop, self.flip))

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        """(3, R, R) float32 in [-1, 1] (or (3, h, w) with ``resize_to``); for a bad file see ``on_bad``."""
        n = len(self.files)
        for attempt in range(n):
            i = (index + attempt) % n
            if self._bad[i]:
                image = None
            else:
                try:
                    image = self.load(i)
                except ImageReadError as e:
                    image = None
                    if not self._bad[i]:
                        self._bad[i] = 1
                        warnings.warn(f"skipping {e}", BadImageWarning, stacklevel=2)
                    self._check_bad_fraction()
            if image is not None:
                return self._transform(image)
            if self.on_bad == "drop":
                return None
        raise TooManyBadImages(f"none of the {n} image files can be read (first: {self.files[0]})")


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


__all__ = ["BadImageWarning", "IMAGE_EXTENSIONS", "ImageFolder", "ImageReadError", "MAX_BAD_FRACTION",
           "TooManyBadImages", "to_rgb", "PHOTOS_ENV", "SKIMAGE_PHOTOS", "build_dataset", "default_images",
           "list_images", "load_image", "photo_dir", "split_files", "to_tensor"]
