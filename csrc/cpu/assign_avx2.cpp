// The assignment micro-kernels compiled for AVX2 + FMA (used only when the CPU has them; see have_avx2()).
// Only torch-free headers are included, all before the target pragma, so no shared inline code gets AVX2 code.
#include <cstdint>

#include "cpu/kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define PQ_KERNEL_NS avx2
#define PQ_KERNEL_AVX2 1
#include "cpu/assign_kernel.h"
#include "cpu/assign_gemm_kernel.h"
#pragma GCC pop_options

namespace pqgan {
namespace cpu {
bool have_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
}  // namespace cpu
}  // namespace pqgan

#else  // no AVX2 copy: forward to the generic one so the symbols exist

namespace pqgan {
namespace cpu {
namespace avx2 {
void assign_tile(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, bool cosine, int64_t* out) {
  generic::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
}
void assign_tile(const double* xs, int64_t rows, int64_t d, const double* cbT, int64_t Kp, bool cosine,
                 int64_t* out) {
  generic::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
}
}  // namespace avx2
bool have_avx2() { return false; }
}  // namespace cpu
}  // namespace pqgan
#endif
