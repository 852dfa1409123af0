"""Codebook-collapse warning for training logs: a subspace whose perplexity stays near 1 or that uses only a few
percent of its codes for several log steps in a row is reported (a collapsed VQ trains only its decoder).

    monitor = CollapseMonitor(codebook_size=256)
    message = monitor.update(out.stats.perplexity, out.stats.usage, positions=out.indices.numel() // S)
    if message: print(message)
"""
from __future__ import annotations

from typing import Optional

import torch


class CollapseMonitor:
    """Warns when, for ``patience`` consecutive updates, some subspace has perplexity < ``min_perplexity`` or
    batch usage < ``min_usage`` of the codes the batch could reach (min(K, positions) of K).

    update() returns the warning text on the update that completes a streak (and every ``patience`` updates while
    it lasts), else None; ``collapsed`` tells whether the last update was part of a streak.
    """

    def __init__(self, codebook_size: int, patience: int = 3, min_perplexity: float = 1.5, min_usage: float = 0.03):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.K, self.patience = int(codebook_size), int(patience)
        self.min_perplexity, self.min_usage = float(min_perplexity), float(min_usage)
        self.streak = 0
        self.collapsed = False

    def update(self, perplexity: torch.Tensor, usage: torch.Tensor, positions: int) -> Optional[str]:
        """perplexity, usage: (S,) per-subspace batch statistics; positions: latent positions in the batch."""
        perplexity = torch.as_tensor(perplexity, dtype=torch.float64).reshape(-1).cpu()
        usage = torch.as_tensor(usage, dtype=torch.float64).reshape(-1).cpu()
        reachable = min(self.K, max(int(positions), 1)) / self.K
        relative = usage / reachable
        bad = (perplexity < self.min_perplexity) | (relative < self.min_usage)
        if not bool(bad.any()):
            self.streak, self.collapsed = 0, False
            return None
        self.streak += 1
        self.collapsed = self.streak >= self.patience
        if not self.collapsed or (self.streak - self.patience) % self.patience:
            return None
        worst = int(torch.argmin(perplexity))
        return (f"codebook collapse: {int(bad.sum())} of {bad.numel()} subspaces have perplexity < "
                f"{self.min_perplexity:g} or use < {self.min_usage:.0%} of their codes for {self.streak} log steps "
                f"(subspace {worst}: perplexity {float(perplexity[worst]):.2f}, "
                f"{float(usage[worst]) * self.K:.0f} of {self.K} codes used). Try model.kmeans_init=true and "
                f"model.dead_code_threshold=0.1 (as in tiny_f8_vq).")


__all__ = ["CollapseMonitor"]
