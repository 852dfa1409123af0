// Declarations of the fused score-and-scan kernel of the GEMM path (assign_gemm_kernel.h), one copy per
// instruction set with FMA (AVX2, AVX-512; built where assign_tiles.h defines PQ_HAVE_ISA_COPIES); the caller is
// assign_gemm.cpp. Torch-free: the ISA copies include it before their target pragmas.
//
// gemm_scan scores every (row, code) pair of a task's row panels against one tile of codes,
//   a = |c|^2 - 2 x.c   (fp32, one fused multiply-add per product, no score tile in memory),
// and compares each row's scores with its threshold thr[r] (the running best + the bound of pqgan_kernels/bound.py)
// in registers. Only a register block holding a score <= its row's threshold calls hit(ctx, ...), which updates
// those rows' candidates and thresholds; any other block is dropped. Every row sees its codes in ascending order.
//   panels (npanels, d, kGemmPanelRows): row r of the task at panels[(r / 32) * d * 32 + j * 32 + r % 32]
//   codes  (kt, d) row-major, norms (kt) = |c_k|^2, code0: the index of codes[0] in the codebook
//   thr    (npanels * kGemmPanelRows) per-row thresholds, read for every block (padding rows: -inf; NaN never hits)
//   bound  (npanels * kGemmPanelRows) per-row bounds B: a pair is passed only when also <= fl(block's row min + B)
//   hit(ctx, scores, row0, rows, hits, code0, ncodes): scores (ncodes, rows) of task rows row0 .. row0 + rows - 1
//     (lane = row) and codes code0 .. code0 + ncodes - 1; hits (ncodes): bit r of hits[i] set where row row0 + r
//     scores code code0 + i <= its threshold (no other pair can be within it), to be offered to that row in
//     ascending code order
#pragma once
#include <cstdint>

namespace pqgan::cpu {

constexpr int64_t kGemmPanelRows = 32;  // rows per packed panel (two 16-float vectors / four 8-float vectors)
constexpr int64_t kGemmCodeBlock = 12;  // codes per register block of the widest copy; tiles are multiples of it

typedef void (*GemmHitFn)(void* ctx, const float* scores, int64_t row0, int64_t rows, const uint32_t* hits,
                          int64_t code0, int64_t ncodes);

typedef void (*GemmScanFn)(const float* panels, int64_t npanels, int64_t d, const float* codes, const float* norms,
                           int64_t kt, int64_t code0, float* thr, const float* bound, GemmHitFn hit, void* ctx);

#define PQ_DECLARE_GEMM_SCAN(NS)                                                                           \
  namespace NS {                                                                                           \
  void gemm_scan(const float* panels, int64_t npanels, int64_t d, const float* codes, const float* norms,  \
                 int64_t kt, int64_t code0, float* thr, const float* bound, GemmHitFn hit, void* ctx);     \
  }
PQ_DECLARE_GEMM_SCAN(avx2)
PQ_DECLARE_GEMM_SCAN(avx512)
#undef PQ_DECLARE_GEMM_SCAN

}  // namespace pqgan::cpu
