"""Backend "triton": registers the Triton kernels of ``triton_assign``, ``triton_scatter`` and ``triton_ema``
with the dispatcher.

Devices: "cuda" when a GPU is present; under ``TRITON_INTERPRET=1`` (set before this module is imported) also
"cpu", so the kernels can be tested without a GPU. Anything missing (triton, a GPU) marks the backend unavailable
with the reason instead of raising. fp64 inputs are refused by ``unsupported`` (dispatch routes them elsewhere).
The dot kernel's mode ("exact" by default, or "fast") is set with ``triton_assign.set_mode``.
"""
from __future__ import annotations

import os

import torch

from .dispatch import Backend, mark_unavailable, register_backend


def _devices() -> tuple[str, ...]:
    devices = ("cuda",) if torch.cuda.is_available() else ()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        devices += ("cpu",)
    return devices


def _register() -> None:
    devices = _devices()
    if not devices:
        mark_unavailable("triton", "no CUDA GPU and TRITON_INTERPRET=1 is not set")
        return
    try:
        from . import triton_assign, triton_ema, triton_scatter
    except Exception as err:  # triton missing or broken: never let it escape
        mark_unavailable("triton", f"triton kernels not importable: {type(err).__name__}: {err}")
        return
    register_backend(Backend(
        name="triton",
        devices=devices,
        assign=triton_assign.assign,
        ema_stats=triton_scatter.ema_stats,
        codebook_grad=triton_scatter.codebook_grad,
        ema_update=triton_ema.ema_update,
        unsupported=triton_assign.unsupported,
    ))


_register()
