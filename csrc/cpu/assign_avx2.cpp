// The assignment micro-kernels compiled for AVX2 + FMA (used only when the CPU has them; see have_avx2()).
// Only torch-free headers are included, all before the target pragma, so no shared inline code gets AVX2 code.
#include <cstdint>

#include "cpu/assign_gemm_scan.h"
#include "cpu/assign_grid.h"
#include "cpu/assign_tiles.h"

#ifdef PQ_HAVE_ISA_COPIES
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define PQ_KERNEL_NS avx2
#define PQ_KERNEL_AVX2 1
#include "cpu/assign_kernel.h"
#include "cpu/assign_gemm_kernel.h"
#include "cpu/assign_grid_kernel.h"
#pragma GCC pop_options

namespace pqgan::cpu {
bool have_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
}  // namespace pqgan::cpu

#else
PQ_FORWARD_TILE(avx2, generic)
#endif
