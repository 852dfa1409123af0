"""Benchmark problem sizes: one ``Config`` per named case, with the N used on GPUs, on CPUs and in ``--quick``.

A config is x (N, S*d) against codebooks (S, K, d). The GPU sizes are the issue's full set; the CPU sizes keep
the naive (N, S, K) distance tensor at 2^23 elements (32 MiB) so the whole CPU default finishes in a few minutes
on a 2-core machine; ``--quick`` shrinks N, S and K (d is kept: it selects the kernel) and is a smoke test only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Config:
    name: str
    N: int          # rows (latent positions) at full (GPU) size
    S: int          # subspaces
    d: int          # subspace dim
    K: int          # codewords per subspace
    cpu_N: int      # rows in the CPU default
    quick_N: int    # rows in --quick
    note: str = ""

    @property
    def D(self) -> int:
        return self.S * self.d

    def sized(self, device: str, quick: bool, n: int | None = None) -> "Config":
        """The config to run here: N from ``--n`` if given, else the quick, CPU or GPU size; --quick also caps
        S at 8 and K at 128."""
        N = n or (self.quick_N if quick else self.N if device == "cuda" else self.cpu_N)
        if quick:
            return replace(self, N=N, S=min(self.S, QUICK_MAX_S), K=min(self.K, QUICK_MAX_K))
        return replace(self, N=N)


QUICK_MAX_S, QUICK_MAX_K = 8, 128


CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("f8", 30 * 32 * 32, 64, 2, 512, cpu_N=256, quick_N=64, note="PQGAN-F8: batch 30 of 32x32 latents"),
    Config("f16", 30 * 16 * 16, 64, 2, 128, cpu_N=1024, quick_N=64, note="PQGAN-F16: batch 30 of 16x16 latents"),
    Config("scalar", 30 * 16 * 16, 256, 1, 1024, cpu_N=32, quick_N=16, note="scalar quantisation, d=1"),
    Config("mid", 65536, 16, 16, 512, cpu_N=1024, quick_N=64, note="S=16, d=16"),
    Config("large-d", 65536, 8, 32, 4096, cpu_N=256, quick_N=32, note="S=8, d=32, big codebooks"),
    Config("vq", 16384, 1, 256, 16384, cpu_N=512, quick_N=16, note="plain VQ, S=1"),
)}


def parse_configs(spec: str | None) -> list[Config]:
    """'f8,vq' -> [Config, Config]; None or 'all' -> every config. Unknown names raise ValueError."""
    if not spec or spec == "all":
        return list(CONFIGS.values())
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        out.append(CONFIGS[name])
    return out
