"""Bit-packing of PQ indices: S codes of ceil(log2 K) bits each per position, little-endian, into uint8 bytes."""
from __future__ import annotations

import torch


def bits_per_code(num_codes: int) -> int:
    """ceil(log2 K): 0 for K=1, 1 for K=2, 9 for K=512, 9 for K=257."""
    return (int(num_codes) - 1).bit_length()


def packed_bytes(num_subspaces: int, num_codes: int) -> int:
    """Bytes per position: ceil(S * ceil(log2 K) / 8)."""
    return (num_subspaces * bits_per_code(num_codes) + 7) // 8


def pack_indices(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(..., S) integer indices in [0, K) -> (..., ceil(S*ceil(log2 K)/8)) uint8."""
    if indices.numel() and indices.device.type != "meta" and (int(indices.min()) < 0 or int(indices.max()) >= num_codes):
        raise ValueError(f"indices must be in [0, {num_codes}), got values in [{int(indices.min())}, "
                         f"{int(indices.max())}]")
    S = indices.shape[-1]
    bits = bits_per_code(num_codes)
    lead = indices.shape[:-1]
    nbytes = packed_bytes(S, num_codes)
    if nbytes == 0:
        return torch.zeros(*lead, 0, dtype=torch.uint8, device=indices.device)
    shifts = torch.arange(bits, device=indices.device)
    stream = ((indices.long().unsqueeze(-1) >> shifts) & 1).reshape(*lead, S * bits)
    stream = torch.nn.functional.pad(stream, (0, nbytes * 8 - S * bits))
    weights = 1 << torch.arange(8, device=indices.device)
    return (stream.reshape(*lead, nbytes, 8) * weights).sum(-1).to(torch.uint8)


def unpack_indices(packed: torch.Tensor, num_subspaces: int, num_codes: int) -> torch.Tensor:
    """Inverse of ``pack_indices``: (..., nbytes) uint8 -> (..., S) int64; raises if a code decodes to >= K."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed indices must be uint8, got {packed.dtype}")
    S, bits = num_subspaces, bits_per_code(num_codes)
    nbytes = packed_bytes(S, num_codes)
    if packed.shape[-1] != nbytes:
        raise ValueError(f"expected {nbytes} bytes per position for S={S}, K={num_codes}, got {packed.shape[-1]}")
    lead = packed.shape[:-1]
    if bits == 0:
        return torch.zeros(*lead, S, dtype=torch.int64, device=packed.device)
    stream = (packed.long().unsqueeze(-1) >> torch.arange(8, device=packed.device)) & 1
    stream = stream.reshape(*lead, nbytes * 8)[..., :S * bits].reshape(*lead, S, bits)
    indices = (stream << torch.arange(bits, device=packed.device)).sum(-1)
    if indices.numel() and indices.device.type != "meta" and int(indices.max()) >= num_codes:  # K not a power of 2: some bit patterns are no code
        raise ValueError(f"packed bytes decode to index {int(indices.max())}, not a code of K={num_codes}: "
                         "corrupt data, or packed with another K")
    return indices
