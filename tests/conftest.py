"""Test setup: without a GPU, Triton kernels run in its interpreter (must be set before kernel modules import)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same torch / numpy / random state (this torch seeds each process differently)."""
    import random

    import numpy as np
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def photos():
    """The folder of real photos named by PQGAN_DATA (e.g. BSDS500; .ci/run sets it); skips the test, with the
    reason, when the variable is unset or the folder holds no images."""
    from pqgan.data import PHOTOS_ENV, list_images, photo_dir
    root = photo_dir()
    if root is None:
        pytest.skip(f"needs real photos: set {PHOTOS_ENV} to a photo folder (e.g. BSDS500)")
    if not root.is_dir() or not list_images(root):
        pytest.skip(f"{PHOTOS_ENV}={root}: not a folder with images")
    return root


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one torch thread than on two contended ones (CI has 2 shared cores)."""
    from kernel_checks import torch_threads
    with torch_threads(1):
        yield
