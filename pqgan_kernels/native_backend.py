"""Backends "cpu" and "cuda": the compiled kernels of csrc/ (``pqgan_kernels._C``, ops ``torch.ops.pqgan_native``).

Importing this module loads the extension and registers whichever of the two backends it provides.
"""
from __future__ import annotations

import torch

from .dispatch import mark_unavailable

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.pqgan_native)
except ImportError as err:
    mark_unavailable("cpu", f"compiled extension pqgan_kernels._C not importable ({err}); "
                            "run `pip install --no-build-isolation -e .`")
    mark_unavailable("cuda", "compiled extension pqgan_kernels._C not importable")
else:
    BUILD_INFO = torch.ops.pqgan_native.build_info()
    mark_unavailable("cpu", f"extension built ({BUILD_INFO}) but the CPU kernels are not implemented yet")
    mark_unavailable("cuda", f"extension built ({BUILD_INFO}) but the CUDA kernels are not implemented yet")
