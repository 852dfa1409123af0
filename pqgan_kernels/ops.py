"""``torch.library`` registration of the PQ ops and their thin public wrappers.

Each op is registered once (schema, fake/meta implementation, autograd) so it composes with ``torch.compile`` and
``torch.library.opcheck``. The op bodies run the backend named by their ``backend`` argument; the public wrappers
validate the inputs, resolve ``backend="auto"`` through ``dispatch.resolve_backend`` and call the op.

Ops (namespace ``pqgan``):
    pq_assign(x, codebooks, distance, backend)         -> (quantized (N, S*d), indices (N, S) int64)
        autograd: d quantized / d codebooks = per-code scatter-add (``pq_codebook_grad``); x gets no gradient
        (the straight-through estimator lives in the layer).
    pq_codebook_grad(grad_q, indices, num_codes, backend) -> (S, K, d); autograd: gather (a lookup).
    pq_ema_stats(x, indices, num_codes, backend)         -> (counts (S, K), sums (S, K, d))
    pq_ema_update(x, indices, codebooks!, cluster_size!, embed_sum!, decay, eps, backend) -> ()  (in place)
"""
from __future__ import annotations

from typing import Optional

import torch

from . import ema_apply, reference, validate
from .dispatch import get_backend, resolve_backend


# --- pq_assign -------------------------------------------------------------------------------------------------

