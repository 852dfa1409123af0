"""The one place a backend is chosen.

A backend is a small record of functions with the reference's semantics (see ``reference.py``):

    assign(x, codebooks, distance)          -> (quantized (N, S*d) x.dtype, indices (N, S) int64)
    ema_stats(x, indices, num_codes)        -> (counts (S, K), sums (S, K, d)), fp32 (fp64 for fp64 x)
    codebook_grad(grad_q, indices, num_codes) -> (S, K, d), fp32 (fp64 for fp64 grad_q)
    ema_update(x, indices, codebooks, cluster_size, embed_sum, decay, eps) -> None, in place (optional:
        when missing, ``ema_stats`` + ``ema_apply.pq_ema_apply_``)
    unsupported(x, codebooks, distance)     -> None, or a reason this backend can't take these inputs (optional;
        codebooks is None when the op has none: ema_stats, codebook_grad)

Backends register themselves with ``register_backend`` when their module is imported. Each module is loaded
lazily, on the first call that needs that backend, so ``import pqgan_kernels`` never fails because triton, the
compiled extension or a GPU is missing: such a backend is reported unavailable, with the reason, by
``backend_info()``.

Choice, in order of precedence: the ``backend=`` argument of a call; ``set_default_backend(name)``; the
``PQGAN_BACKEND`` environment variable; "auto". "auto" takes the first available backend that supports the inputs
from ``auto_order(device, ...)``.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import reference

BACKENDS = ("reference", "triton", "cuda", "cpu")

# Module that registers each backend when imported (the compiled extension provides both "cpu" and "cuda").
_MODULES = {"triton": "pqgan_kernels.triton_backend", "cuda": "pqgan_kernels.native_backend",
            "cpu": "pqgan_kernels.native_backend"}


@dataclass
class Backend:
    name: str
    devices: tuple[str, ...]
    assign: Callable
    ema_stats: Callable
    codebook_grad: Callable
    ema_update: Optional[Callable] = None
    unsupported: Optional[Callable] = None
    # ema_stats / codebook_grad (and ema_update, before it changes any state) raise ValueError("indices has values
    # outside [0, K)") themselves, as the Python check would (the CPU kernels test every index anyway): the ops then
    # skip that extra pass over the indices
    checks_indices: bool = False

    def check_supports(self, x: torch.Tensor, codebooks: Optional[torch.Tensor], distance: str = "l2") -> Optional[str]:
        """None if this backend can run on these inputs, else the reason it can't."""
        if x.device.type not in self.devices:
            return f"backend {self.name!r} runs on {'/'.join(self.devices)} tensors, got {x.device.type}"
        return self.unsupported(x, codebooks, distance) if self.unsupported else None


_registry: dict[str, Backend] = {}
_unavailable: dict[str, str] = {}
_default: Optional[str] = None


def register_backend(backend: Backend) -> None:
    """Make a backend available (called by backend modules at import)."""
    if backend.name not in BACKENDS:
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKENDS}")
    _registry[backend.name] = backend
    _unavailable.pop(backend.name, None)


def mark_unavailable(name: str, reason: str) -> None:
    """Record why a backend can't be used here (called by backend modules that find something missing)."""
    if name not in _registry:
        _unavailable[name] = reason


def _load(name: str) -> None:
    """Import the module that provides backend ``name`` (once); record why it is unavailable if that fails."""
    module = _MODULES.get(name)
    if module is None or name in _registry or name in _unavailable:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        reason = "not built yet" if err.name == module else f"import failed: {err}"
        mark_unavailable(name, reason)
    except Exception as err:  # a broken optional backend must not break the package
        mark_unavailable(name, f"import failed: {type(err).__name__}: {err}")
    if name not in _registry and name not in _unavailable:
        mark_unavailable(name, f"{module} did not register it")


def _load_all() -> None:
    for name in _MODULES:
        _load(name)


def available_backends() -> list[str]:
    """Names of the backends usable in this process, e.g. ``['reference', 'cpu']``."""
    _load_all()
    return [name for name in BACKENDS if name in _registry]


def backend_info() -> dict[str, str]:
    """Every backend name mapped to "available" or the reason it is not."""
    _load_all()
    return {name: "available" if name in _registry else _unavailable.get(name, "unknown") for name in BACKENDS}


def set_default_backend(name: Optional[str]) -> None:
    """Backend used when a call says ``backend="auto"``; ``None`` restores automatic choice."""
    if name is not None and name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
    global _default
    _default = None if name == "auto" else name


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
    _load(name)
    if name not in _registry:
        raise RuntimeError(f"backend {name!r} is not available: {_unavailable.get(name, 'unknown')}")
    return _registry[name]


def auto_order(device: torch.device, x: torch.Tensor, codebooks: Optional[torch.Tensor]) -> tuple[str, ...]:
    """Preference order of backends for "auto". GPU tensors: the measured table of ``autotable`` if one exists."""
    if device.type == "cuda":
        try:
            from .autotable import cuda_order  # written from benchmark measurements
            return tuple(cuda_order(x, codebooks)) + ("reference",)
        except ImportError:
            return ("cuda", "triton", "reference")
    if device.type == "cpu":
        return ("cpu", "reference")
    return ("reference",)


def resolve_backend(requested: str, x: torch.Tensor, codebooks: Optional[torch.Tensor], distance: str = "l2") -> str:
    """The concrete backend name to run ``requested`` ("auto" or a name) on these inputs, or a clear error.

    Under ``torch.compile`` the choice is made once, eagerly, at trace time (importing a backend's module can't be
    traced) and baked into the graph: a compiled call may be the first call of a process.
    """
    if torch.compiler.is_compiling():
        cb = None if codebooks is None else (tuple(codebooks.shape), codebooks.dtype)
        return _resolve_at_trace_time(requested, x.device, x.dtype, x.dim(), cb, distance)
    return _resolve(requested, x, codebooks, distance)


@torch._dynamo.assume_constant_result
def _resolve_at_trace_time(requested, device, x_dtype, x_dim, cb, distance) -> str:
    """``_resolve`` on stand-ins of the inputs with their device, dtypes and codebook shape (1 element each)."""
    x = torch.empty((1,) * x_dim, dtype=x_dtype, device=device)
    codebooks = None if cb is None else torch.empty_strided(cb[0], (0,) * len(cb[0]), dtype=cb[1], device=device)
    return _resolve(requested, x, codebooks, distance)


def _resolve(requested: str, x: torch.Tensor, codebooks: Optional[torch.Tensor], distance: str) -> str:
    if requested is None or requested == "auto":
        requested = _default or os.environ.get("PQGAN_BACKEND") or "auto"
    if requested != "auto":
        backend = get_backend(requested)
        reason = backend.check_supports(x, codebooks, distance)
        if reason:
            raise ValueError(reason)
        return requested
    for name in auto_order(x.device, x, codebooks):
        _load(name)
        backend = _registry.get(name)
        if backend is not None and backend.check_supports(x, codebooks, distance) is None:
            return name
    raise RuntimeError(f"no backend can run on {x.device} tensors: {backend_info()}")


register_backend(Backend(
    name="reference",
    devices=("cpu", "cuda", "mps", "xpu", "meta"),
    assign=reference.pq_assign,
    ema_stats=reference.pq_ema_stats,
    codebook_grad=reference.pq_codebook_grad,
    ema_update=reference.pq_ema_update,
))
