// Declarations of the CPU assignment micro-kernels (assign_kernel.h), one copy per instruction set
// (assign_{generic,avx2,avx512}.cpp), and of the CPU-feature tests have_avx2 / have_avx512; the launcher that picks
// a copy is assign.cpp.
// Torch-free: the ISA copies include it before their target pragmas.
#pragma once
#include <cstdint>

namespace pqgan::cpu {

// xs (rows, d), rows a multiple of kTileRows; cbT (d, Kp), Kp a multiple of kTileCodes, padding columns NaN;
// out (rows,) nearest-code indices. cosine: cbT holds normalised codewords and the largest dot product wins.
constexpr int64_t kTileRows = 4;    // = assign_kernel.h kRows
constexpr int64_t kTileCodes = 32;  // a multiple of assign_kernel.h kCodeStep in every copy (16 / 32)

#define PQ_DECLARE_TILE(NS)                                                                                    \
  namespace NS {                                                                                               \
  void assign_tile(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, bool cosine,       \
                   int64_t* out);                                                                              \
  void assign_tile(const double* xs, int64_t rows, int64_t d, const double* cbT, int64_t Kp, bool cosine,     \
                   int64_t* out);                                                                              \
  void assign_tile_expanded(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp,          \
                            const float* ce, int64_t Kpe, const float* m, float rc, float coefficient,         \
                            int64_t* out);                                                                     \
  }
PQ_DECLARE_TILE(generic)
PQ_DECLARE_TILE(avx2)
PQ_DECLARE_TILE(avx512)
#undef PQ_DECLARE_TILE

// assign_tile_expanded: l2, fp32, d <= kExpandedMaxD: the expanded-formula scan with the exact re-check of
// pqgan_kernels/bound.py (assign_kernel.h assign_small_d_expanded); out = -1 marks a row the caller decides with
// assign_tile. ce (d + 1, Kpe), Kpe a multiple of kExpandedBlock: row 0 |c'_k|^2 (NaN padding), rows 1..d -2 c'_k
// (0 padding) for c'_k = fl(c_k - m); m (d) the centre; rc = max_k |c'_k|; coefficient = bound.py's for (d, fp32).
constexpr int64_t kExpandedMaxD = 4;
constexpr int64_t kExpandedBlock = 64;  // codes per block of the scan: <= 64, a multiple of every copy's W

// True when this build has the AVX2 copy (GCC on x86-64) and this CPU supports AVX2 and FMA.
bool have_avx2();
// True when this build has the AVX-512 copy and this CPU supports AVX-512 F/VL/BW/DQ (and AVX2 + FMA).
bool have_avx512();

}  // namespace pqgan::cpu

// Defined when this compiler builds the AVX2 and AVX-512 copies (GCC's target pragmas, x86).
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define PQ_HAVE_ISA_COPIES 1
#endif

// For a build without the copy NS: defines NS's tile functions as calls of the narrower copy FALLBACK's,
// so the symbols exist, and have_NS() as false, so the launcher never picks NS.
#define PQ_FORWARD_TILE(NS, FALLBACK)                                                                           \
  namespace pqgan::cpu {                                                                                        \
  namespace NS {                                                                                                \
  void assign_tile(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, bool cosine,        \
                   int64_t* out) {                                                                              \
    FALLBACK::assign_tile(xs, rows, d, cbT, Kp, cosine, out);                                                   \
  }                                                                                                             \
  void assign_tile(const double* xs, int64_t rows, int64_t d, const double* cbT, int64_t Kp, bool cosine,      \
                   int64_t* out) {                                                                              \
    FALLBACK::assign_tile(xs, rows, d, cbT, Kp, cosine, out);                                                   \
  }                                                                                                             \
  void assign_tile_expanded(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp,           \
                            const float* ce, int64_t Kpe, const float* m, float rc, float coefficient,          \
                            int64_t* out) {                                                                     \
    FALLBACK::assign_tile_expanded(xs, rows, d, cbT, Kp, ce, Kpe, m, rc, coefficient, out);                     \
  }                                                                                                             \
  }                                                                                                             \
  bool have_##NS() { return false; }                                                                            \
  }
