// The cell-grid search of the CPU l2 assignment for d <= 2 (the paper's d = 2): declarations shared by the table
// builder (assign_grid.cpp) and the query kernel (assign_grid_kernel.h, one copy per instruction set with FMA).
// Torch-free: the ISA copies include it before their target pragmas. d = sub-dimension.
//
// Per subspace the plane (the line for d = 1) is cut into gx x gy cells by gx - 1 interior bounds per axis, taken at
// the quantiles of the codebook's coordinates. A row's cell is found by comparisons alone (on each axis, the number
// of bounds <= its coordinate), so the row lies in its cell's closed rectangle. Each cell lists the codes of the
// block of 3 x 3 cells around it (clipped to the grid); every other code lies beyond one of the block's four sides.
// The query scores the listed codes with the direct formula sum_j (x_j - c_j)^2, ties to the lowest index, and keeps
// the answer only when the best score is below the row's certificate: fl(m^2 (1 - 2^-20) - 2^-100), m = the row's
// distance to the nearest side of its block beyond which there are codes (see assign_grid.cpp for why that makes it
// the answer of a direct scan of all K codes). A row without a certificate (~4 % of Gaussian rows) tries again with
// the 5 x 5 block around its cell (its codes gathered from the cell buckets); rows without a certificate there too,
// and rows with a value that is not finite or beyond +-kGridMaxAbs, get out = -1 for the caller to decide with a
// scan of all codes (assign.cpp decide_grid_rows).
#pragma once
#include <cstdint>

namespace pqgan::cpu {

constexpr int kGridMaxCells = 16;  // cells per axis (at most): its interior bounds fill one 16-float vector
constexpr int kGridChunk = 16;     // a cell's codes are stored in chunks of this many (the last one padded)
constexpr float kGridMaxAbs = 1e18f;  // rows and codes within +-this: no squared distance overflows fp32

// One subspace's table, read-only for the query. Chunk c holds the codes' first coordinates at chunks[32 c ..],
// their second coordinates (0 for d = 1) at chunks[32 c + 16 ..] and their indices at codes[16 c ..], in bucket
// order (the query's keys break ties by index, not by position); padding repeats the cell's last code. Cell (ix, iy) is cell ix * gy + iy; its chunks are
// start[cell] .. start[cell + 1] - 1; sides[4 cell ..] = {left, right, bottom, top}: the lines beyond which lie the
// codes it does not list (+-inf where there are none).
struct GridView {
  int cells = 0;                   // gx * gy
  int gx = 0, gy = 0;              // cells per axis (gy = 1 for d = 1)
  const float* bx = nullptr;       // (kGridMaxCells) the interior bounds of axis 0, ascending, then +inf
  const float* by = nullptr;       // (kGridMaxCells) the same for axis 1
  const int32_t* start = nullptr;  // (cells + 1) first chunk of each cell
  const float* sides = nullptr;    // (cells, 4)
  const float* chunks = nullptr;   // (chunks, 2, kGridChunk)
  const int32_t* codes = nullptr;  // (chunks, kGridChunk)
  // the codes bucketed by cell (for the second level): those of cell c are bucket_codes[bucket_start[c] ..
  // bucket_start[c + 1] - 1], with coordinates bucket_xy (K, 2) in the same order (second coordinate 0 for d = 1)
  const int32_t* bucket_start = nullptr;
  const int32_t* bucket_codes = nullptr;
  const float* bucket_xy = nullptr;
};

// assign_tile_grid: xs (rows, d) fp32 rows of one subspace (d = 1 or 2); out (rows,) their nearest codes, or -1;
// scratch: kGridScratch(rows, K) int32 and kGridScratchXY(K) floats of working memory.
constexpr int64_t kGridScratch(int64_t rows, int64_t K) {
  return 3 * rows + kGridMaxCells * kGridMaxCells + 2 + K + kGridChunk;
}
constexpr int64_t kGridScratchXY(int64_t K) { return 2 * (K + kGridChunk); }
#define PQ_DECLARE_GRID(NS)                                                                                  \
  namespace NS {                                                                                             \
  void assign_tile_grid(const float* xs, int64_t rows, int64_t d, const GridView& grid, int32_t* scratch,   \
                        float* scratch_xy, int64_t* out);                                                    \
  }
PQ_DECLARE_GRID(avx2)
PQ_DECLARE_GRID(avx512)
#undef PQ_DECLARE_GRID

}  // namespace pqgan::cpu
