"""Triton kernels for the fused PQ assignment: distance + argmin + lookup, no (N, K) or (N, S, K) buffer.

    assign(x (N, S*d), codebooks (S, K, d), distance) -> (quantized (N, S*d) x.dtype, indices (N, S) int64)

Each program takes a block of BM rows and ONE subspace s, streams codebook s in tiles of BK codewords and keeps,
per (row, tile column), the running best score and its index (strict ``<`` while K increases, so the earliest
index survives); after the K loop one reduction per row takes the minimum and the smallest index reaching it
(ties -> lowest index). Then the winner's codeword is gathered and ``quantized``/``indices`` are written once.

Two kernels:
  * ``d <= SMALL_D_MAX`` (the paper's d=2): CUDA-core arithmetic unrolled over d (d is a constexpr). l2 is the
    sum of squared differences, the oracle's formula, with fp contraction off, so fp32 results are bit-identical
    to ``reference.pq_assign`` for d <= 2 (for d > 2 the oracle's summation order may differ by an ulp).
  * larger d: a bound-checked search (``bound.py``). Both sides are centred per subspace (x - m, c - m with m the
    codebook mean: distances are translation invariant, the expansion's cancellation is not), approximate scores
    |c'|^2 - 2 x'.c' (l2) or -x.c/|c| (cosine) come from ``tl.dot`` -- fp32 ("ieee") in mode "exact", tf32, bf16
    or tf32x3 in mode "fast" -- and EVERY code within the row's bound B of the best approximate score is re-checked
    with the direct formula (fp32). The per-(row, slot) state keeps each slot's best and runner-up; a row whose
    candidates it can't enumerate (a runner-up within B, or more than RECHECK[mode] candidate slots) takes a direct
    scan of all K codes. So both modes return the direct formula's winner; only their speed differs
    (``fast_path_mismatch`` measures how often the approximate best alone would have been wrong).

Distances are fp32 for fp16/bf16/fp32 inputs; fp64 inputs are not taken (``unsupported`` says so and dispatch
routes them elsewhere).
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from . import validate
from .bound import bound_coefficient

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
SMALL_D_MAX = 8           # d <= this: CUDA-core kernel; above: tl.dot kernel
MAX_BD = 128              # largest d chunk held at once by the dot kernel (bigger d loops over chunks)
BIG_INDEX = tl.constexpr(2 ** 30)  # "no candidate" index inside the kernels
MODES = ("exact", "fast")
FAST_PRECISIONS = ("tf32", "bf16", "tf32x3")
# Candidate slots the dot kernel re-checks cheaply; a row with more (or a hidden one) takes the direct full scan.
# Only speed depends on these, never the result (see _assign_dot_kernel and bound.py). Codes within B of the best
# (randn and offset data, N=2048, computed on the CPU): fp32/tf32x3 ~1.0 per row at d=16..256; tf32 1.6 (d=16,
# K=512) to 3.2 (d=256, K=16384), >8 for 0-4 % of rows; bf16 5 to 55, >8 for 15-95 % of rows. So tf32 and
# bf16 searches send many blocks to the direct scan: "exact" (fp32 dot) or "fast" with tf32x3 are the fast choices
# until GPU measurements say otherwise.
RECHECK = {"exact": 4, "fast": 8}
AUTOTUNE = os.environ.get("PQGAN_TRITON_AUTOTUNE", "1") != "0"  # 0: one fixed config (tests, quick checks)

_mode = os.environ.get("PQGAN_TRITON_MODE", "exact")
_fast_precision = os.environ.get("PQGAN_TRITON_FAST_PRECISION", "tf32")


def set_mode(mode: str, precision: str | None = None) -> None:
    """Mode of the dot kernel (d > SMALL_D_MAX) used by backend "triton": "exact" (fp32 dot) or "fast".

    precision (fast mode only): "tf32", "bf16" or "tf32x3" (3 tf32 MMAs, near-fp32) for the candidate search;
    the best candidates are then re-checked in fp32.
    """
    global _mode, _fast_precision
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if precision is not None:
        if precision not in FAST_PRECISIONS:
            raise ValueError(f"precision must be one of {FAST_PRECISIONS}, got {precision!r}")
        _fast_precision = precision
    _mode = mode


def get_mode() -> tuple[str, str]:
    """(mode, fast precision) currently used by backend "triton"."""
    return _mode, _fast_precision


# --- small d: CUDA-core kernel -----------------------------------------------------------------------------------

@triton.jit
def _cast_out(v, out_ptr, IS_INTERP: tl.constexpr):
    """fp32 values -> the element type of out_ptr, round-to-nearest-even (the interpreter truncates to bf16)."""
    if IS_INTERP:
        if out_ptr.dtype.element_ty == tl.bfloat16:
            u = v.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
            v = u.to(tl.float32, bitcast=True)
    return v.to(out_ptr.dtype.element_ty)


@triton.jit
def _empty_slots(BM: tl.constexpr, BK: tl.constexpr):
    """The per-(row, slot) running minimum before any code: (+inf scores (BM, BK) fp32, BIG_INDEX indices int32)."""
    return tl.full((BM, BK), float("inf"), tl.float32), tl.full((BM, BK), BIG_INDEX, tl.int32)


@triton.jit
def _keep_lowest(score, k, kmask, run, run_idx):
    """One code tile into the per-(row, slot) running minimum: score (BM, BK) of codes k (BK,), +inf where ~kmask;
    strict ``<`` while k increases, so each slot keeps the earliest code reaching its minimum -> (run, run_idx)."""
    score = tl.where(kmask[None, :], score, float("inf"))
    better = score < run
    return tl.where(better, score, run), tl.where(better, k[None, :], run_idx)


@triton.jit
def _row_min(run, run_idx):
    """(BM, BK) slot state -> per row (BM,): (minimum score, lowest index reaching it; BIG_INDEX if none)."""
    best = tl.min(run, axis=1)
    return best, tl.min(tl.where(run == best[:, None], run_idx, BIG_INDEX), axis=1)


@triton.jit
def _assign_small_kernel(x_ptr, cb_ptr, q_ptr, idx_ptr, N, K, stride_x, stride_q, n_bucket,
                         d: tl.constexpr, COSINE: tl.constexpr, IS_INTERP: tl.constexpr,
                         BM: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    x_row = x_ptr + rows64 * stride_x + s * d
    cb_s = cb_ptr + s.to(tl.int64) * K * d
    cols = tl.arange(0, BK)

    if COSINE:
        xn = tl.zeros((BM,), tl.float32)
        for j in tl.static_range(d):
            xj = tl.load(x_row + j, mask=rmask, other=0.0).to(tl.float32)
            xn += xj * xj
        xnorm = tl.maximum(tl.sqrt_rn(xn), 1e-12)
    run, run_idx = _empty_slots(BM, BK)
    for k0 in range(0, K, BK):
        k = k0 + cols
        kmask = k < K
        if COSINE:  # the oracle's F.normalize of both sides, then the sum of products
            cn = tl.zeros((BK,), tl.float32)
            for j in tl.static_range(d):
                c = tl.load(cb_s + k * d + j, mask=kmask, other=0.0).to(tl.float32)
                cn += c * c
            cnorm = tl.maximum(tl.sqrt_rn(cn), 1e-12)
            dot = tl.zeros((BM, BK), tl.float32)
            for j in tl.static_range(d):
                xj = tl.load(x_row + j, mask=rmask, other=0.0).to(tl.float32)
                c = tl.load(cb_s + k * d + j, mask=kmask, other=0.0).to(tl.float32)
                dot += tl.div_rn(xj, xnorm)[:, None] * tl.div_rn(c, cnorm)[None, :]
            score = -dot
        else:
            score = tl.zeros((BM, BK), tl.float32)
            for j in tl.static_range(d):
                xj = tl.load(x_row + j, mask=rmask, other=0.0).to(tl.float32)
                c = tl.load(cb_s + k * d + j, mask=kmask, other=0.0).to(tl.float32)
                diff = xj[:, None] - c[None, :]
                score += diff * diff
        run, run_idx = _keep_lowest(score, k, kmask, run, run_idx)

    _, idx = _row_min(run, run_idx)
    idx = tl.where(idx >= K, 0, idx)  # every score was +inf (overflow): the oracle's argmin gives 0
    tl.store(idx_ptr + rows64 * tl.num_programs(1) + s, idx.to(tl.int64), mask=rmask)
    q_row = q_ptr + rows64 * stride_q + s * d
    for j in tl.static_range(d):
        c = tl.load(cb_s + idx * d + j, mask=rmask, other=0.0).to(tl.float32)
        tl.store(q_row + j, _cast_out(c, q_ptr, IS_INTERP), mask=rmask)


# --- larger d: tl.dot kernel -------------------------------------------------------------------------------------

@triton.jit
def _load_centred(x_row, centre_s, rmask, dd, d: tl.constexpr):
    """x' = fl(x - m) for columns dd of the rows: (BM, BD) fp32 (m = 0 for cosine)."""
    m2 = rmask[:, None] & (dd[None, :] < d)
    xt = tl.load(x_row[:, None] + dd[None, :], mask=m2, other=0.0).to(tl.float32)
    m = tl.load(centre_s + dd, mask=dd < d, other=0.0)
    return tl.where(m2, xt - m[None, :], 0.0)


