"""Backends "cpu" and "cuda": the compiled kernels of csrc/ (``pqgan_kernels._C``, ops ``torch.ops.pqgan_native``).

Importing this module loads the extension and registers whichever of the two backends it provides; anything that
goes wrong (extension not built, built without CUDA, no GPU, stale build) is recorded with ``mark_unavailable``
and never raised.

The "cpu" backend's assignment is routed here (``cpu_assign``): l2 where a GEMM beats the per-code direct-formula
loop of the C++ kernel (``uses_gemm``: with the fused fp32 scorer d >= 48, or d >= 8 with d * K >= 16384; with
BLAS d >= 128, or d >= 64 with K >= 512 -- measured on the 2-core box, see benchmarks/bench_native_cpu.py) goes to
``pq_assign_gemm`` (csrc/cpu/assign_gemm.cpp). Per subspace it centres x
and the codebook on the codebook mean (or on 0 when the mean lies within the codebook's radius), scores
a_k = |c'_k|^2 - 2 x'.c'_k tile by tile over K -- with a fused fp32 kernel of our own in the AVX2 / AVX-512 copies
(csrc/cpu/assign_gemm_kernel.h ``gemm_scan``), else with BLAS -- (no (N, K) buffer: extra memory is bounded by the
outputs' size, see the C++ file), keeps every code within the rounding bound of ``bound.py`` of the row's best, and
re-checks those with the oracle's direct formula (a row with too many near-ties is decided by a direct scan). The
result equals a full direct scan at any magnitude of the data.
Everything else (cosine, smaller d or K) goes to ``pq_assign``, whose l2 scan for fp32 and d <= 4 is the same
idea in registers (csrc/cpu/assign_kernel.h ``assign_small_d_expanded``: expanded formula on centred data, exact
re-check within bound.py's bound). For d <= 2 (the paper's d = 2) and at least ``GRID_MIN_ROWS`` rows it asks for
the cell-grid search instead (``uses_grid``; csrc/cpu/assign_grid.h): per subspace the plane is cut into cells at
the codes' quantiles, each row scores only the ~20 codes of the 3 x 3 cells around its own, and a certificate (its
distance to that block's sides) proves the result equals a full direct scan; uncertified rows try the 5 x 5 block,
then the expanded scan (a block of data mostly far from the codes goes to it directly).

Native ops (schemas in ``csrc/ops.cpp``; CPU kernels in ``csrc/cpu/<op>.cpp``, CUDA kernels in ``csrc/cuda/<op>.cu``):
    pq_assign(x (N, S*d), codebooks (S, K, d), cosine: bool, bound_coefficient: float = 0, grid: bool = False)
                                                             -> (quantized (N, S*d) x.dtype, indices (N, S) int64)
    pq_ema_stats(x (N, S*d), indices (N, S), num_codes)      -> (counts (S, K), sums (S, K, d))  fp32 / fp64
    pq_codebook_grad(grad (N, S*d), indices (N, S), num_codes) -> (S, K, d)                     fp32 / fp64
    pq_ema_apply_(codebooks!, cluster_size!, embed_sum!, counts, sums, decay, eps) -> ()     fp32 state, CPU only
    pq_assign_gemm(x, codebooks, bound_coefficient, blas=False) -> like pq_assign (l2, CPU only; see ``assign_gemm``)
"""
from __future__ import annotations

import torch

from . import ema_apply
from .bound import bound_coefficient
from .dispatch import Backend, mark_unavailable, register_backend
from .reference import compute_dtype

BUILD_INFO = None

# Where the GEMM path beats the direct-formula scan (measured on the 2-core AVX-512 Xeon, one process, N = 4096-8192):
# with BLAS scoring (the baseline ISA copy, fp64, a lowered fp32 matmul precision) ...
GEMM_MIN_D = 64        # below this d the direct-formula kernel wins at every K measured
GEMM_ALWAYS_D = 128    # from this d the GEMM path wins at every K measured
GEMM_MIN_CODES = 512   # between the two, the GEMM path wins from this K on
# ... with the fused fp32 kernel (AVX2 / AVX-512 copies): direct / fused time 1.02-1.34 from d = 48 at every K
# measured (16 .. 16384), 1.02-1.31 for 8 <= d < 48 once d * K >= 16384 (e.g. VQ d = 8, K = 16384: 1.15), but
# 0.82-0.91 below it (d = 8 K = 1024, d = 16 K = 512, d = 32 K = 256)
FUSED_MIN_D = 48
FUSED_MIN_SMALL_D = 8
FUSED_MIN_DK = 16384
# The cell-grid search (l2, fp32, d <= 2): expanded-scan / grid time at 2 threads on the 2-core Xeon, N = 128 .. 8192:
# 0.59-1.03 below N = 1024 (the tables' cost), 0.99-1.74 at 1024, 1.23-5.5 from 2048 (S64 d2 K512 / K128 / K32,
# S16 d2 K1024, S128 d1 K256, S8 d2 K16384)
GRID_MAX_D = 2
GRID_MIN_ROWS = 1024
FULL_PRECISION = ("highest", "ieee")  # matmul precisions with fp32 multiplier inputs (bound.py's u_in = 0)


