// What every pq_assign implementation (CPU cpu/assign.cpp, CUDA cuda/assign.cu) and pq_assign_gemm
// (cpu/assign_gemm.cpp) starts from, after check_assign_args. d = sub-dimension, D = S*d.
#pragma once
#include <ATen/ATen.h>

#include "checks.h"

namespace pqgan {

struct AssignSetup {
  at::ScalarType compute;  // compute_dtype(x, codebooks)
  at::Tensor cb;           // (S, K, d) compute dtype, contiguous; codewords scaled to unit norm when cosine
  at::Tensor cbx;          // (S, K, d) x.dtype, contiguous: the codewords copied into quantized
  at::Tensor quantized;    // (N, D) x.dtype, contiguous, not initialised
  at::Tensor indices;      // (N, S) int64, not initialised
};

// x (N, D), codebooks (S, K, d), checked.
inline AssignSetup assign_setup(const at::Tensor& x, const at::Tensor& codebooks, bool cosine) {
  const at::ScalarType ct = compute_dtype(x, codebooks);
  at::Tensor cb = codebooks.to(ct);
  if (cosine) cb = cb / cb.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);
  const int64_t N = x.size(0), S = codebooks.size(0), D = x.size(1);
  return {ct, cb.contiguous(), codebooks.to(x.scalar_type()).contiguous(), at::empty({N, D}, x.options()),
          at::empty({N, S}, x.options().dtype(at::kLong))};
}

}  // namespace pqgan