@triton.jit
def _round_for(v, PRECISION: tl.constexpr, IS_INTERP: tl.constexpr):
    """Operand of the search's tl.dot: bf16-rounded for the bf16 search (kept in fp32 by the interpreter)."""
    if PRECISION == "bf16":
        v = v.to(tl.bfloat16)
        if IS_INTERP:  # the interpreter's bf16 dot is wrong: keep the rounded values in fp32
            v = v.to(tl.float32)
    return v


@triton.jit
def _dot(acc, xt, ct, PRECISION: tl.constexpr):
    if PRECISION == "bf16":
        acc = tl.dot(xt, ct, acc, out_dtype=tl.float32)
    elif PRECISION == "tf32":
        acc = tl.dot(xt, ct, acc, input_precision="tf32")
    elif PRECISION == "tf32x3":
        acc = tl.dot(xt, ct, acc, input_precision="tf32x3")
    else:
        acc = tl.dot(xt, ct, acc, input_precision="ieee")
    return acc


@triton.jit
def _search_chunk(acc, xt, cbc_s, k, kmask, dd, d: tl.constexpr, PRECISION: tl.constexpr, IS_INTERP: tl.constexpr):
    """acc (BM, BK) += x'_chunk . c'_chunk^T for the codewords k, columns dd (centred codebook cbc_s)."""
    ct = tl.load(cbc_s + k[None, :] * d + dd[:, None], mask=(dd[:, None] < d) & kmask[None, :], other=0.0)
    return _dot(acc, _round_for(xt, PRECISION, IS_INTERP), _round_for(ct, PRECISION, IS_INTERP), PRECISION)


