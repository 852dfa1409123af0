// The tables of the cell-grid search (built by assign_grid.cpp, read by the query kernel through GridView; see
// assign_grid.h). d = sub-dimension.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/assign_grid.h"

namespace pqgan::cpu {

struct GridTable {
  float bx[kGridMaxCells], by[kGridMaxCells];
  std::vector<int32_t> start;  // (cells + 1)
  std::vector<float> chunks;   // (chunks, 2, kGridChunk)
  std::vector<int32_t> codes;  // (chunks, kGridChunk)
  std::vector<int32_t> bucket_start, bucket_codes;  // (cells + 1), (K)
  std::vector<float> bucket_xy;                     // (K, 2)
  GridView view;               // pointers into the above
};

// One table per subspace, built in parallel over subspaces. cb (S, K, d) fp32 contiguous, d = 1 or 2; a subspace
// with a code that is not finite or beyond +-kGridMaxAbs gets none. Extra memory per subspace: about 9 K listed
// codes (each listed by the 9 cells around its own, chunks padded to 16) at 12 bytes, the buckets (12 bytes per
// code) and 4 bytes per cell: ~72 KiB at K = 512 (4.6 MiB at F8's S = 64).
class GridTables {
 public:
  GridTables(const float* cb, int64_t S, int64_t K, int64_t d);
  // subspace s's table, or nullptr where it was not built (the caller scans all codes instead)
  const GridView* view(int64_t s) const { return built_[s] ? &tables_[s].view : nullptr; }

 private:
  std::vector<GridTable> tables_;
  std::vector<char> built_;
};

}  // namespace pqgan::cpu
