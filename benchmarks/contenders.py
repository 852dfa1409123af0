"""One small adapter per benchmark contender, all with the same interface.

A contender prepares, for one ``Case`` (inputs of one config), a zero-argument callable per measurement:

    forward(case) -> fn() returning (quantized (N, S*d), indices (N, S))   assign + lookup
    train(case)   -> fn()   one training step of the layer: forward + loss backward + EMA codebook update
    ema(case)     -> fn()   the EMA codebook update alone, from given indices

or a string: the reason it cannot run that measurement. ``unavailable(device)`` says why a contender cannot run
at all here (not installed, wrong device), ``est_bytes(case, what)`` / ``est_seconds(case, what)`` estimate its
largest memory use / the time of one call so the benchmark can skip what would not fit, and ``rows_for`` picks
fewer rows for a contender that materialises the (N, S, K) distances (``reducible``) when the full N would not fit.
Set-up work (module construction, torch.compile) happens in the preparing call, not in the timed callable.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

import pqgan_kernels
from pqgan_kernels import reference

from .configs import Config
from .naive_quantizer import NaiveProductQuantizer, naive_ema_update, pq_assign_naive

Prepared = Union[Callable[[], object], str]
MEASUREMENTS = ("forward", "train", "ema")
DECAY, EPS, COMMITMENT = 0.99, 1e-5, 0.25


@dataclass
class Case:
    """Inputs of one config: x (N, S*d) in the benchmark dtype, codebooks (S, K, d) fp32;
    indices (N, S) int64: a nearest-codeword assignment used as the EMA input;
    oracle (R, S) int64: ``reference.pq_assign`` (fp32) of the first R <= N rows, for index agreement."""
    cfg: Config
    N: int
    x: torch.Tensor
    codebooks: torch.Tensor
    indices: torch.Tensor
    oracle: torch.Tensor
    device: str
    first: bool = False  # first config of the run (``--compile first``)

    @property
    def nsk(self) -> int:
        return self.N * self.cfg.S * self.cfg.K

    def head(self, n: int) -> "Case":
        """The same case on its first n rows (views; the oracle keeps its first min(n, R) rows)."""
        if n >= self.N:
            return self
        return Case(self.cfg, n, self.x[:n], self.codebooks, self.indices[:n], self.oracle[:n], self.device,
                    self.first)


def _train_input(case: Case) -> torch.Tensor:
    return case.x.detach().clone().requires_grad_(True)


def _training_step(layer, z: torch.Tensor, unpack: Callable) -> Callable[[], None]:
    """fn(): forward, loss = layer loss + a stand-in decoder loss on the output, backward (grad reset first)."""
    def step():
        z.grad = None
        quantized, loss = unpack(layer(z))
        (loss + quantized.float().square().mean()).backward()
    return step


class Contender:
    name = ""
    description = ""
    memory_method = "torch"  # "torch" or "tracemalloc" on CPU (see timing.peak_extra_bytes)
    kind = "baseline"        # "baseline" (naive, torch.compile), "ours" (a pqgan backend) or "peer" (a library)
    reducible = False        # measured at fewer rows when the full N would not fit (est_bytes / est_seconds)

    def unavailable(self, device: str) -> Optional[str]:
        return None

    def est_bytes(self, case: Case, what: str) -> Optional[int]:
        return None

    def est_seconds(self, case: Case, what: str) -> Optional[float]:
        return None

    def rows_for(self, case: Case, measure, limit_bytes: float, budget_s: float) -> int:
        """Rows to measure on: case.N, or for a ``reducible`` contender the largest N / 2^j whose estimated peak
        memory stays under limit_bytes and estimated call time under budget_s for every measurement."""
        if not self.reducible:
            return case.N
        n = case.N
        while n > 1:
            sub = case.head(n)
            big = any((self.est_bytes(sub, w) or 0) > limit_bytes for w in measure)
            slow = any((self.est_seconds(sub, w) or 0) > budget_s for w in measure)
            if not (big or slow):
                break
            n //= 2
        return n

    def forward(self, case: Case) -> Prepared:
        return "not implemented for this contender"

    def train(self, case: Case) -> Prepared:
        return "no training step for this contender"

    def ema(self, case: Case) -> Prepared:
        return "no separate EMA update for this contender"


class Naive(Contender):
    name = "naive"
    description = ("plain PyTorch as public code does it: full (N,S,K) |x|^2-2x.c+|c|^2 distances "
                   "(naive_quantizer.pq_assign_naive); one-hot EMA; z+(q-z).detach()")

    reducible = True

    def est_bytes(self, case, what):
        # fp32 (N,S,K): distance + einsum output + temporaries; training adds the one-hot (N,S,K) matrix.
        return {"forward": 3, "train": 5, "ema": 3}[what] * 4 * case.nsk

    def est_seconds(self, case, what):
        # (N,S,K) elements per second on 2 CPU cores (measured: forward ~1e8, train ~5e7, EMA ~7e7); GPU ~100x
        rate = {"forward": 1e8, "train": 5e7, "ema": 7e7}[what]
        return case.nsk / (rate * (100 if case.device == "cuda" else 1))

    def forward(self, case):
        x, cb = case.x, case.codebooks
        return lambda: pq_assign_naive(x, cb)

    def train(self, case):
        layer = NaiveProductQuantizer(case.cfg.D, case.cfg.S, case.cfg.K, ema_decay=DECAY,
                                      commitment_weight=COMMITMENT, eps=EPS).to(case.device).train()
        layer.codebooks.copy_(case.codebooks)
        layer.embed_sum.copy_(case.codebooks)
        return _training_step(layer, _train_input(case), lambda out: (out[0], out[2]))

    def ema(self, case):
        cb, cs, es = case.codebooks.clone(), torch.ones(case.codebooks.shape[:2], device=case.device), \
            case.codebooks.clone()
        x, idx = case.x, case.indices
        return lambda: naive_ema_update(x, idx, cb, cs, es, DECAY, EPS)


class Compiled(Contender):
    name = "torch.compile"
    description = "torch.compile(naive_quantizer.pq_assign_naive) (default mode); compile time reported separately"

    def __init__(self, policy: str = "all"):
        self.policy = policy  # "all", "first" or "none"
        self.fn = None
        self.compile_s: dict[str, float] = {}

    def unavailable(self, device):
        return "disabled by --compile none" if self.policy == "none" else None

    def est_bytes(self, case, what):
        return 4 * case.nsk if what == "forward" else None  # one fp32 (N,S,K) buffer; the rest is fused

    def forward(self, case):
        import time
        if self.policy == "first" and not case.first:
            return "compiled on the first config only (--compile first, the --quick default)"
        if self.fn is None:
            dynamo = importlib.import_module("torch._dynamo")
            for knob in ("recompile_limit", "cache_size_limit"):  # one graph per config shape
                if hasattr(dynamo.config, knob):
                    setattr(dynamo.config, knob, max(64, getattr(dynamo.config, knob)))
            self.fn = torch.compile(pq_assign_naive)
        x, cb, fn = case.x, case.codebooks, self.fn
        t0 = time.perf_counter()
        fn(x, cb)
        if case.device == "cuda":
            torch.cuda.synchronize()
        self.compile_s[case.cfg.name] = time.perf_counter() - t0
        return lambda: fn(x, cb)

    def train(self, case):
        return "forward only (the training step is compared eager vs eager)"

    def ema(self, case):
        return self.train(case)


class Ours(Contender):
    """A pqgan_kernels backend through the public API (``pq_assign``, ``ProductQuantizer``, ``pq_ema_update``)."""

    kind = "ours"

    def __init__(self, backend: str, explicit: bool = False):
        self.backend = backend
        self.reducible = backend == "reference"  # the oracle: slow, measured on fewer rows
        self.name = f"pqgan:{backend}"
        self.description = f"pqgan_kernels.pq_assign(..., backend={backend!r}) / ProductQuantizer(backend=...)"
        self.explicit = explicit

    def unavailable(self, device):
        info = pqgan_kernels.backend_info()
        if info.get(self.backend) != "available":
            return f"backend {self.backend!r} not available: {info.get(self.backend)}"
        if self.backend == "triton" and device != "cuda" and not self.explicit:
            return "Triton on CPU runs in its interpreter: not a speed measurement (name it in --backends to force)"
        return None

    def est_bytes(self, case, what):
        if self.backend == "reference" and what == "forward":
            return 3 * 4 * min(case.nsk * case.cfg.d, 1 << 24)  # chunked (rows, S, K, d) difference tensor
        return None

    def est_seconds(self, case, what):
        # the oracle's elementwise (rows, S, K, d) passes: ~5e7 elements/s on a CPU core, ~5e9 on a GPU
        if self.backend == "reference" and what in ("forward", "train"):
            return case.nsk * case.cfg.d / (5e9 if case.device == "cuda" else 5e7)
        return None

    def _check(self, case) -> Optional[str]:
        try:
            return pqgan_kernels.get_backend(self.backend).check_supports(case.x, case.codebooks, "l2")
        except Exception as err:  # noqa: BLE001
            return f"{type(err).__name__}: {err}"

    def forward(self, case):
        reason = self._check(case)
        if reason:
            return reason
        x, cb, backend = case.x, case.codebooks, self.backend
        return lambda: pqgan_kernels.pq_assign(x, cb, backend=backend)

    def train(self, case):
        reason = self._check(case)
        if reason:
            return reason
        from pqgan.quantizer import ProductQuantizer
        cfg = case.cfg
        layer = ProductQuantizer(cfg.D, cfg.S, cfg.K, ema_decay=DECAY, commitment_weight=COMMITMENT, eps=EPS,
                                 channel_last=True, backend=self.backend).to(case.device).train()
        layer.codebooks.copy_(case.codebooks)
        layer.embed_sum.copy_(case.codebooks)
        return _training_step(layer, _train_input(case), lambda out: (out.quantized, out.loss))

    def ema(self, case):
        reason = self._check(case)
        if reason:
            return reason
        cb, es = case.codebooks.clone(), case.codebooks.clone()
        cs = torch.ones(case.codebooks.shape[:2], device=case.device)
        x, idx, backend = case.x, case.indices, self.backend
        return lambda: pqgan_kernels.pq_ema_update(x, idx, cb, cs, es, DECAY, EPS, backend=backend)


def _triton_mode_module():
    """The pqgan Triton module exposing set_mode/get_mode with a "fast" mode, or None."""
    for name in ("pqgan_kernels.triton_backend", "pqgan_kernels.triton_assign"):
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not there or broken: no fast mode to benchmark
            continue
        if callable(getattr(module, "set_mode", None)) and callable(getattr(module, "get_mode", None)) \
                and "fast" in getattr(module, "MODES", ("fast",)):
            return module
    return None


class OursTritonFast(Ours):
    """Backend "triton" with its fast (tf32/bf16 search + fp32 re-check) mode switched on around each call."""

    def __init__(self, explicit: bool = False):
        super().__init__("triton", explicit)
        self.name = "pqgan:triton-fast"
        self.description = "backend 'triton' with set_mode('fast') (tf32 candidate search, fp32 re-check)"
        self.module = None

    def unavailable(self, device):
        reason = super().unavailable(device)
        if reason:
            return reason
        self.module = _triton_mode_module()
        return None if self.module else "the triton module exposes no set_mode('fast')"

    def _fast(self, fn):
        module = self.module

        def wrapped():
            previous = module.get_mode()
            module.set_mode("fast")
            try:
                return fn()
            finally:
                module.set_mode(previous[0] if isinstance(previous, tuple) else previous)
        return wrapped

    def _fast_unless_small_d(self, prepared, case, small_d_reason: str):
        """``prepared`` (the callable, or why it is skipped) in fast mode; small d: ``small_d_reason`` (the small-d
        kernel is exact in both modes, so there is nothing to compare)."""
        if isinstance(prepared, str):
            return prepared
        if case.cfg.d <= getattr(self.module, "SMALL_D_MAX", 0):
            return small_d_reason
        return self._fast(prepared)

    def forward(self, case):
        return self._fast_unless_small_d(super().forward(case), case,
                                         f"d={case.cfg.d} uses the exact small-d kernel in both modes (same as "
                                         "pqgan:triton)")

    def train(self, case):
        return self._fast_unless_small_d(super().train(case), case, f"d={case.cfg.d}: same kernels as pqgan:triton")

    def ema(self, case):
        return "same EMA kernel as pqgan:triton"


class VectorQuantizePytorch(Contender):
    name = "vector-quantize-pytorch"
    kind = "peer"
    reducible = True
    description = ("vector_quantize_pytorch.VectorQuantize(dim=D, codebook_size=K, heads=S, "
                   "separate_codebook_per_head=True, codebook_dim=d), EMA decay 0.99")

    def unavailable(self, device):
        try:
            importlib.import_module("vector_quantize_pytorch")
        except Exception as err:  # noqa: BLE001
            return f"not installed ({type(err).__name__}: {err}); pip install vector-quantize-pytorch"
        return None

    def est_bytes(self, case, what):
        return {"forward": 3, "train": 6}.get(what, 0) * 4 * case.nsk

    def est_seconds(self, case, what):
        # full (N,S,K) distances like the naive contender: ~4e7 elements/s on 2 CPU cores (measured), GPU ~100x
        rate = {"forward": 4.5e7, "train": 3.5e7}.get(what)
        return case.nsk / (rate * (100 if case.device == "cuda" else 1)) if rate else None

    def _layer(self, case):
        from vector_quantize_pytorch import VectorQuantize
        cfg = case.cfg
        vq = VectorQuantize(dim=cfg.D, codebook_size=cfg.K, heads=cfg.S, separate_codebook_per_head=True,
                            codebook_dim=cfg.d, decay=DECAY, eps=EPS, commitment_weight=COMMITMENT).to(case.device)
        embed = vq._codebook.embed  # private, but the only way to put the shared codebooks in
        if embed.numel() != case.codebooks.numel():
            raise ValueError(f"unexpected codebook shape {tuple(embed.shape)}")
        with torch.no_grad():
            embed.copy_(case.codebooks.reshape(embed.shape))
            if hasattr(vq._codebook, "embed_avg"):
                vq._codebook.embed_avg.copy_(case.codebooks.reshape(embed.shape))
        return vq

    def forward(self, case):
        vq = self._layer(case).eval()
        x, N, S = case.x[None], case.N, case.cfg.S

        def fn():
            with torch.no_grad():
                quantized, indices, _ = vq(x)
            return quantized.reshape(N, -1), indices.reshape(N, S)
        return fn

    def train(self, case):
        vq = self._layer(case).train()
        z = case.x.detach().clone()[None].requires_grad_(True)
        return _training_step(vq, z, lambda out: (out[0], out[2].sum()))

    def ema(self, case):
        return "no standalone EMA call in its public API (EMA runs inside forward in train mode)"


class FlashKMeans(Contender):
    name = "flash-kmeans"
    kind = "peer"
    description = ("flash_kmeans euclid_assign_triton on the (S, N, d) layout (transpose included; d < 16 "
                   "zero-padded to 16 for its tl.dot, which leaves distances unchanged) + lookup")

    def __init__(self):
        self.assign = None

    def unavailable(self, device):
        if device != "cuda":
            return "GPU only (Triton CUDA kernels)"
        try:
            module = importlib.import_module("flash_kmeans.assign_euclid_triton")
        except Exception as err:  # noqa: BLE001
            return f"not installed ({type(err).__name__}: {err}); pip install flash-kmeans"
        self.assign = getattr(module, "euclid_assign_triton", None)
        return None if self.assign else "flash_kmeans has no euclid_assign_triton"

    def forward(self, case):
        import torch.nn.functional as F
        N, S, d = case.N, case.cfg.S, case.cfg.d
        x, cb, assign = case.x, case.codebooks, self.assign
        pad = max(0, 16 - d)
        cents = F.pad(cb.to(x.dtype), (0, pad)).contiguous()                # (S, K, max(d, 16))

        def fn():
            xs = F.pad(x.reshape(N, S, d).transpose(0, 1), (0, pad)).contiguous()  # (S, N, max(d, 16))
            x_sq = xs.float().square().sum(-1)                                       # (S, N)
            indices = assign(xs, cents, x_sq).t().long()                             # (N, S)
            return reference.pq_lookup(cb, indices).to(x.dtype), indices
        return fn


class Faiss(Contender):
    name = "faiss"
    kind = "peer"
    description = "faiss.ProductQuantizer(D, S, log2 K): compute_codes + code unpacking + decode (fp32 only)"
    memory_method = "tracemalloc"

    def unavailable(self, device):
        if device != "cpu":
            return "faiss-cpu runs on CPU tensors only"
        try:
            importlib.import_module("faiss")
        except Exception as err:  # noqa: BLE001
            return f"not installed ({type(err).__name__}: {err}); pip install faiss-cpu"
        return None

    def forward(self, case):
        import faiss
        import numpy as np
        cfg = case.cfg
        if cfg.K & (cfg.K - 1):
            return f"faiss needs K = 2^nbits, got K={cfg.K}"
        nbits = cfg.K.bit_length() - 1
        if nbits > 16:
            return f"faiss ProductQuantizer takes at most 16 bits per code, K={cfg.K}"
        faiss.omp_set_num_threads(torch.get_num_threads())
        pq = faiss.ProductQuantizer(cfg.D, cfg.S, nbits)
        faiss.copy_array_to_vector(case.codebooks.float().cpu().numpy().ravel(), pq.centroids)
        x, N, S, dtype = case.x, case.N, cfg.S, case.x.dtype
        weights = np.int64(1) << np.arange(nbits, dtype=np.int64)

        def fn():
            xn = x.float().numpy()
            codes = pq.compute_codes(xn)                                        # (N, ceil(S*nbits/8)) uint8
            bits = np.unpackbits(codes, axis=1, bitorder="little")[:, :S * nbits].reshape(N, S, nbits)
            indices = torch.from_numpy(bits.astype(np.int64) @ weights)
            return torch.from_numpy(pq.decode(codes)).to(dtype), indices
        return fn

    def train(self, case):
        return "forward only (an inference library: no training step or EMA update)"

    def ema(self, case):
        return self.train(case)


def build_contenders(device: str, compile_policy: str, explicit: set[str]) -> list[Contender]:
    """Every contender, in table order (ours after the baselines they are compared with)."""
    ours = [Ours(name, explicit=name in explicit) for name in pqgan_kernels.BACKENDS]
    return [Naive(), Compiled(compile_policy), *ours, OursTritonFast(explicit="triton-fast" in explicit),
            VectorQuantizePytorch(), FlashKMeans(), Faiss()]
