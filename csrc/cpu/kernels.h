// Declarations of the CPU micro-kernels (assign_kernel.h), one copy per instruction set; see ops_cpu.cpp.
#pragma once
#include <cstdint>

namespace pqgan {
namespace cpu {

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
  }
PQ_DECLARE_TILE(generic)
PQ_DECLARE_TILE(avx2)
PQ_DECLARE_TILE(avx512)
#undef PQ_DECLARE_TILE

// True when this build has the AVX2 copy (GCC on x86-64) and this CPU supports AVX2 and FMA.
bool have_avx2();
// True when this build has the AVX-512 copy and this CPU supports AVX-512 F/VL/BW/DQ (and AVX2 + FMA).
bool have_avx512();

}  // namespace cpu
}  // namespace pqgan