@triton.jit
def _direct_chunk(e, x_row, cb_s, code, rmask, dd, d: tl.constexpr, COSINE: tl.constexpr):
    """The direct fp32 score pieces of codeword ``code`` (BM,) over columns dd: sum (x-c)^2 (l2) or sum x*c."""
    m2 = rmask[:, None] & (dd[None, :] < d)
    xv = tl.load(x_row[:, None] + dd[None, :], mask=m2, other=0.0).to(tl.float32)
    cv = tl.load(cb_s + code[:, None] * d + dd[None, :], mask=m2, other=0.0).to(tl.float32)
    if COSINE:
        e += tl.sum(xv * cv, axis=1)
    else:
        diff = xv - cv
        e += tl.sum(diff * diff, axis=1)
    return e


@triton.jit
def _gather_chunk(q_row, cb_s, idx, rmask, dd, d: tl.constexpr, IS_INTERP: tl.constexpr):
    m2 = rmask[:, None] & (dd[None, :] < d)
    cv = tl.load(cb_s + idx[:, None] * d + dd[None, :], mask=m2, other=0.0).to(tl.float32)
    tl.store(q_row[:, None] + dd[None, :], _cast_out(cv, q_row, IS_INTERP), mask=m2)


@triton.jit
def _direct_scan(x_row, cb_s, cn_s, rmask, K, d: tl.constexpr, COSINE: tl.constexpr, BM: tl.constexpr,
                 BK: tl.constexpr):
    """The direct fp32 score of every code for the block's rows (runtime loops: any d) -> (BM,) the lowest index
    of the best: sum (x-c)^2 (l2) or -sum x*c / cn (cosine, cn (K,) the clamped codeword norms)."""
    cols = tl.arange(0, BK)
    run, run_idx = _empty_slots(BM, BK)
    for k0 in range(0, K, BK):
        k = k0 + cols
        kmask = k < K
        score = tl.zeros((BM, BK), tl.float32)
        for j in range(d):
            xj = tl.load(x_row + j, mask=rmask, other=0.0).to(tl.float32)
            c = tl.load(cb_s + k * d + j, mask=kmask, other=0.0).to(tl.float32)
            if COSINE:
                score += xj[:, None] * c[None, :]
            else:
                diff = xj[:, None] - c[None, :]
                score += diff * diff
        if COSINE:
            score = -tl.div_rn(score, tl.load(cn_s + k, mask=kmask, other=1.0)[None, :])
        run, run_idx = _keep_lowest(score, k, kmask, run, run_idx)
    _, idx = _row_min(run, run_idx)
    return idx


