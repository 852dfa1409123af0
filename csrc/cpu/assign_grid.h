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
// order (the query's keys break ties by index, not by position); padding repeats the cell's last code. Cell
// (ix, iy) is cell ix * gy + iy; its chunks, the codes of the block of cells within 1 of it (grid_block_chunks),
// are start[cell] .. start[cell + 1] - 1.
struct GridView {
  int cells = 0;                   // gx * gy
  int gx = 0, gy = 0;              // cells per axis (gy = 1 for d = 1)
  const float* bx = nullptr;       // (kGridMaxCells) the interior bounds of axis 0, ascending, then +inf
  const float* by = nullptr;       // (kGridMaxCells) the same for axis 1
  const int32_t* start = nullptr;  // (cells + 1) first chunk of each cell
  const float* chunks = nullptr;   // (chunks, 2, kGridChunk)
  const int32_t* codes = nullptr;  // (chunks, kGridChunk)
  // the codes bucketed by cell: those of cell c are bucket_codes[bucket_start[c] .. bucket_start[c + 1] - 1], with
  // coordinates bucket_xy (K, 2) in the same order (second coordinate 0 for d = 1)
  const int32_t* bucket_start = nullptr;
  const int32_t* bucket_codes = nullptr;
  const float* bucket_xy = nullptr;
};

// The block of cells within r of cell (i, j), clipped to the grid, used by the builder (r = 1) and the query (its
// certificates at r = 1 and the second level at r = 2). Plain code included before the ISA copies' target pragmas.
//
// Its sides {left, right, bottom, top}: the lines beyond which lie the codes outside the block (cells i - r - 1
// and lower end at bound bx[i - r - 1], ...), +-inf where there are no such cells.
static inline void grid_block_sides(const GridView& g, int i, int j, int r, float* side) {
  const float inf = __builtin_inff();
  side[0] = i - r - 1 >= 0 ? g.bx[i - r - 1] : -inf;
  side[1] = i + r + 1 <= g.gx - 1 ? g.bx[i + r] : inf;
  side[2] = j - r - 1 >= 0 ? g.by[j - r - 1] : -inf;
  side[3] = j + r + 1 <= g.gy - 1 ? g.by[j + r] : inf;
}

// Its codes, gathered from the buckets in the chunk layout: codes (chunks * kGridChunk) and xy (chunks, 2,
// kGridChunk), padded with copies of the last code to whole chunks; both must hold the block's codes rounded up to
// kGridChunk (at most K + kGridChunk - 1). Returns the number of chunks (0: a block without codes).
static inline int32_t grid_block_chunks(const GridView& g, int i, int j, int r, int32_t* codes, float* xy) {
  const int32_t* bucket_codes = g.bucket_codes;
  const float* bucket_xy = g.bucket_xy;
  int32_t n = 0, lane = 0;  // n codes so far; lane: n % kGridChunk, in the chunk at xy
  const int j0 = j - r < 0 ? 0 : j - r, j1 = j + r < g.gy ? j + r : g.gy - 1;
  for (int ci = i - r < 0 ? 0 : i - r; ci <= (i + r < g.gx ? i + r : g.gx - 1); ++ci) {
    const int32_t b0 = g.bucket_start[ci * g.gy + j0], b1 = g.bucket_start[ci * g.gy + j1 + 1];
    for (int32_t b = b0; b < b1; ++b) {
      codes[n++] = bucket_codes[b];
      xy[lane] = bucket_xy[2 * b];
      xy[kGridChunk + lane] = bucket_xy[2 * b + 1];
      if (++lane == kGridChunk) lane = 0, xy += 2 * kGridChunk;
    }
  }
  if (lane > 0) {  // pad the last chunk with copies of the last code
    const int32_t last = codes[n - 1];
    const float lx = xy[lane - 1], ly = xy[kGridChunk + lane - 1];
    for (; lane < kGridChunk; ++lane, ++n) codes[n] = last, xy[lane] = lx, xy[kGridChunk + lane] = ly;
  }
  return n / kGridChunk;
}

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
