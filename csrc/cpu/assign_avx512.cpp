// The assignment micro-kernels with 64-byte vectors for AVX-512 (used only when the CPU has it; see have_avx512()).
// Only torch-free headers are included, all before the target pragma, so no shared inline code gets AVX-512 code.
#include <cstdint>

#include "cpu/assign_gemm_scan.h"
#include "cpu/assign_grid.h"
#include "cpu/assign_tiles.h"

#ifdef PQ_HAVE_ISA_COPIES
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define PQ_KERNEL_NS avx512
#define PQ_VEC_BYTES 64
#define PQ_KERNEL_AVX512 1
#include "cpu/assign_kernel.h"
#include "cpu/assign_gemm_kernel.h"
#include "cpu/assign_grid_kernel.h"
#pragma GCC pop_options

namespace pqgan::cpu {
bool have_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && have_avx2();
}
}  // namespace pqgan::cpu

#else
PQ_FORWARD_TILE(avx512, avx2)  // itself forwarding to generic where it has no copy
#endif
