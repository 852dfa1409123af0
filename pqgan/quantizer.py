"""``ProductQuantizer``: a drop-in product-quantisation layer for VQGAN-style autoencoders.

A latent vector of dim D is split into S contiguous subspaces of dim d = D/S; each picks the nearest of the K
codewords of its own codebook. S=1 is plain VQ, d=1 is scalar quantisation.

    >>> pq = ProductQuantizer(dim=128, num_subspaces=64, codebook_size=512)        # PQGAN-F8
    >>> out = pq(torch.randn(2, 128, 32, 32))
    >>> out.quantized.shape, out.indices.shape                                      # (2,128,32,32), (2,32,32,64)
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import pqgan_kernels
from pqgan_kernels import validate

from .kmeans import kmeans
from .packing import bits_per_code, pack_indices, unpack_indices


class QuantizerStats(NamedTuple):
    """Per-subspace statistics of one forward pass, each (S,) float32.

    perplexity: exp(entropy) of this batch's code histogram (1 = one code used, K = uniform use).
    usage:      fraction of the K codes used at least once in this batch.
    dead_codes: codes whose running usage (bias-corrected EMA of assignments per batch, see
                ``ProductQuantizer.running_usage``) is below ``dead_code_threshold`` (or below 1e-3 when it is 0).
    """
    perplexity: torch.Tensor
    usage: torch.Tensor
    dead_codes: torch.Tensor


class QuantizerOutput(NamedTuple):
    """quantized: same shape as the input, straight-through gradient to it. indices: (..., S) int64.
    loss: scalar (commitment, plus the codebook term when codebooks are trained by gradient). stats: QuantizerStats.
    """
    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    stats: QuantizerStats


class _StraightThrough(torch.autograd.Function):
    """Forward: the codewords, exactly (``z + (q - z).detach()`` would round). Backward: the gradient to z as is."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


@torch.library.custom_op("pqgan::kmeans_init_", mutates_args=("codebooks", "embed_sum", "initted"))
def _kmeans_init_op(rows: torch.Tensor, codebooks: torch.Tensor, embed_sum: torch.Tensor, cluster_size: torch.Tensor,
                    initted: torch.Tensor, distance: str, backend: str) -> None:
    """k-means++ codebooks (S, K, d) from rows (N, S*d), once: a no-op when ``initted`` is already true.

    Under DDP rank 0's result is broadcast. EMA mode: embed_sum (S, K, d) becomes codebooks * cluster_size (S, K)
    (both empty in gradient mode).
    """
    if bool(initted):
        return
    S, K, _ = codebooks.shape
    centres = kmeans(rows, S, K, distance=distance, backend=backend).to(codebooks.dtype)
    if _distributed():
        dist.broadcast(centres, src=0)
    codebooks.copy_(centres)
    if embed_sum.numel():
        embed_sum.copy_(centres * cluster_size.unsqueeze(-1))
    initted.fill_(True)


@_kmeans_init_op.register_fake
def _(rows, codebooks, embed_sum, cluster_size, initted, distance, backend):
    return None