@torch.library.custom_op("pqgan::pq_assign", mutates_args=())
def _pq_assign_op(x: torch.Tensor, codebooks: torch.Tensor, distance: str,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    validate.check_finite("x", x)
    validate.check_finite("codebooks", codebooks)
    quantized, indices = get_backend(backend).assign(x, codebooks, distance)
    return quantized, indices


# --- output shapes: the one place each op's output contract is written (also the pqgan_native ops' fakes) --------

def assign_outputs(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty outputs of an assignment: quantized (N, S*d) like x, indices (N, S) int64."""
    return x.new_empty(x.shape), x.new_empty((x.shape[0], codebooks.shape[0]), dtype=torch.int64)


def codebook_grad_output(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Empty (S, K, d) in ``compute_dtype(grad_quantized)``."""
    S = indices.shape[1]
    return grad_quantized.new_empty((S, num_codes, grad_quantized.shape[1] // S),
                                    dtype=reference.compute_dtype(grad_quantized))


def ema_stats_outputs(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty counts (S, K) and sums (S, K, d) in ``compute_dtype(x)``."""
    sums = codebook_grad_output(x, indices, num_codes)
    return sums.new_empty(sums.shape[:2]), sums


@_pq_assign_op.register_fake
def _(x, codebooks, distance, backend):
    return assign_outputs(x, codebooks)


def _assign_setup_context(ctx, inputs, output):
    _, codebooks, _, backend = inputs
    ctx.save_for_backward(output[1])
    ctx.num_codes = codebooks.shape[1]
    ctx.codebook_dtype = codebooks.dtype
    ctx.backend = backend


def _assign_backward(ctx, grad_quantized, _grad_indices):
    (indices,) = ctx.saved_tensors
    grad_codebooks = None
    if ctx.needs_input_grad[1]:
        grad_codebooks = torch.ops.pqgan.pq_codebook_grad(
            grad_quantized.contiguous(), indices, ctx.num_codes, ctx.backend).to(ctx.codebook_dtype)
    return None, grad_codebooks, None, None


_pq_assign_op.register_autograd(_assign_backward, setup_context=_assign_setup_context)


# --- pq_codebook_grad ------------------------------------------------------------------------------------------

@torch.library.custom_op("pqgan::pq_codebook_grad", mutates_args=())
def _pq_codebook_grad_op(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int,
                         backend: str) -> torch.Tensor:
    impl = get_backend(backend)
    if not impl.checks_indices:
        validate.check_index_range("indices", indices, num_codes)
    return impl.codebook_grad(grad_quantized, indices, num_codes)


@_pq_codebook_grad_op.register_fake
def _(grad_quantized, indices, num_codes, backend):
    return codebook_grad_output(grad_quantized, indices, num_codes)


def _codebook_grad_setup_context(ctx, inputs, output):
    grad_quantized, indices, _, _ = inputs
    ctx.save_for_backward(indices)
    ctx.grad_dtype = grad_quantized.dtype


def _codebook_grad_backward(ctx, grad_codebooks):
    (indices,) = ctx.saved_tensors
    return reference.pq_lookup(grad_codebooks, indices).to(ctx.grad_dtype), None, None, None


_pq_codebook_grad_op.register_autograd(_codebook_grad_backward, setup_context=_codebook_grad_setup_context)


# --- EMA ops ---------------------------------------------------------------------------------------------------

@torch.library.custom_op("pqgan::pq_ema_stats", mutates_args=())
def _pq_ema_stats_op(x: torch.Tensor, indices: torch.Tensor, num_codes: int,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    impl = get_backend(backend)
    if not impl.checks_indices:
        validate.check_index_range("indices", indices, num_codes)
    counts, sums = impl.ema_stats(x, indices, num_codes)
    return counts, sums


@_pq_ema_stats_op.register_fake
def _(x, indices, num_codes, backend):
    return ema_stats_outputs(x, indices, num_codes)


@torch.library.custom_op("pqgan::pq_ema_update", mutates_args=("codebooks", "cluster_size", "embed_sum"))
def _pq_ema_update_op(x: torch.Tensor, indices: torch.Tensor, codebooks: torch.Tensor, cluster_size: torch.Tensor,
                      embed_sum: torch.Tensor, decay: float, eps: float, backend: str) -> None:
    validate.check_finite("x", x)
    impl = get_backend(backend)
    if not impl.checks_indices:  # a checking backend's statistics (ema_update's too) check them before any update
        validate.check_index_range("indices", indices, codebooks.shape[1])
    if impl.ema_update is not None:
        impl.ema_update(x, indices, codebooks, cluster_size, embed_sum, decay, eps)
    else:
        counts, sums = impl.ema_stats(x, indices, codebooks.shape[1])
        ema_apply.pq_ema_apply_(codebooks, cluster_size, embed_sum, counts, sums, decay, eps)


@_pq_ema_update_op.register_fake
def _(x, indices, codebooks, cluster_size, embed_sum, decay, eps, backend):
    return None


# --- public wrappers -------------------------------------------------------------------------------------------

def pq_assign(x: torch.Tensor, codebooks: torch.Tensor, *, distance: str = "l2",
              backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codeword per subspace, fused: distance + argmin + lookup, no (N, S, K) buffer on fast backends.

    Args:
        x: (N, S*d) float16/bfloat16/float32/float64; subspace s is ``x[:, s*d:(s+1)*d]``.
        codebooks: (S, K, d) float, same device as x. Differentiable: the gradient reaching ``quantized`` flows to
            the codebooks by a per-code scatter-add.
        distance: "l2" (squared Euclidean) or "cosine" (largest cosine similarity; codewords returned unnormalised).
        backend: "auto", "reference", "triton", "cuda" or "cpu".
    Returns:
        quantized (N, S*d) in x.dtype, indices (N, S) int64. Ties resolve to the lowest index.
    """
    validate.check_assign_inputs(x, codebooks, distance)
    name = resolve_backend(backend, x, codebooks, distance)
    return torch.ops.pqgan.pq_assign(x, codebooks, distance, name)


def pq_codebook_grad(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int, *,
                     backend: str = "auto") -> torch.Tensor:
    """Scatter-add of the gradient of ``quantized`` per code: (N, S*d), (N, S) -> (S, K, d) (fp32, or fp64)."""
    validate.check_rows_and_indices("grad_quantized", grad_quantized, indices)
    name = resolve_backend(backend, grad_quantized, None)
    return torch.ops.pqgan.pq_codebook_grad(grad_quantized, indices, int(num_codes), name)


def pq_ema_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int, *,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code counts (S, K) and sums of assigned sub-vectors (S, K, d), fp32 (fp64 for fp64 x). No one-hot.

    Use it with ``pqgan_kernels.pq_ema_apply_`` when the statistics must be all-reduced across processes first.
    """
    validate.check_rows_and_indices("x", x, indices)
    name = resolve_backend(backend, x, None)
    return torch.ops.pqgan.pq_ema_stats(x, indices, int(num_codes), name)


def pq_ema_update(x: torch.Tensor, indices: torch.Tensor, codebooks: torch.Tensor, cluster_size: torch.Tensor,
                  embed_sum: torch.Tensor, decay: float = 0.99, eps: float = 1e-5, *,
                  backend: str = "auto") -> None:
    """Laplace-smoothed EMA codebook update, in place (semantics: ``reference.pq_ema_update``).

    x (N, S*d), indices (N, S), codebooks (S, K, d), cluster_size (S, K), embed_sum (S, K, d).
    """
    validate.check_ema_inputs(x, indices, codebooks, cluster_size, embed_sum, decay, eps)
    name = resolve_backend(backend, x, codebooks)
    torch.ops.pqgan.pq_ema_update(x, indices, codebooks, cluster_size, embed_sum, float(decay), float(eps), name)


def pq_lookup(codebooks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Codewords of the given indices: codebooks (S, K, d), indices (N, S) -> (N, S*d). Differentiable."""
    S, K, _ = validate.check_codebooks(codebooks)
    validate.check_index("indices", indices)
    if indices.dim() != 2 or indices.shape[1] != S:
        raise ValueError(f"indices must be (N, {S}), got shape {tuple(indices.shape)}")
    validate.check_index_range("indices", indices, K)
    return reference.pq_lookup(codebooks, indices)


def resolved_backend(x: torch.Tensor, codebooks: Optional[torch.Tensor] = None, backend: str = "auto") -> str:
    """Which backend a call with these inputs would run (handy for logs)."""
    return resolve_backend(backend, x, codebooks)