@triton.jit
def _assign_dot_kernel(x_ptr, cb_ptr, cbc_ptr, centre_ptr, cn_ptr, rc_ptr, q_ptr, idx_ptr, approx_ptr,
                       N, K, stride_x, stride_q, n_bucket, coef,
                       d: tl.constexpr, BD: tl.constexpr, COSINE: tl.constexpr, PRECISION: tl.constexpr,
                       RECHECK_R: tl.constexpr, WRITE_APPROX: tl.constexpr, IS_INTERP: tl.constexpr,
                       BM: tl.constexpr, BK: tl.constexpr):
    """Bound-checked search (see ``bound.py``): approximate scores on centred data with tl.dot, every code within
    the row's bound B of the best re-checked with the direct formula; rows whose candidate set the per-slot state
    can't enumerate (a slot's runner-up within B, or more than RECHECK_R candidate slots) take a direct full scan.

    cbc (S, K, d) fp32: centred codebooks (l2) or the codebooks (cosine); centre (S, d) fp32 (zeros for cosine);
    cn (S, K) fp32: |c'_k|^2 (l2) or max(|c_k|, 1e-12) (cosine); rc (S,) fp32: max_k |c'_k| (l2).
    """
    NUM_DC: tl.constexpr = (d + BD - 1) // BD
    pid_m = tl.program_id(0)
    s = tl.program_id(1)
    S = tl.num_programs(1)
    s64 = s.to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    x_row = x_ptr + rows64 * stride_x + s64 * d
    cb_s = cb_ptr + s64 * K * d
    cbc_s = cbc_ptr + s64 * K * d
    centre_s = centre_ptr + s64 * d
    cn_s = cn_ptr + s64 * K
    cols = tl.arange(0, BK)
    dj = tl.arange(0, BD)

    if NUM_DC == 1:  # the x tile is loaded once and kept for the whole K loop
        xt = _load_centred(x_row, centre_s, rmask, dj, d)
        x2 = tl.sum(xt * xt, axis=1)  # |x'|^2
    else:
        x2 = tl.zeros((BM,), tl.float32)
        for dc in range(NUM_DC):
            xc = _load_centred(x_row, centre_s, rmask, dc * BD + dj, d)
            x2 += tl.sum(xc * xc, axis=1)

    # Per (row, slot): the smallest approximate score (index: the earliest code reaching it) and the runner-up.
    run, run_idx = _empty_slots(BM, BK)
    run2 = tl.full((BM, BK), float("inf"), tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + cols
        kmask = k < K
        acc = tl.zeros((BM, BK), tl.float32)
        if NUM_DC == 1:
            acc = _search_chunk(acc, xt, cbc_s, k, kmask, dj, d, PRECISION, IS_INTERP)
        else:
            for dc in range(NUM_DC):
                dd = dc * BD + dj
                acc = _search_chunk(acc, _load_centred(x_row, centre_s, rmask, dd, d), cbc_s, k, kmask, dd, d,
                                    PRECISION, IS_INTERP)
        cn = tl.load(cn_s + k, mask=kmask, other=1.0)
        if COSINE:
            score = -tl.div_rn(acc, cn[None, :])
        else:
            score = cn[None, :] - 2.0 * acc
        score = tl.where(kmask[None, :], score, float("inf"))
        better = score < run
        run2 = tl.where(better, run, tl.minimum(run2, score))
        run = tl.where(better, score, run)
        run_idx = tl.where(better, k[None, :], run_idx)

    best = tl.min(run, axis=1)
    if COSINE:
        scale = tl.sqrt(x2)
    else:
        r = tl.sqrt(x2) + tl.load(rc_ptr + s)
        scale = r * r
    thr = best + coef * scale
    if WRITE_APPROX:
        _, first = _row_min(run, run_idx)
        tl.store(approx_ptr + rows64 * S + s, tl.where(first >= K, 0, first).to(tl.int64), mask=rmask)
    n_cand = tl.sum((run <= thr[:, None]).to(tl.int32), axis=1)
    hidden = tl.max((run2 <= thr[:, None]).to(tl.int32), axis=1)
    full_scan = (hidden > 0) | (n_cand > RECHECK_R) | ~(thr < float("inf"))

    # Re-check the candidate slots (at most RECHECK_R) with the direct formula, ties -> lowest index.
    best_e = tl.full((BM,), float("inf"), tl.float32)
    best_i = tl.full((BM,), BIG_INDEX, tl.int32)
    for _r in tl.static_range(RECHECK_R):
        m = tl.min(run, axis=1)
        cand = tl.min(tl.where(run == m[:, None], run_idx, BIG_INDEX), axis=1)
        run = tl.where(run_idx == cand[:, None], float("inf"), run)
        valid = (cand < K) & (m <= thr)
        cand_safe = tl.where(valid, cand, 0)
        e = tl.zeros((BM,), tl.float32)
        for dc in range(NUM_DC):
            e = _direct_chunk(e, x_row, cb_s, cand_safe, rmask, dc * BD + dj, d, COSINE)
        if COSINE:
            e = -tl.div_rn(e, tl.load(cn_s + cand_safe))
        e = tl.where(valid, e, float("inf"))
        cand_key = tl.where(valid, cand, BIG_INDEX)
        better = (e < best_e) | ((e == best_e) & (cand_key < best_i))
        best_e = tl.where(better, e, best_e)
        best_i = tl.where(better, cand_key, best_i)

    if tl.max((full_scan & rmask).to(tl.int32), axis=0) > 0:
        # Direct scan of every code for this block (rare: near-ties beyond the slot state, or overflow).
        best_i = tl.where(full_scan, _direct_scan(x_row, cb_s, cn_s, rmask, K, d, COSINE, BM, BK), best_i)

    idx = tl.where(best_i >= K, 0, best_i)  # every score +inf (overflow): the oracle's argmin gives 0
    tl.store(idx_ptr + rows64 * S + s, idx.to(tl.int64), mask=rmask)
    q_row = q_ptr + rows64 * stride_q + s64 * d
    for dc in range(NUM_DC):
        _gather_chunk(q_row, cb_s, idx, rmask, dc * BD + dj, d, IS_INTERP)


# --- launch ------------------------------------------------------------------------------------------------------

# Small-d configs keep 8-32 (BM x BK) elements per thread: ptxas (sm_90, d=2) gives ~93 registers at 16, ~180 at
# 32, and spills beyond; d=8 needs the smaller ones. The codebook/x loads are tiny, so no software pipelining.
_SMALL_CONFIGS = [triton.Config({"BM": bm, "BK": bk}, num_warps=w, num_stages=1)
                  for bm, bk, w in [(64, 32, 4), (32, 64, 4), (64, 64, 8), (128, 32, 8), (32, 32, 4), (64, 64, 4),
                                    (128, 64, 8), (16, 64, 2)]]
# Dot configs: ptxas (sm_90, d=16/32) keeps these at <= 255 registers without spills; 128x128 tiles spill.
_DOT_CONFIGS = [triton.Config({"BM": bm, "BK": bk}, num_warps=w, num_stages=st)
                for bm, bk, w, st in [(32, 64, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 8, 2),
                                      (128, 64, 8, 2), (32, 128, 4, 2), (128, 32, 8, 3), (32, 64, 4, 3)]]
_FIXED_META = {"BM": 32, "BK": 64}  # the config under the interpreter (autotune there is slow) or AUTOTUNE off

_small_tuned = triton.autotune(_SMALL_CONFIGS, key=["n_bucket", "K", "d", "COSINE"])(_assign_small_kernel)
_dot_tuned = triton.autotune(_DOT_CONFIGS, key=["n_bucket", "K", "d", "PRECISION", "RECHECK_R", "COSINE"])(
    _assign_dot_kernel)


def unsupported(x: torch.Tensor, codebooks: torch.Tensor | None, distance: str = "l2") -> str | None:
    """None if the Triton kernels take these inputs, else the reason."""
    reason = validate.fp32_only_reason("triton", x=x, codebooks=codebooks)
    if reason:
        return reason
    if codebooks is not None and codebooks.shape[0] > 65535:
        return f"backend 'triton' supports at most 65535 subspaces, got {codebooks.shape[0]}"
    return None


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _prepare_codebooks(codebooks: torch.Tensor, cosine: bool):
    """The dot kernel's codebook side, fp32: (cbc (S, K, d), centre (S, d), cn (S, K), rc (S,)) -- see the kernel."""
    cbf = codebooks.float()
    if cosine:
        centre = torch.zeros_like(cbf[:, 0])
        cn = cbf.square().sum(-1).sqrt().clamp_min(1e-12)
        return cbf.contiguous(), centre, cn.contiguous(), cn.amax(-1)
    centre = cbf.mean(1)
    cbc = (cbf - centre[:, None]).contiguous()  # fl(c - m): the centring bound.py assumes
    cn = cbc.square().sum(-1)
    return cbc, centre.contiguous(), cn.contiguous(), cn.amax(-1).sqrt().contiguous()


def launch_device(device: torch.device):
    """Context for a launch on ``device``: the tensors' GPU (not necessarily the current one), nothing on the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _run(kernel, tuned, grid_rows, S, args, meta, **extra):
    """Launch over (row blocks, S): one fixed config under the interpreter or with autotuning off, else autotuned."""
    if INTERPRET or not AUTOTUNE:
        kernel[(triton.cdiv(grid_rows, _FIXED_META["BM"]), S)](*args, **meta, **_FIXED_META, **extra)
    else:
        tuned[lambda m: (triton.cdiv(grid_rows, m["BM"]), S)](*args, **meta, **extra)


def _launch(x, codebooks, distance, mode, precision, want_approx):
    validate.check_distance(distance)
    reason = unsupported(x, codebooks, distance)
    if reason:
        raise TypeError(reason)
    x = x.contiguous()
    codebooks = codebooks.contiguous()
    N = x.shape[0]
    S, K, d = codebooks.shape
    quantized = torch.empty_like(x)
    indices = torch.empty((N, S), dtype=torch.int64, device=x.device)
    approx = torch.empty((N, S), dtype=torch.int64, device=x.device) if want_approx else indices
    cosine = distance == "cosine"
    with launch_device(x.device):
        if d <= SMALL_D_MAX and not want_approx:
            args = (x, codebooks, quantized, indices, N, K, x.stride(0), quantized.stride(0), _bucket(N))
            extra = {} if INTERPRET else {"enable_fp_fusion": False}
            _run(_assign_small_kernel, _small_tuned, N, S, args, dict(d=d, COSINE=cosine, IS_INTERP=INTERPRET),
                 **extra)
        else:
            prec = "ieee" if mode == "exact" else precision
            cbc, centre, cn, rc = _prepare_codebooks(codebooks, cosine)
            bd = max(16, triton.next_power_of_2(d)) if d <= MAX_BD else 32  # big d: 32-wide chunks (64 spills)
            args = (x, codebooks, cbc, centre, cn, rc, quantized, indices, approx, N, K, x.stride(0),
                    quantized.stride(0), _bucket(N), bound_coefficient(d, prec))
            meta = dict(d=d, BD=bd, COSINE=cosine, PRECISION=prec, RECHECK_R=RECHECK[mode],
                        WRITE_APPROX=want_approx, IS_INTERP=INTERPRET)
            _run(_assign_dot_kernel, _dot_tuned, N, S, args, meta)
    return quantized, indices, (approx if want_approx else None)


def assign(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2", *, mode: str | None = None,
           precision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused nearest-codeword search: x (N, S*d), codebooks (S, K, d) -> (quantized (N, S*d), indices (N, S)).

    mode/precision default to the module setting (``set_mode``); they only matter for d > SMALL_D_MAX.
    """
    mode = mode or _mode
    precision = precision or _fast_precision
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if precision not in FAST_PRECISIONS:
        raise ValueError(f"precision must be one of {FAST_PRECISIONS}, got {precision!r}")
    quantized, indices, _ = _launch(x, codebooks, distance, mode, precision, want_approx=False)
    return quantized, indices


def fast_path_mismatch(x: torch.Tensor, codebooks: torch.Tensor, distance: str = "l2",
                       precision: str | None = None) -> dict[str, float]:
    """How often the fast (tf32/bf16/tf32x3) search disagrees with exact mode on these inputs.

    Returns {"approx_only": fraction of (row, subspace) where the best approximate score alone picks a different
    index than exact mode, "after_recheck": the same for fast mode's final answer (0 by construction: every
    candidate within the bound is re-checked)}.
    Runs the dot kernel whatever d is.
    """
    precision = precision or _fast_precision
    if precision not in FAST_PRECISIONS:
        raise ValueError(f"precision must be one of {FAST_PRECISIONS}, got {precision!r}")
    _, exact_idx, _ = _launch(x, codebooks, distance, "exact", precision, want_approx=True)
    _, fast_idx, approx_idx = _launch(x, codebooks, distance, "fast", precision, want_approx=True)
    return {"approx_only": (approx_idx != exact_idx).double().mean().item(),
            "after_recheck": (fast_idx != exact_idx).double().mean().item()}
