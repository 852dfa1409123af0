// The assignment micro-kernels with 64-byte vectors for AVX-512 (used only when the CPU has it; see have_avx512()).
// Only torch-free headers are included, all before the target pragma, so no shared inline code gets AVX-512 code.
#include <cstdint>

#include "cpu/kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define PQ_KERNEL_NS avx512
#define PQ_VEC_BYTES 64
#define PQ_KERNEL_AVX512 1
#include "cpu/assign_kernel.h"
#include "cpu/assign_gemm_kernel.h"
#pragma GCC pop_options

namespace pqgan {
namespace cpu {
bool have_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && have_avx2();
}
}  // namespace cpu
}  // namespace pqgan

#else  // no AVX-512 copy: forward to the AVX2 one (itself forwarding to generic where absent)

namespace pqgan {
namespace cpu {
namespace avx512 {
void assign_tile(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, bool cosine, int64_t* out) {
  avx2::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
}
void assign_tile(const double* xs, int64_t rows, int64_t d, const double* cbT, int64_t Kp, bool cosine,
                 int64_t* out) {
  avx2::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
}
}  // namespace avx512
bool have_avx512() { return false; }
}  // namespace cpu
}  // namespace pqgan
#endif
