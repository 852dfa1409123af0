// The query of the cell-grid search (declared in assign_grid.h, which describes the table and the certificates):
// per row, find its cell by comparing each coordinate with the cell bounds, score the cell's listed codes with the
// direct formula (x0 - c0)^2 + (x1 - c1)^2 (for d = 1 the second coordinates are 0 on both sides, adding an exact 0),
// keep the smallest, ties to the lowest index (one 64-bit key per pair, see lane_keys: no compares or branches), and
// return it when it is below the row's certificate.
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

// The best key of a row (X, Y broadcast) over nc chunks of codes: coordinates xy (nc, 2, kGridChunk), codes
// (nc, kGridChunk). nc = 0 (a block without codes) gives INT64_MAX, which no certificate accepts.
static inline int64_t best_key(const Vec<float>::V& X, const Vec<float>::V& Y, const float* xy, const int32_t* codes,
                               int32_t nc) {
  using V = Vec<float>::V;
  using I = Vec<float>::I;
  constexpr int W = Vec<float>::W;
  Key best = Key{} + 0x7fffffffffffffffLL;  // above any key
  for (int32_t c = 0; c < nc; ++c)
    for (int v = 0; v < kGridChunk / W; ++v) {
      const float* p = xy + c * 2 * kGridChunk + v * W;
      const V dx = X - load<float>(p), dy = Y - load<float>(p + kGridChunk);
      I k;
      __builtin_memcpy(&k, codes + c * kGridChunk + v * W, sizeof(k));
      best = key_min(best, lane_keys(dx * dx + dy * dy, k));
    }
  return smallest_key(best);
}

// The key's code when its score is below the certificate for a row at (px, py) inside the box of sides
// side = {left, right, bottom, top} (assign_grid.cpp: fl(m^2 (1 - 2^-20) - 2^-100), m the distance to the nearest
// side), else -1.
static inline int64_t certified(int64_t key, float px, float py, const float* side) {
  const float dl = px - side[0], dr = side[1] - px, db = py - side[2], dt = side[3] - py;  // >= 0, not NaN
  const float mx = dl < dr ? dl : dr, my = db < dt ? db : dt, m = mx < my ? mx : my;
  const float certificate = __builtin_fmaf(m * m, 1.f - 0x1p-20f, -0x1p-100f);
  int32_t bits;
  __builtin_memcpy(&bits, &certificate, sizeof(bits));
  return static_cast<int32_t>(key >> 32) < bits ? (key & 0xffffffff) : -1;
}

// Rows are bucketed by cell first (a counting sort into scratch), then scored cell by cell: a cell's chunks are
// loaded from L2 once and then hit L1, and the chunk loop has the same trip count for all the cell's rows (per row
// trip counts varying between 1 and 2 mispredicted every few rows and serialised the rows' long dependency chains).
// A cell's rows without a certificate are scored again against the 5 x 5 block around it, gathered once per cell
// into scratch_xy / the end of scratch in the chunk layout.
template <int kd>
static void grid_rows(const float* xs, int64_t rows, const GridView& g, int32_t* scratch, float* scratch_xy,
                      int64_t* out) {
  const int cells = g.cells;
  int32_t* cell_of = scratch;            // (rows) the row's cell, or cells: no cell (a value beyond +-kGridMaxAbs)
  int32_t* order = scratch + rows;       // (rows) row indices, bucketed by cell
  int32_t* retry = scratch + 2 * rows;   // (rows) a cell's rows without a certificate
  int32_t* first = scratch + 3 * rows;   // (cells + 2) bucket ends (see below)
  int32_t* wide = first + cells + 2;     // (K + kGridChunk) codes of a 5 x 5 block, chunk layout with scratch_xy
  for (int c = 0; c < cells + 2; ++c) first[c] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float px = xs[r * kd], py = kd == 2 ? xs[r * kd + 1] : 0.f;
    int cell = cells;
    if (__builtin_fabsf(px) <= kGridMaxAbs && __builtin_fabsf(py) <= kGridMaxAbs) {  // false for NaN
      cell = grid_cell(g.bx, splat<float>(px)) * g.gy;
      if (kd == 2) cell += grid_cell(g.by, splat<float>(py));
    }
    cell_of[r] = cell;
    ++first[cell + 1];
  }
  for (int c = 0; c < cells + 1; ++c) first[c + 1] += first[c];
  for (int64_t r = 0; r < rows; ++r) order[first[cell_of[r]]++] = static_cast<int32_t>(r);
  // now bucket c is order[(c == 0 ? 0 : first[c - 1]) .. first[c] - 1]; bucket `cells`: rows without a cell
  for (int32_t p = first[cells - 1]; p < first[cells]; ++p) out[order[p]] = -1;
  for (int cell = 0; cell < cells; ++cell) {
    const int32_t p0 = cell == 0 ? 0 : first[cell - 1], p1 = first[cell];
    if (p0 == p1) continue;
    const int32_t c0 = g.start[cell], nc = g.start[cell + 1] - c0;
    const float* xy = g.chunks + static_cast<int64_t>(c0) * 2 * kGridChunk;
    const int32_t* codes = g.codes + static_cast<int64_t>(c0) * kGridChunk;
    const int i = cell / g.gy, j = cell % g.gy;
    float side[4];
    grid_block_sides(g, i, j, 1, side);
    int32_t nretry = 0;
    for (int32_t p = p0; p < p1; ++p) {
      const int64_t r = order[p];
      const float px = xs[r * kd], py = kd == 2 ? xs[r * kd + 1] : 0.f;
      const int64_t k = certified(best_key(splat<float>(px), splat<float>(py), xy, codes, nc), px, py, side);
      out[r] = k;
      if (k < 0) retry[nretry++] = static_cast<int32_t>(r);
    }
    if (nretry == 0) continue;
    // the 5 x 5 block (no chunk for an empty one: no certificate, -1)
    const int32_t nwide = grid_block_chunks(g, i, j, 2, wide, scratch_xy);
    grid_block_sides(g, i, j, 2, side);
    for (int32_t q = 0; q < nretry; ++q) {
      const int64_t r = retry[q];
      const float px = xs[r * kd], py = kd == 2 ? xs[r * kd + 1] : 0.f;
      out[r] = certified(best_key(splat<float>(px), splat<float>(py), scratch_xy, wide, nwide), px, py, side);
    }
  }
}

void assign_tile_grid(const float* xs, int64_t rows, int64_t d, const GridView& grid, int32_t* scratch,
                      float* scratch_xy, int64_t* out) {
  if (d == 1) grid_rows<1>(xs, rows, grid, scratch, scratch_xy, out);
  else grid_rows<2>(xs, rows, grid, scratch, scratch_xy, out);
}

}  // namespace pqgan::cpu::PQ_KERNEL_NS
