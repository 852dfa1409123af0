// The tables of the cell-grid search (assign_grid.h): per cell, the codes of the 3 x 3 block of cells around it.
//
// Why a certified answer is exact. Let e_k be the query's direct score of code k for a row at p (fp32, any summation
// order, fused or not) and D_k = |p - c_k|^2 exactly. Per pqgan_kernels/bound.py (step 3), |e_k - D_k| <= eps D_k +
// tau with eps = 1.01 (d + 2) u <= 2^-21 for d <= 2 and tau <= 3 * 2^-126 (the absolute error of roundings in or
// flushed from fp32's subnormal range); there is no overflow, as rows and codes lie within +-kGridMaxAbs. A code
// the row's cell does not list lies in a cell outside the block, so beyond one of the block's sides (each code lies
// in its cell's closed rectangle: cells are found by exact comparisons), while the row lies inside the block; hence
// D_k >= m^2 with m the row's distance to the nearest side beyond which there are codes. The query's certificate
// T = fl(fl(m'^2) (1 - 2^-20) - 2^-100), with m' the fp32 minimum of the four fp32 side distances (each rounded
// up by at most a factor 1 + u), is at most m^2 (1 + u)^4 (1 - 2^-20) - 2^-101 <= m^2 (1 - 2^-21) - 2^-101
// <= m^2 (1 - eps) - tau <= e_k. So when the best listed score e_b < T, every unlisted code scores strictly more:
// the listed codes hold the direct scan's minimum and every code tied with it, and their minimum (ties to the
// lowest index) is the direct scan's answer.
//
// The same argument holds for the query's second level, the 5 x 5 block with its own sides.
//
// Work per subspace: sorting a sample of <= 128 codes' coordinates per axis (the cell bounds are its quantiles),
// bucketing the codes by cell and copying each cell's 3 x 3 block (grid_block_chunks): O(K + 9 K), independent of
// the number of rows.
#include "cpu/assign_grid_build.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace pqgan::cpu {
namespace {

// Cells per axis for about kCodesPerCell codes per cell, at most kGridMaxCells. Measured on the 2-core Xeon (F8, 2
// threads): 2 codes per cell leaves ~6 % of Gaussian rows without a first-level certificate, 3 about 4 % (7.0 ms),
// 4 about 3 % but lists ~29 codes per cell (two chunks and more).
constexpr double kCodesPerCell = 3;
int cells_per_axis(int64_t K, int64_t d) {
  const double g = d == 2 ? std::sqrt(K / kCodesPerCell) : K / kCodesPerCell;
  return int(std::max(1.0, std::min<double>(kGridMaxCells, std::ceil(g))));
}

// The table of one subspace: cb (K, d).
bool build_table(const float* cb, int64_t K, int64_t d, GridTable& t) {
  for (int64_t i = 0; i < K * d; ++i)
    if (!(std::fabs(cb[i]) <= kGridMaxAbs)) return false;  // also false for NaN
  const int cells[2] = {cells_per_axis(K, d), d == 2 ? cells_per_axis(K, d) : 1};
  const int gx = cells[0], gy = cells[1];
  const int64_t G = int64_t(gx) * gy;
  // per axis: the codes' coordinates and the interior bounds, their quantiles (+inf padded)
  std::vector<float> coord[2] = {std::vector<float>(K), std::vector<float>(K, 0.f)};
  for (int64_t k = 0; k < K; ++k)
    for (int64_t a = 0; a < d; ++a) coord[a][k] = cb[k * d + a];
  float* bounds[2] = {t.bx, t.by};
  for (int a = 0; a < 2; ++a) {
    std::fill(bounds[a], bounds[a] + kGridMaxCells, INFINITY);
    if (cells[a] == 1) continue;
    // any ascending bounds are correct; quantiles of (a sample of up to 128 of) the codes balance the cells
    const int64_t step = std::max<int64_t>(1, K / 128);
    std::vector<float> sorted;
    for (int64_t k = 0; k < K; k += step) sorted.push_back(coord[a][k]);
    std::sort(sorted.begin(), sorted.end());
    const int64_t n = int64_t(sorted.size());
    for (int i = 1; i < cells[a]; ++i) bounds[a][i - 1] = sorted[n * i / cells[a]];
  }
  auto cell_on = [&](int a, float v) {  // as the query: the number of bounds <= v
    int n = 0;
    for (int i = 0; i < kGridMaxCells; ++i) n += bounds[a][i] <= v;
    return n;
  };
  // the codes bucketed by cell, ascending within each cell, with their coordinates (blocks are gathered from them)
  std::vector<int32_t>& bstart = t.bucket_start;
  std::vector<int32_t>& bcode = t.bucket_codes;
  std::vector<int32_t> home(K);
  bstart.assign(G + 1, 0);
  bcode.resize(K);
  for (int64_t k = 0; k < K; ++k) ++bstart[(home[k] = cell_on(0, coord[0][k]) * gy + cell_on(1, coord[1][k])) + 1];
  std::partial_sum(bstart.begin(), bstart.end(), bstart.begin());
  {
    std::vector<int32_t> fill(bstart.begin(), bstart.end() - 1);
    for (int64_t k = 0; k < K; ++k) bcode[fill[home[k]]++] = int32_t(k);
  }
  t.bucket_xy.resize(2 * K);
  for (int64_t b = 0; b < K; ++b) t.bucket_xy[2 * b] = coord[0][bcode[b]], t.bucket_xy[2 * b + 1] = coord[1][bcode[b]];
  t.view.cells = int(G);
  t.view.gx = gx;
  t.view.gy = gy;
  t.view.bx = t.bx;
  t.view.by = t.by;
  t.view.bucket_start = bstart.data();
  t.view.bucket_codes = bcode.data();
  t.view.bucket_xy = t.bucket_xy.data();
  // per cell: the codes of the block of cells within 1 of it, in chunk layout (an empty block keeps no chunk)
  t.start.assign(1, 0);
  t.codes.clear();
  t.chunks.clear();
  std::vector<int32_t> block(K + kGridChunk);
  std::vector<float> block_xy(2 * (K + kGridChunk));
  for (int i = 0; i < gx; ++i)
    for (int j = 0; j < gy; ++j) {
      const int32_t nc = grid_block_chunks(t.view, i, j, 1, block.data(), block_xy.data());
      t.codes.insert(t.codes.end(), block.begin(), block.begin() + nc * kGridChunk);
      t.chunks.insert(t.chunks.end(), block_xy.begin(), block_xy.begin() + nc * 2 * kGridChunk);
      t.start.push_back(t.start.back() + nc);
    }
  t.view.start = t.start.data();
  t.view.chunks = t.chunks.data();
  t.view.codes = t.codes.data();
  return true;
}

}  // namespace

GridTables::GridTables(const float* cb, int64_t S, int64_t K, int64_t d) : tables_(S), built_(S, 0) {
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) built_[s] = build_table(cb + s * K * d, K, d, tables_[s]);
  });
}

}  // namespace pqgan::cpu
