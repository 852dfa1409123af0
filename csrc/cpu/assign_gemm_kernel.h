// The fused score-and-scan kernel of the GEMM path (declared in assign_gemm_scan.h, which states the shapes):
// scores a = |c|^2 - 2 x.c of a register block of rows x codes, compared with the rows' thresholds in registers.
//
// Compiled by the AVX2 and AVX-512 copies (assign_avx2.cpp / assign_avx512.cpp) right after assign_kernel.h, whose
// vector helpers it uses, under the same target pragma and namespace PQ_KERNEL_NS; torch-free and without
// out-of-line library code for the same reason as assign_kernel.h.
//
// Register block: kScanVecs row vectors (lane = row: 32 rows on AVX-512, 16 on AVX2) x kScanCodes codes, one
// accumulator each (24 of the 32 zmm registers, 12 of the 16 ymm). Per coordinate j: kScanVecs loads of the row
// panel, one broadcast per code, kScanVecs * kScanCodes FMAs. The dot products are fp32 with one rounding per
// fused multiply-add, in order j = 0 .. d - 1 (bound.py's u_in = 0 and any summation order). A block's scores are
// fl(|c|^2 - 2 acc) (2 acc is exact), their per-row minimum is compared with the row's threshold, and only a block
// with a score <= threshold is stored and handed to the caller, with the pairs within min(threshold, fl(the row's
// block minimum + B)) marked (no other pair can be within the final best + B). Loop order: row block outer (its
// rows, 4 * rows * d bytes, stay in L1 with their candidate lists), the tile's code blocks inner (streamed from L2,
// where the caller keeps the tile), so each row sees its codes in ascending order. (Code blocks outer, row panels
// streamed from L2, measured 5-9% slower at d = 64 .. 256 on the 2-core AVX-512 Xeon.)
#pragma once
#include <cstdint>

#include "cpu/assign_gemm_scan.h"

#ifndef PQ_HAVE_VMIN_ISA
#error "include assign_kernel.h of an AVX2 / AVX-512 copy before assign_gemm_kernel.h"
#endif

namespace pqgan::cpu::PQ_KERNEL_NS {

constexpr int kScanVecs = 2;                           // row vectors per register block
constexpr int kScanCodes = PQ_VEC_BYTES == 64 ? 12 : 6;  // codes per register block
static_assert(kGemmCodeBlock % kScanCodes == 0, "tiles of kGemmCodeBlock codes hold whole register blocks");
static_assert(kGemmPanelRows % (kScanVecs * Vec<float>::W) == 0, "a panel holds whole register blocks");
static_assert(kScanVecs * Vec<float>::W <= 32, "a register block's rows are one 32-bit hit mask");

// One register block: rows row0 .. row0 + kScanVecs * W - 1 (xp: their panel columns, stride kGemmPanelRows per
// coordinate) against NR codes (code: NR rows of d, norms: NR values).
template <int NR>
static inline void scan_block(const float* xp, int64_t d, const float* code, const float* norms, const float* thr,
                              const float* bound, int64_t row0, int64_t code0, GemmHitFn hit, void* ctx) {
  using V = Vec<float>::V;
  constexpr int W = Vec<float>::W;
  constexpr int MV = kScanVecs;
  constexpr int ROWS = MV * W;
  V acc[NR][MV];
  for (int i = 0; i < NR; ++i)
    for (int v = 0; v < MV; ++v) acc[i][v] = splat<float>(0.f);
  for (int64_t j = 0; j < d; ++j) {
    V xv[MV];
    for (int v = 0; v < MV; ++v) xv[v] = load<float>(xp + j * kGemmPanelRows + v * W);
    for (int i = 0; i < NR; ++i) {
      const V c = splat<float>(code[i * d + j]);
      for (int v = 0; v < MV; ++v) acc[i][v] += xv[v] * c;
    }
  }
  // scores in place, and their per-row minimum (vminps keeps the second operand where the first is NaN)
  V low[MV];
  for (int v = 0; v < MV; ++v) low[v] = splat<float>(__builtin_inff());
  for (int i = 0; i < NR; ++i) {
    const V n = splat<float>(norms[i]);
    for (int v = 0; v < MV; ++v) {
      acc[i][v] = n - 2.f * acc[i][v];
      low[v] = vmin_isa(acc[i][v], low[v]);
    }
  }
  V t[MV];
  uint32_t any = 0;  // bit r: row row0 + r has a score <= its threshold
  for (int v = 0; v < MV; ++v) {
    t[v] = load<float>(thr + v * W);
    any |= lanes_le(low[v], t[v]);
  }
  if (any == 0) return;
  // the rows' thresholds once this block is taken: min(thr, fl(low + bound)) (NaN low + bound keeps thr); a score
  // above it is above fl(final best + bound) too, as the final best is <= low
  for (int v = 0; v < MV; ++v) t[v] = vmin_isa(low[v] + load<float>(bound + v * W), t[v]);
  float scores[NR * ROWS];
  uint32_t hits[NR];  // per code: bit r where row row0 + r scores <= its threshold
  for (int i = 0; i < NR; ++i) {
    hits[i] = 0;
    for (int v = 0; v < MV; ++v) {
      __builtin_memcpy(scores + i * ROWS + v * W, &acc[i][v], sizeof(V));
      hits[i] |= lanes_le(acc[i][v], t[v]) << (v * W);
    }
  }
  hit(ctx, scores, row0, ROWS, hits, code0, NR);
}

void gemm_scan(const float* panels, int64_t npanels, int64_t d, const float* codes, const float* norms, int64_t kt,
               int64_t code0, float* thr, const float* bound, GemmHitFn hit, void* ctx) {
  constexpr int64_t ROWS = kScanVecs * Vec<float>::W;
  for (int64_t r0 = 0; r0 < npanels * kGemmPanelRows; r0 += ROWS) {
    const float* xp = panels + r0 / kGemmPanelRows * d * kGemmPanelRows + r0 % kGemmPanelRows;
    int64_t k = 0;
    for (; k + kScanCodes <= kt; k += kScanCodes)
      scan_block<kScanCodes>(xp, d, codes + k * d, norms + k, thr + r0, bound + r0, r0, code0 + k, hit,
                             ctx);
    for (; k < kt; ++k)  // the tile's last codes, one at a time
      scan_block<1>(xp, d, codes + k * d, norms + k, thr + r0, bound + r0, r0, code0 + k, hit,
                             ctx);
  }
}

}  // namespace pqgan::cpu::PQ_KERNEL_NS
