"""Datasets: recursive listing, deterministic disjoint splits, value range and crops, scikit-image defaults, real photos
(PQGAN_DATA)."""
import numpy as np
import pytest
import torch
from PIL import Image

from pqgan.data import ImageFolder, build_dataset, default_images, list_images, split_files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20 random-noise images of varied sizes and formats in nested folders, plus non-image files."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    exts = [".png", ".jpg", ".jpeg", ".webp", ".PNG"]
    for i in range(20):
        sub = root / f"d{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(40, 70)), int(rng.integers(40, 90))
        mode = "L" if i == 7 else "RGB"
        arr = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr, mode).save(sub / f"img{i:02d}{exts[i % len(exts)]}")
    (root / "notes.txt").write_text("not an image")
    (root / "d0" / "fake.json").write_text("{}")
    return root


def test_listing_is_recursive_and_filtered(folder):
    files = list_images(folder)
    assert len(files) == 20 and files == sorted(files)
    assert {f.suffix.lower() for f in files} == {".png", ".jpg", ".jpeg", ".webp"}
    with pytest.raises(FileNotFoundError):
        list_images(folder / "missing")


def test_splits_are_disjoint_and_deterministic(folder):
    files = list_images(folder)
    train, val = split_files(files, "train", 0.2, seed=0), split_files(files, "val", 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    assert not set(train) & set(val) and set(train) | set(val) == set(files)
    assert split_files(list(reversed(files)), "val", 0.2, seed=0) == val  # independent of listing order
    assert split_files(files, "val", 0.2, seed=1) != val
    assert split_files(files, "all") == files
    assert split_files(files[:1], "val", 0.5) == [] and split_files(files[:2], "val", 0.1) != []
    with pytest.raises(ValueError):
        split_files(files, "test")
    with pytest.raises(ValueError):
        split_files(files, "val", 1.5)
    ds_train, ds_val = ImageFolder(folder, 32, "train", 0.2), ImageFolder(folder, 32, "val", 0.2)
    assert not set(ds_train.files) & set(ds_val.files)


def test_items_range_shape_and_crops(folder):
    torch.manual_seed(0)
    ds = ImageFolder(folder, 32, split="all")
    items = torch.stack([ds[i] for i in range(len(ds))])
    assert items.shape == (20, 3, 32, 32) and items.dtype == torch.float32
    assert float(items.min()) >= -1 and float(items.max()) <= 1
    assert float(items.min()) < -0.9 and float(items.max()) > 0.9  # really spans the range (noise images)
    gray = ds[[f.stem for f in ds.files].index("img07")]
    torch.testing.assert_close(gray[0], gray[1])  # greyscale -> 3 equal channels
    val = ImageFolder(folder, 32, split="val", val_fraction=0.5)
    assert not val.random_crop and not val.flip
    torch.testing.assert_close(val[0], val[0])  # center crop, no flip: deterministic
    train = ImageFolder(folder, 32, split="train", val_fraction=0.5)
    draws = torch.stack([train[0] for _ in range(8)])
    assert (draws - draws[0]).abs().amax() > 0  # random crop / flip vary
    with pytest.raises(ValueError):
        ImageFolder(folder, 0)
    with pytest.raises(FileNotFoundError):
        ImageFolder([folder / "nope.png"], 32)


def test_default_images_ship_with_scikit_image():
    files = default_images()
    if not files:
        pytest.skip("scikit-image not installed")
    assert len(files) >= 10 and all(f.is_file() for f in files)
    assert any(f.name == "astronaut.png" for f in files)
    ds, val = build_dataset(None, 32), build_dataset(None, 32, split="val")
    assert len(ds) + len(val) == len(files) and not set(ds.files) & set(val.files)
    x = ds[0]
    assert x.shape == (3, 32, 32) and -1 <= float(x.min()) < float(x.max()) <= 1


def test_real_photo_split(photos):
    train, val = ImageFolder(photos, 64, "train"), ImageFolder(photos, 64, "val", random_crop=False)
    n = len(list_images(photos))
    assert len(train) + len(val) == n and len(val) == max(1, round(0.1 * n))
    assert not set(train.files) & set(val.files)
    assert val[0].shape == (3, 64, 64)
