// Schemas of the native ops (namespace pqgan_native); CPU kernels in cpu/ops_cpu.cpp, CUDA kernels in cuda/*.cu.
//   pq_assign(x (N, S*d), codebooks (S, K, d), cosine) -> (quantized (N, S*d) x.dtype, indices (N, S) int64)
//   pq_ema_stats(x (N, S*d), indices (N, S), K)        -> (counts (S, K), sums (S, K, d))   fp32 (fp64 for fp64 x)
//   pq_codebook_grad(grad (N, S*d), indices (N, S), K) -> (S, K, d)                        fp32 (fp64 for fp64 grad)
//   pq_assign_gemm(x (N, S*d), codebooks (S, K, d), bound_coefficient, blas) -> like pq_assign, l2, CPU only: the
//       exact GEMM + bounded re-check path (cpu/assign_gemm.cpp; coefficient from pqgan_kernels/bound.py); blas:
//       score with torch's BLAS even where the fused fp32 kernel exists
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pqgan_native, m) {
  m.def("pq_assign(Tensor x, Tensor codebooks, bool cosine) -> (Tensor, Tensor)");
  m.def("pq_ema_stats(Tensor x, Tensor indices, int num_codes) -> (Tensor, Tensor)");
  m.def("pq_codebook_grad(Tensor grad, Tensor indices, int num_codes) -> Tensor");
  m.def("pq_assign_gemm(Tensor x, Tensor codebooks, float bound_coefficient, bool blas=False) -> (Tensor, Tensor)");
}