def _register_fakes() -> None:
    """Shape functions of the native ops (for torch.compile / FakeTensor / opcheck)."""
    from .ops import assign_outputs, codebook_grad_output, ema_stats_outputs  # the one output contract per op

    def assign_fake(x, codebooks, cosine, bound_coefficient=0.0, grid=False):
        return assign_outputs(x, codebooks)

    def stats_fake(x, indices, num_codes):
        return ema_stats_outputs(x, indices, num_codes)

    def grad_fake(grad, indices, num_codes):
        return codebook_grad_output(grad, indices, num_codes)

    def assign_gemm_fake(x, codebooks, bound_coefficient, blas=False):
        return assign_outputs(x, codebooks)

    def ema_apply_fake(codebooks, cluster_size, embed_sum, counts, sums, decay, eps):
        return None

    for name, fn in (("pq_assign", assign_fake), ("pq_ema_stats", stats_fake), ("pq_codebook_grad", grad_fake),
                     ("pq_assign_gemm", assign_gemm_fake), ("pq_ema_apply_", ema_apply_fake)):
        try:
            torch.library.register_fake(f"pqgan_native::{name}", fn)
        except RuntimeError as err:  # already registered (module re-imported)
            if "already" not in str(err):
                raise


def assign(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2",
           grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) x.dtype, indices (N, S) int64).

    l2 passes the fp32-FMA rounding bound of ``bound.py`` (the CPU's expanded small-d scan uses it; CUDA ignores it).
    grid: let the CPU use its cell-grid search for l2, fp32 and d <= 2 (csrc/cpu/assign_grid.h; CUDA ignores it).
    """
    cosine = distance == "cosine"
    coefficient = 0.0 if cosine else bound_coefficient(codebooks.shape[2], "ieee", compute_dtype(x, codebooks))
    return torch.ops.pqgan_native.pq_assign(x, codebooks, cosine, coefficient, grid)


def uses_grid(N: int, d: int) -> bool:
    """Whether the "cpu" backend's l2 assignment of N rows of sub-dim d asks for the cell-grid search (the kernel
    applies it for fp32 compute on the AVX2 / AVX-512 copies): its tables cost about as much as scanning
    ``GRID_MIN_ROWS`` rows."""
    return d <= GRID_MAX_D and N >= GRID_MIN_ROWS


def uses_gemm(d: int, K: int, fused: bool = False) -> bool:
    """Whether the "cpu" backend's l2 assignment of sub-dim d against K codes takes the GEMM path; fused: whether
    that path would score with the fused fp32 kernel (``fused_scoring``) rather than BLAS."""
    if fused:
        return d >= FUSED_MIN_D or (d >= FUSED_MIN_SMALL_D and d * K >= FUSED_MIN_DK)
    return d >= GEMM_ALWAYS_D or (d >= GEMM_MIN_D and K >= GEMM_MIN_CODES)


def fused_scoring(x: torch.Tensor, codebooks: torch.Tensor) -> bool:
    """Whether ``assign_gemm`` scores these inputs with the fused fp32 kernel: an AVX2 / AVX-512 copy, fp32
    compute and full fp32 matmul precision (else BLAS, see ``assign_gemm``)."""
    return (torch.ops.pqgan_native.cpu_isa() != "generic" and compute_dtype(x, codebooks) == torch.float32
            and matmul_precision() in FULL_PRECISION)


def matmul_precision() -> str:
    """The fp32 matmul precision BLAS on the CPU runs at, as a ``bound.py`` precision name.

    oneDNN's own setting (``torch.backends.mkldnn.matmul.fp32_precision``) first, then torch's global one; when
    torch refuses to say (legacy and new APIs mixed) the coarsest ("medium", bf16 inputs), which keeps the search
    exact at some cost in candidates.
    """
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    own = getattr(mkldnn, "fp32_precision", "none")
    if own in ("bf16", "tf32"):
        return own
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return "medium"


def assign_gemm(x: torch.Tensor, codebooks: torch.Tensor,
                blas: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The GEMM path, whatever d and K: x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d) x.dtype, indices
    (N, S) int64), exact l2.

    blas: score with torch's BLAS (at its fp32 matmul precision) instead of the fused fp32 kernel of the AVX2 /
    AVX-512 copies (which the baseline copy and fp64 compute lack, and use BLAS anyway); None: BLAS unless
    ``fused_scoring`` (so BLAS where the matmul precision is lowered: oneDNN's bf16 then runs at twice the fp32 rate
    on the 2-core AVX-512 box).
    """
    coefficient = bound_coefficient(codebooks.shape[2], matmul_precision(), compute_dtype(x, codebooks))
    if blas is None:
        blas = not fused_scoring(x, codebooks)
    return torch.ops.pqgan_native.pq_assign_gemm(x, codebooks, coefficient, blas)


