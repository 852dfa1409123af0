"""pqgan_kernels: fused product-quantisation kernels (reference, Triton, CUDA, CPU C++) behind one dispatch point.

    >>> import torch, pqgan_kernels
    >>> x, codebooks = torch.randn(1024, 128), torch.randn(64, 512, 2)      # S=64 subspaces of d=2, K=512
    >>> quantized, indices = pqgan_kernels.pq_assign(x, codebooks)         # (1024, 128), (1024, 64)
    >>> pqgan_kernels.available_backends()                                  # e.g. ['reference', 'cpu']

See ``reference.py`` for the exact semantics every backend follows and ``dispatch.py`` for how one is chosen.
"""
from . import reference
from .dispatch import (BACKENDS, available_backends, backend_info, get_backend, register_backend,
                       resolve_backend, set_default_backend)
from .ops import (pq_assign, pq_codebook_grad, pq_ema_stats, pq_ema_update, pq_lookup, resolved_backend)
from .ema_apply import pq_ema_apply_
from .validate import set_value_checks

__all__ = [
    "BACKENDS", "available_backends", "backend_info", "get_backend", "pq_assign", "pq_codebook_grad",
    "pq_ema_apply_", "pq_ema_stats", "pq_ema_update", "pq_lookup", "reference", "register_backend",
    "resolve_backend", "resolved_backend", "set_default_backend", "set_value_checks",
]
