"""The one rounding-error bound behind every approximate (expanded-formula / tensor-core / BLAS) nearest-code search.

A fast search scores codes with an approximate formula, then re-checks *every* code whose approximate score lies
within a per-row bound ``B`` of the row's best approximate score, using the direct formula. The bound is derived
once here and used by the Triton dot kernel (``triton_assign.py``) and the CPU GEMM path
(``native_backend.assign_gemm``); the CUDA and CPU C++ kernels score every code with the direct formula and need none.

Notation: ``u`` is the unit roundoff of the accumulation type (fp32: 2^-24, fp64: 2^-53); ``u_in`` that of the
multiplier inputs (0 for an fp32/fp64 product, tf32: 2^-10 -- truncation-safe --, bf16: 2^-8, tf32x3: 2^-20);
``d`` the sub-dimension. We assume ``d * u < 0.01`` and no overflow/underflow (values within ~1e-15 .. 1e15).

l2 (translation invariant, so both sides are centred first). Pick any per-subspace centre ``m`` (the codebook
mean) and form ``x' = fl(x - m)``, ``c'_k = fl(c_k - m)``. Let ``Rx = |x'|``, ``Rc = max_k |c'_k|`` and
``S2 = (Rx + Rc)^2``. The approximate score is ``a_k = fl(|c'_k|^2 - 2 x'.c'_k)``; the direct score is
``e_k = fl(sum_j (x_j - c_kj)^2)`` on the *uncentred* inputs (the oracle's formula; any summation order).
With ``D_k = |x - c_k|^2`` exactly:

  1. approximate score vs ``A_k = |c'_k|^2 - 2 x'.c'_k`` (exact on the centred values):
     dot product ``|fl(x'.c') - x'.c'| <= (2.01 u_in + 1.01 d u) Rx Rc``; norm ``<= 1.01 d u Rc^2``; final
     subtraction ``<= u S2``; with ``Rx Rc <= S2/4``: ``|a_k - A_k| <= (4 u_in + (2d + 4) u) S2``.
  2. centring: ``x' - c'_k = (x - c_k) + eta`` with ``|eta| <= 1.01 u (Rx + Rc)``, so
     ``|(A_k + |x'|^2) - D_k| <= |eta| (2 |x' - c'_k| + |eta|) <= 2.03 u S2``.
  3. direct formula: ``|e_k - D_k| <= 1.01 (d + 2) u D_k <= 1.03 (d + 2) u S2``.

Let ``w`` be the direct formula's winner and ``b`` the approximate best. From ``e_w <= e_b`` and 1-3,
``a_w <= a_b + 2 (E1 + E2 + E3) <= a_b + B`` with

    B = (8 u_in + (7 d + 20) u) * S2          (l2)

so ``{k : a_k <= a_best + B}`` always contains the direct formula's winner (and every code tying with it); taking
the direct formula's minimum over that set, ties to the lowest index, equals a full direct scan.

cosine (not translation invariant, no centring): ``a_k = -fl(x.c_k) / fl(|c_k|)``, true score ``-x.c_k/|c_k|``,
whose per-row argmin is the oracle's. Dot ``(2.01 u_in + 1.01 d u)|x|``, the norm's square root and the division
``(0.51 d + 2) u |x|`` each side, so with the same constant

    B = (8 u_in + (7 d + 20) u) * |x|          (cosine)

The constant is generous (about 2x over the sum above) to cover fused multiply-adds, tensor-core accumulation
that is not correctly rounded, and the rounding of B itself.
"""
from __future__ import annotations

import torch

# Unit roundoff of the multiplier inputs per search precision ("ieee"/"highest": the accumulation type's own).
INPUT_ROUNDOFF = {"ieee": 0.0, "highest": 0.0, "tf32x3": 2.0 ** -20, "tf32": 2.0 ** -10, "high": 2.0 ** -10,
                  "bf16": 2.0 ** -8, "medium": 2.0 ** -8}


def bound_coefficient(d: int, precision: str = "ieee", dtype: torch.dtype = torch.float32) -> float:
    """``8 u_in + (7 d + 20) u``: multiply by ``(Rx + Rc)^2`` (l2) or ``|x|`` (cosine) to get the row's bound B.

    precision: the search's multiplier precision ("ieee", "tf32", "tf32x3", "bf16", or torch's float32 matmul
    precision names "highest"/"high"/"medium"); dtype: the accumulation type (float32 or float64).
    """
    if precision not in INPUT_ROUNDOFF:
        raise ValueError(f"precision must be one of {tuple(INPUT_ROUNDOFF)}, got {precision!r}")
    u = torch.finfo(dtype).eps / 2
    u_in = 0.0 if dtype == torch.float64 else INPUT_ROUNDOFF[precision]  # matmul precision applies to fp32 only
    return 8.0 * u_in + (7 * d + 20) * u