def cpu_assign(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """``assign`` on the CPU; l2 where ``uses_gemm`` goes to the exact GEMM path (faster)."""
    if distance == "l2" and uses_gemm(codebooks.shape[2], codebooks.shape[1], fused_scoring(x, codebooks)):
        return assign_gemm(x, codebooks)
    return assign(x, codebooks, distance, grid=distance == "l2" and uses_grid(x.shape[0], codebooks.shape[2]))


def ema_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, S*d), indices (N, S) -> (counts (S, K), sums (S, K, d)), fp32 (fp64 for fp64 x)."""
    return torch.ops.pqgan_native.pq_ema_stats(x, indices, int(num_codes))


def codebook_grad(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """grad_quantized (N, S*d), indices (N, S) -> (S, K, d), fp32 (fp64 for fp64 grad)."""
    return torch.ops.pqgan_native.pq_codebook_grad(grad_quantized, indices, int(num_codes))


def cpu_ema_update(x: torch.Tensor, indices: torch.Tensor, codebooks: torch.Tensor, cluster_size: torch.Tensor,
                   embed_sum: torch.Tensor, decay: float, eps: float) -> None:
    """The EMA step in place: the statistics (which check the indices before anything changes), then the native
    apply for fp32 contiguous state (two passes; ``ema_apply.pq_ema_apply_``'s eight torch ops took 0.16-0.58 ms at
    F8 on the 2-core Xeon), else ``ema_apply.pq_ema_apply_``."""
    counts, sums = ema_stats(x, indices, codebooks.shape[1])
    if all(t.dtype == torch.float32 and t.is_contiguous() for t in (codebooks, cluster_size, embed_sum, sums)):
        torch.ops.pqgan_native.pq_ema_apply_(codebooks, cluster_size, embed_sum, counts, sums, float(decay),
                                             float(eps))
    else:
        ema_apply.pq_ema_apply_(codebooks, cluster_size, embed_sum, counts, sums, decay, eps)


def _register() -> None:
    global BUILD_INFO
    try:
        from . import _C  # noqa: F401  (loading the library registers torch.ops.pqgan_native)
    except ImportError as err:
        mark_unavailable("cpu", f"compiled extension pqgan_kernels._C not importable ({err}); "
                                "run `pip install --no-build-isolation -e .`")
        mark_unavailable("cuda", "compiled extension pqgan_kernels._C not importable")
        return
    BUILD_INFO = torch.ops.pqgan_native.build_info()
    if not all(hasattr(torch.ops.pqgan_native, op) for op in ("pq_assign", "pq_assign_gemm")):
        reason = f"extension ({BUILD_INFO}) is a stale build without the kernels; rebuild with " \
                 "`pip install --no-build-isolation -e .`"
        mark_unavailable("cpu", reason)
        mark_unavailable("cuda", reason)
        return
    _register_fakes()
    register_backend(Backend(name="cpu", devices=("cpu",), assign=cpu_assign, ema_stats=ema_stats,
                             codebook_grad=codebook_grad, ema_update=cpu_ema_update, checks_indices=True))
    if "cuda" not in BUILD_INFO:
        mark_unavailable("cuda", "extension built without CUDA (rebuild with CUDA_HOME set or PQGAN_BUILD_CUDA=1)")
    elif not torch.cuda.is_available():
        mark_unavailable("cuda", "extension built with CUDA but no CUDA device is available")
    else:
        register_backend(Backend(name="cuda", devices=("cuda",), assign=assign, ema_stats=ema_stats,
                                 codebook_grad=codebook_grad))


try:
    _register()
except Exception as err:  # never let a broken build break `import pqgan_kernels`
    mark_unavailable("cpu", f"native backend failed to load: {type(err).__name__}: {err}")
    mark_unavailable("cuda", f"native backend failed to load: {type(err).__name__}: {err}")
