// The query of the cell-grid search (declared in assign_grid.h, which describes the table): per row, find its cell
// by comparing each coordinate with the cell bounds, score the cell's codes with the direct formula
// (x0 - c0)^2 + (x1 - c1)^2 (for d = 1 the second coordinates are 0 on both sides, adding an exact 0) and keep the
// smallest, ties to the lowest index (one 64-bit key per pair, see lane_keys: no compares or branches).
//
// Compiled by the AVX2 and AVX-512 copies (assign_avx2.cpp / assign_avx512.cpp) right after assign_kernel.h, whose
// vector helpers it uses, under the same target pragma and namespace PQ_KERNEL_NS; torch-free and without
// out-of-line library code for the same reason as assign_kernel.h.
#pragma once
#include <cstdint>

#include "cpu/assign_grid.h"

#ifndef PQ_HAVE_VMIN_ISA
#error "include assign_kernel.h of an AVX2 / AVX-512 copy before assign_grid_kernel.h"
#endif

namespace pqgan::cpu::PQ_KERNEL_NS {

static_assert(kGridChunk % Vec<float>::W == 0 && kGridMaxCells % Vec<float>::W == 0, "whole vectors per chunk");

// The number of bounds (kGridMaxCells, +inf padded) <= v's lanes (all lanes equal): the cell index on that axis.
static inline int grid_cell(const float* bounds, const Vec<float>::V& v) {
  int n = 0;
  for (int u = 0; u < kGridMaxCells; u += Vec<float>::W) n += __builtin_popcount(lanes_le(load<float>(bounds + u), v));
  return n;
}

// Scores and codes as one sortable key per lane: (bits of the score << 32) | code. Scores are >= +0 and finite, so
// their bits order as the scores do, and the smallest key is the smallest score with the lowest code among its ties.
typedef int64_t Key __attribute__((vector_size(PQ_VEC_BYTES)));  // W / 2 lanes
static inline Key key_min(const Key& a, const Key& b) { return a < b ? a : b; }

// The smaller keys of the W (score, code) pairs of e and k, W / 2 of them.
static inline Key lane_keys(const Vec<float>::V& e, const Vec<float>::I& k) {
  using I = Vec<float>::I;
  I bits;
  __builtin_memcpy(&bits, &e, sizeof(bits));
#if PQ_VEC_BYTES == 64
  const I lo = __builtin_shuffle(k, bits, I{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23});
  const I hi = __builtin_shuffle(k, bits, I{8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31});
#else
  const I lo = __builtin_shuffle(k, bits, I{0, 8, 1, 9, 2, 10, 3, 11});
  const I hi = __builtin_shuffle(k, bits, I{4, 12, 5, 13, 6, 14, 7, 15});
#endif
  Key a, b;
  __builtin_memcpy(&a, &lo, sizeof(a));
  __builtin_memcpy(&b, &hi, sizeof(b));
  return key_min(a, b);
}

static inline int64_t smallest_key(Key v) {
#if PQ_VEC_BYTES == 64
  v = key_min(v, __builtin_shuffle(v, Key{4, 5, 6, 7, 0, 1, 2, 3}));
  v = key_min(v, __builtin_shuffle(v, Key{2, 3, 0, 1, 6, 7, 4, 5}));
  v = key_min(v, __builtin_shuffle(v, Key{1, 0, 3, 2, 5, 4, 7, 6}));
#else
  v = key_min(v, __builtin_shuffle(v, Key{2, 3, 0, 1}));
  v = key_min(v, __builtin_shuffle(v, Key{1, 0, 3, 2}));
#endif
  return v[0];
}

template <int kd>
static void grid_rows(const float* xs, int64_t rows, const GridView& g, int64_t* out) {
  using V = Vec<float>::V;
  using I = Vec<float>::I;
  constexpr int W = Vec<float>::W;
  constexpr int NV = kGridChunk / W;  // vectors per chunk
  for (int64_t r = 0; r < rows; ++r) {
    const float px = xs[r * kd], py = kd == 2 ? xs[r * kd + 1] : 0.f;
    if (!(__builtin_fabsf(px) <= kGridMaxAbs && __builtin_fabsf(py) <= kGridMaxAbs)) {  // also NaN
      out[r] = -1;
      continue;
    }
    const V X = splat<float>(px), Y = splat<float>(py);
    int cell = grid_cell(g.bx, X) * g.gy;
    if (kd == 2) cell += grid_cell(g.by, Y);
    const int32_t c0 = g.start[cell], c1 = g.start[cell + 1];
    Key best = Key{} + 0x7fffffffffffffffLL;  // above any key
    auto score = [&](int32_t c) {
      const float* ch = g.chunks + static_cast<int64_t>(c) * 2 * kGridChunk;
      const int32_t* ci = g.codes + static_cast<int64_t>(c) * kGridChunk;
      for (int v = 0; v < NV; ++v) {
        const V dx = X - load<float>(ch + v * W), dy = Y - load<float>(ch + kGridChunk + v * W);
        I k;
        __builtin_memcpy(&k, ci + v * W, sizeof(k));
        best = key_min(best, lane_keys(dx * dx + dy * dy, k));
      }
    };
    // min_chunks first, a trip count the branch predictor learns (a varying one mispredicts every few rows and
    // serialises them), then the few cells with more
    for (int c = 0; c < g.min_chunks; ++c) score(c0 + c);
    for (int32_t c = c0 + g.min_chunks; c < c1; ++c) score(c);
    const int64_t key = smallest_key(best);
    // the certificate (assign_grid.cpp): the best score below fl(m^2 (1 - 2^-20) - 2^-100)
    const float* side = g.sides + 4 * cell;
    const float dl = px - side[0], dr = side[1] - px, db = py - side[2], dt = side[3] - py;  // >= 0, not NaN
    const float mx = dl < dr ? dl : dr, my = db < dt ? db : dt, m = mx < my ? mx : my;
    const float certificate = __builtin_fmaf(m * m, 1.f - 0x1p-20f, -0x1p-100f);
    int32_t bits;
    __builtin_memcpy(&bits, &certificate, sizeof(bits));
    out[r] = static_cast<int32_t>(key >> 32) < bits ? (key & 0xffffffff) : -1;
  }
}

void assign_tile_grid(const float* xs, int64_t rows, int64_t d, const GridView& grid, int64_t* out) {
  if (d == 1) grid_rows<1>(xs, rows, grid, out);
  else grid_rows<2>(xs, rows, grid, out);
}

}  // namespace pqgan::cpu::PQ_KERNEL_NS