def code_usage(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, K) code counts -> (usage, perplexity), each (S,) in counts' float dtype.

    usage: fraction of the K codes used at least once; perplexity: exp(entropy) of the code histogram.
    """
    probs = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(-1)
    return (counts > 0).to(probs.dtype).mean(-1), entropy.exp()


_OLD_CHECKPOINT_STEPS = 1_000_000  # usage_steps assumed for checkpoints that predate it (bias 0.99**1e6 = 0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ProductQuantizer(nn.Module):
    """Product quantiser with S codebooks of K codewords of dim d = dim / num_subspaces.

    Args:
        dim: channel count D of the latents.
        num_subspaces: S; must divide dim.
        codebook_size: K codewords per subspace.
        ema_decay: decay of the EMA codebook update (codebooks are buffers); None trains the codebooks by gradient
            (a Parameter, initialised N(0, 1), pulled by the codebook loss).
        commitment_weight: weight of ||z - sg(q)||^2.
        codebook_weight: weight of ||sg(z) - q||^2 (only when ema_decay is None).
        distance: "l2" or "cosine".
        kmeans_init: initialise each codebook with k-means++ on the first training batch.
        dead_code_threshold: codes whose running usage (assignments per batch, bias-corrected EMA) falls below it
            are re-seeded from random inputs of the current batch (0 disables); from the first training step on.
        codebook_init: "normal" (N(0, 1)) or "uniform" (U(-1/K, 1/K), taming's VQ init).
        channel_last: inputs are (..., dim) instead of (B, dim, *spatial).
        backend: kernel backend, "auto", "reference", "triton", "cuda" or "cpu".
        eps: Laplace smoothing of the EMA update.
    """

    def __init__(self, dim: int, num_subspaces: int, codebook_size: int, *, ema_decay: Optional[float] = 0.99,
                 commitment_weight: float = 0.25, codebook_weight: float = 1.0, distance: str = "l2",
                 kmeans_init: bool = False, dead_code_threshold: float = 0.0, channel_last: bool = False,
                 backend: str = "auto", eps: float = 1e-5, codebook_init: str = "normal"):
        super().__init__()
        if dim < 1 or num_subspaces < 1 or codebook_size < 1:
            raise ValueError(f"dim, num_subspaces and codebook_size must be >= 1, "
                             f"got {dim}, {num_subspaces}, {codebook_size}")
        if dim % num_subspaces:
            raise ValueError(f"dim ({dim}) must be divisible by num_subspaces ({num_subspaces})")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        validate.check_distance(distance)
        if backend != "auto" and backend not in pqgan_kernels.BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {pqgan_kernels.BACKENDS}, got {backend!r}")
        self.dim, self.num_subspaces, self.codebook_size = dim, num_subspaces, codebook_size
        self.subspace_dim = dim // num_subspaces
        self.ema_decay = ema_decay
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        self.distance, self.kmeans_init, self.dead_code_threshold = distance, kmeans_init, dead_code_threshold
        self.channel_last, self.backend, self.eps = channel_last, backend, eps

        if codebook_init not in ("normal", "uniform"):
            raise ValueError(f"codebook_init must be 'normal' or 'uniform', got {codebook_init!r}")
        shape = (num_subspaces, codebook_size, self.subspace_dim)
        if codebook_init == "uniform":
            init = torch.empty(shape).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        else:
            init = torch.randn(shape)
        if self.use_ema:
            self.register_buffer("codebooks", init)
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebooks = nn.Parameter(init)
        # EMA of per-batch assignment counts; drives the EMA update, dead-code detection and stats in both modes.
        self.register_buffer("cluster_size", torch.ones(num_subspaces, codebook_size))
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self._kmeans_pending = kmeans_init  # a Python flag (torch.compile guards on it): the op runs until it has
        # Training steps folded into cluster_size (which starts at 1): running_usage() removes that start's bias.
        self.register_buffer("usage_steps", torch.zeros((), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before usage_steps existed: their cluster_size has long forgotten its start.
        state_dict.setdefault(prefix + "usage_steps", torch.tensor(_OLD_CHECKPOINT_STEPS, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def usage_decay(self) -> float:
        """Decay of the running usage ``cluster_size``: ema_decay, or 0.99 when codebooks train by gradient."""
        return self.ema_decay if self.use_ema else 0.99

    def running_usage(self) -> torch.Tensor:
        """(S, K) bias-corrected running usage (assignments per batch): (cluster_size - decay^t) / (1 - decay^t)
        after t training steps, so that it is exactly this batch's counts at t = 1 and does not carry the start
        value 1 for hundreds of steps; cluster_size itself before the first step."""
        t = self.usage_steps.to(self.cluster_size.dtype)
        bias = torch.pow(torch.full_like(t, self.usage_decay), t)
        corrected = (self.cluster_size - bias) / (1 - bias).clamp_min(1e-12)
        return torch.where(t > 0, corrected, self.cluster_size)
    @property
    def use_ema(self) -> bool:
        return self.ema_decay is not None

    @property
    def bits_per_position(self) -> int:
        """S * ceil(log2 K): the size of one latent position's code."""
        return self.num_subspaces * bits_per_code(self.codebook_size)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_subspaces={self.num_subspaces}, codebook_size={self.codebook_size}, "
                f"subspace_dim={self.subspace_dim}, ema_decay={self.ema_decay}, distance={self.distance!r}, "
                f"backend={self.backend!r}")

    # --- layout ------------------------------------------------------------------------------------------------

    def _to_rows(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, *spatial) or (..., D) -> (N, D), after checking the input."""
        validate.check_float("z", z)
        channel_axis = -1 if self.channel_last else 1
        min_dims = 1 if self.channel_last else 2
        if z.dim() < min_dims:
            raise ValueError(f"expected input of shape {'(..., D)' if self.channel_last else '(B, D, ...)'}, "
                             f"got shape {tuple(z.shape)}")
        if z.shape[channel_axis] != self.dim:
            raise ValueError(f"expected {self.dim} channels on axis {channel_axis}, got shape {tuple(z.shape)}")
        if z.numel() == 0:
            raise ValueError(f"empty batch: input of shape {tuple(z.shape)}")
        if not self.channel_last:
            z = z.movedim(1, -1)
        return z.reshape(-1, self.dim)

    def _from_rows(self, rows: torch.Tensor, like_shape: torch.Size) -> torch.Tensor:
        """(N, C) -> the layout of an input of ``like_shape`` with C channels."""
        if self.channel_last:
            return rows.reshape(*like_shape[:-1], rows.shape[-1])
        lead = (like_shape[0],) + tuple(like_shape[2:])
        return rows.reshape(*lead, rows.shape[-1]).movedim(-1, 1)

    def _index_shape(self, z_shape: torch.Size) -> tuple[int, ...]:
        lead = tuple(z_shape[:-1]) if self.channel_last else (z_shape[0],) + tuple(z_shape[2:])
        return lead + (self.num_subspaces,)

    # --- forward -----------------------------------------------------------------------------------------------

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        rows = self._to_rows(z)
        if self.training and self._kmeans_pending:
            # An op (opaque to torch.compile) that checks ``initted`` itself: no data-dependent Python branch.
            ema = (self.embed_sum, self.cluster_size) if self.use_ema else (rows.new_empty(0), rows.new_empty(0))
            torch.ops.pqgan.kmeans_init_(rows.detach(), self.codebooks, *ema, self.initted, self.distance,
                                         self.backend)
            self._kmeans_pending = False
        quantized, indices = pqgan_kernels.pq_assign(rows, self.codebooks, distance=self.distance,
                                                     backend=self.backend)
        rows_f, quantized_f = rows.float(), quantized.float()
        loss = self.commitment_weight * F.mse_loss(rows_f, quantized_f.detach())
        if not self.use_ema:
            loss = loss + self.codebook_weight * F.mse_loss(quantized_f, rows_f.detach())
        counts = self._batch_counts(indices)
        if self.training:
            self._update_codebooks(rows.detach(), indices, counts)
        stats = self._stats(counts)  # before re-seeding: the dead codes this step found, not the ones left after it
        if self.training and self.dead_code_threshold > 0:
            self._reseed_dead_codes(rows.detach())
        out = _StraightThrough.apply(rows, quantized)
        return QuantizerOutput(self._from_rows(out, z.shape), indices.reshape(self._index_shape(z.shape)), loss,
                               stats)

    def _batch_counts(self, indices: torch.Tensor) -> torch.Tensor:
        """Assignments per code in this batch, (S, K) float32."""
        counts = torch.zeros(self.num_subspaces, self.codebook_size, device=indices.device)
        return counts.scatter_add_(1, indices.t(), torch.ones(indices.t().shape, device=indices.device))

    def _stats(self, counts: torch.Tensor) -> QuantizerStats:
        with torch.no_grad():
            usage, perplexity = code_usage(counts)
            dead = (self.running_usage() < max(self.dead_code_threshold, 1e-3)).sum(-1).float()
        return QuantizerStats(perplexity, usage, dead)

    @torch.no_grad()
    def _update_codebooks(self, rows: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA codebook step (EMA mode) or usage tracking (gradient mode); re-seeding follows in ``forward``."""
        decay = self.usage_decay
        self.usage_steps.add_(1)
        if self.use_ema and not _distributed():
            pqgan_kernels.pq_ema_update(rows, indices, self.codebooks, self.cluster_size, self.embed_sum,
                                        decay, self.eps, backend=self.backend)
        elif self.use_ema:
            counts, sums = pqgan_kernels.pq_ema_stats(rows, indices, self.codebook_size, backend=self.backend)
            dist.all_reduce(counts)
            dist.all_reduce(sums)
            pqgan_kernels.pq_ema_apply_(self.codebooks, self.cluster_size, self.embed_sum, counts, sums,
                                        decay, self.eps)
        else:
            if _distributed():
                counts = counts.clone()
                dist.all_reduce(counts)
            self.cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)

    @torch.no_grad()
    def _reseed_dead_codes(self, rows: torch.Tensor) -> None:
        """Replace codes with EMA usage < threshold by random current inputs, all subspaces at once, no host sync."""
        S, K, d = self.codebooks.shape
        dead = (self.running_usage() < self.dead_code_threshold).unsqueeze(-1)  # (S, K, 1)
        picks = torch.randint(rows.shape[0], (S, K), device=rows.device)
        fresh = rows.reshape(-1, S, d)[picks, torch.arange(S, device=rows.device)[:, None]]  # (S, K, d)
        fresh = fresh.to(self.codebooks.dtype)
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.codebooks.data.copy_(torch.where(dead, fresh, self.codebooks))
        # the raw cluster_size whose running_usage() is exactly the threshold
        bias = torch.pow(torch.full_like(self.cluster_size[0, 0], self.usage_decay),
                         self.usage_steps.to(self.cluster_size.dtype))
        restart = self.dead_code_threshold * (1 - bias) + bias
        self.cluster_size.copy_(torch.where(dead.squeeze(-1), restart.expand_as(self.cluster_size),
                                            self.cluster_size))
        if self.use_ema:
            self.embed_sum.copy_(torch.where(dead, fresh * self.cluster_size.unsqueeze(-1), self.embed_sum))

    @torch.no_grad()
    # --- codes -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, *spatial) or (..., D) -> indices (B, *spatial, S) or (..., S), int64."""
        rows = self._to_rows(z)
        _, indices = pqgan_kernels.pq_assign(rows, self.codebooks, distance=self.distance, backend=self.backend)
        return indices.reshape(self._index_shape(z.shape))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, *spatial, S) or (..., S) -> latents (B, D, *spatial) or (..., D)."""
        validate.check_index("indices", indices)
        if indices.dim() < 1 or indices.shape[-1] != self.num_subspaces:
            raise ValueError(f"indices must end with S={self.num_subspaces}, got shape {tuple(indices.shape)}")
        if indices.numel() == 0:
            raise ValueError(f"empty batch: indices of shape {tuple(indices.shape)}")
        rows = pqgan_kernels.pq_lookup(self.codebooks, indices.reshape(-1, self.num_subspaces))
        lead = indices.shape[:-1]
        rows = rows.reshape(*lead, self.dim)
        return rows if self.channel_last else rows.movedim(-1, 1)

    def pack(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., S) indices -> (..., ceil(S*ceil(log2 K)/8)) uint8."""
        validate.check_index("indices", indices)
        if indices.shape[-1] != self.num_subspaces:
            raise ValueError(f"indices must end with S={self.num_subspaces}, got shape {tuple(indices.shape)}")
        validate.check_index_range("indices", indices, self.codebook_size)
        return pack_indices(indices, self.codebook_size)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Inverse of ``pack``: (..., nbytes) uint8 -> (..., S) int64."""
        return unpack_indices(packed, self.num_subspaces, self.codebook_size)
