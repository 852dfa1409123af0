"""Backends "cpu" and "cuda": the compiled kernels of csrc/ (``pqgan_kernels._C``, ops ``torch.ops.pqgan_native``).

Importing this module loads the extension and registers whichever of the two backends it provides; anything that
goes wrong (extension not built, built without CUDA, no GPU, stale build) is recorded with ``mark_unavailable``
and never raised.

Native ops (schemas in ``csrc/native_ops.cpp``; CPU kernels in ``csrc/cpu/``, CUDA kernels in ``csrc/cuda/``):
    pq_assign(x (N, S*d), codebooks (S, K, d), cosine: bool) -> (quantized (N, S*d) x.dtype, indices (N, S) int64)
    pq_ema_stats(x (N, S*d), indices (N, S), num_codes)      -> (counts (S, K), sums (S, K, d))  fp32 / fp64
    pq_codebook_grad(grad (N, S*d), indices (N, S), num_codes) -> (S, K, d)                     fp32 / fp64
    pq_assign_gemm(x, codebooks, bound_coefficient) -> like pq_assign (l2, CPU only; see cpu_large_d.py)
"""
from __future__ import annotations

import torch

from . import cpu_large_d
from .dispatch import Backend, mark_unavailable, register_backend

BUILD_INFO = None


def _register_fakes() -> None:
    """Shape functions of the native ops (for torch.compile / FakeTensor / opcheck)."""
    from .ops import assign_outputs, codebook_grad_output, ema_stats_outputs  # the one output contract per op

    def assign_fake(x, codebooks, cosine):
        return assign_outputs(x, codebooks)

    def stats_fake(x, indices, num_codes):
        return ema_stats_outputs(x, indices, num_codes)

    def grad_fake(grad, indices, num_codes):
        return codebook_grad_output(grad, indices, num_codes)

    def assign_gemm_fake(x, codebooks, bound_coefficient):
        return assign_outputs(x, codebooks)

    for name, fn in (("pq_assign", assign_fake), ("pq_ema_stats", stats_fake), ("pq_codebook_grad", grad_fake),
                     ("pq_assign_gemm", assign_gemm_fake)):
        try:
            torch.library.register_fake(f"pqgan_native::{name}", fn)
        except RuntimeError as err:  # already registered (module re-imported)
            if "already" not in str(err):
                raise


def assign(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) x.dtype, indices (N, S) int64)."""
    return torch.ops.pqgan_native.pq_assign(x, codebooks, distance == "cosine")


def cpu_assign(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """``assign`` on the CPU; l2 with large d and K (cpu_large_d.uses_gemm) goes to the exact BLAS path (faster)."""
    if distance == "l2" and cpu_large_d.uses_gemm(codebooks.shape[2], codebooks.shape[1]):
        return cpu_large_d.assign_l2(x, codebooks)
    return assign(x, codebooks, distance)


def ema_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, S*d), indices (N, S) -> (counts (S, K), sums (S, K, d)), fp32 (fp64 for fp64 x)."""
    return torch.ops.pqgan_native.pq_ema_stats(x, indices, int(num_codes))


def codebook_grad(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """grad_quantized (N, S*d), indices (N, S) -> (S, K, d), fp32 (fp64 for fp64 grad)."""
    return torch.ops.pqgan_native.pq_codebook_grad(grad_quantized, indices, int(num_codes))


def _register() -> None:
    global BUILD_INFO
    try:
        from . import _C  # noqa: F401  (loading the library registers torch.ops.pqgan_native)
    except ImportError as err:
        mark_unavailable("cpu", f"compiled extension pqgan_kernels._C not importable ({err}); "
                                "run `pip install --no-build-isolation -e .`")
        mark_unavailable("cuda", "compiled extension pqgan_kernels._C not importable")
        return
    BUILD_INFO = torch.ops.pqgan_native.build_info()
    if not all(hasattr(torch.ops.pqgan_native, op) for op in ("pq_assign", "pq_assign_gemm")):
        reason = f"extension ({BUILD_INFO}) is a stale build without the kernels; rebuild with " \
                 "`pip install --no-build-isolation -e .`"
        mark_unavailable("cpu", reason)
        mark_unavailable("cuda", reason)
        return
    _register_fakes()
    register_backend(Backend(name="cpu", devices=("cpu",), assign=cpu_assign, ema_stats=ema_stats,
                             codebook_grad=codebook_grad))
    if "cuda" not in BUILD_INFO:
        mark_unavailable("cuda", "extension built without CUDA (rebuild with CUDA_HOME set or PQGAN_BUILD_CUDA=1)")
    elif not torch.cuda.is_available():
        mark_unavailable("cuda", "extension built with CUDA but no CUDA device is available")
    else:
        register_backend(Backend(name="cuda", devices=("cuda",), assign=assign, ema_stats=ema_stats,
                                 codebook_grad=codebook_grad))


try:
    _register()
except Exception as err:  # never let a broken build break `import pqgan_kernels`
    mark_unavailable("cpu", f"native backend failed to load: {type(err).__name__}: {err}")
    mark_unavailable("cuda", f"native backend failed to load: {type(err).__name__}: {err}")
