"""Benchmark problem sizes: one ``Config`` per named case, with the N used on GPUs, on CPUs and in ``--quick``.

A config is x (N, S*d) against codebooks (S, K, d). The GPU default runs every config at its full N. The CPU
default runs the configs with a ``cpu_N`` at that N (>= 8192 rows, except plain VQ with d=256, 2048 as in taming's
VQGAN at F16): enough rows to measure the kernels rather than call overhead. Contenders that materialise the
(N, S, K) distance tensor (naive, vector-quantize-pytorch) are measured at fewer rows when the full N would not fit
the time or memory budget, and the table marks those rows (see ``Contender.rows_for``). ``--quick`` shrinks N, S
and K (d is kept: it selects the kernel) and is a smoke test only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class Config:
    name: str
    N: int                 # rows (latent positions) at full (GPU) size
    S: int                 # subspaces
    d: int                 # subspace dim
    K: int                 # codewords per subspace
    cpu_N: Optional[int]   # rows in the CPU default; None: not in the CPU default (name it in --configs)
    quick_N: int           # rows in --quick
    note: str = ""

    @property
    def D(self) -> int:
        return self.S * self.d

    @property
    def label(self) -> str:
        """'f8 S64 d2 K512': name and shape, for tables."""
        return f"{self.name} S{self.S} d{self.d} K{self.K}"

    def sized(self, device: str, quick: bool, n: int | None = None) -> "Config":
        """The config to run here: N from ``--n`` if given, else the quick, CPU or GPU size (CPU configs outside
        the default run at CPU_N); --quick also caps S at 8 and K at 128."""
        N = n or (self.quick_N if quick else self.N if device == "cuda" else (self.cpu_N or CPU_N))
        if quick:
            return replace(self, N=N, S=min(self.S, QUICK_MAX_S), K=min(self.K, QUICK_MAX_K))
        return replace(self, N=N)


QUICK_MAX_S, QUICK_MAX_K = 8, 128
CPU_N = 8192


CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("f8", 30 * 32 * 32, 64, 2, 512, cpu_N=CPU_N, quick_N=64, note="PQGAN-F8: batch 30 of 32x32 latents"),
    Config("f16", 30 * 16 * 16, 64, 2, 128, cpu_N=CPU_N, quick_N=64, note="PQGAN-F16: batch 30 of 16x16 latents"),
    Config("scalar", 30 * 16 * 16, 256, 1, 1024, cpu_N=None, quick_N=16, note="scalar quantisation, d=1"),
    Config("mid", 65536, 16, 16, 512, cpu_N=CPU_N, quick_N=64, note="S=16, d=16"),
    Config("d32", 65536, 8, 32, 256, cpu_N=CPU_N, quick_N=32, note="S=8, d=32, small codebooks"),
    Config("large-d", 65536, 8, 32, 4096, cpu_N=None, quick_N=32, note="S=8, d=32, big codebooks"),
    Config("vq", 16384, 1, 256, 16384, cpu_N=2048, quick_N=16, note="plain VQ, d=256 (taming VQGAN F16)"),
    Config("vq-d8", 30 * 32 * 32, 1, 8, 16384, cpu_N=CPU_N, quick_N=16,
           note="plain VQ, d=8 (LlamaGen-style VQ baseline f8_vq_k16384_d8)"),
)}


def default_configs(device: str) -> list[Config]:
    """Every config on a GPU; on a CPU those with a cpu_N."""
    return [c for c in CONFIGS.values() if device == "cuda" or c.cpu_N is not None]


def parse_configs(spec: str | None, device: str = "cuda") -> list[Config]:
    """'f8,vq' -> [Config, Config]; None or 'default' -> the device's default set; 'all' -> every config. Unknown
    names raise ValueError."""
    if not spec or spec == "default":
        return default_configs(device)
    if spec == "all":
        return list(CONFIGS.values())
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        out.append(CONFIGS[name])
    return out
