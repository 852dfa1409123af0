// The Python module pqgan_kernels._C and the schema of every native op (namespace pqgan_native), in one place.
// Importing _C loads this library; each backend's file registers its implementations (TORCH_LIBRARY_IMPL).
// d = sub-dimension, D = S*d.
//   pq_assign(x (N, D), codebooks (S, K, d), cosine, bound_coefficient = 0, grid = false)
//                                                    -> (quantized (N, D) x.dtype, indices (N, S) int64)
//       CPU cpu/assign.cpp, CUDA cuda/assign.cu; bound_coefficient (pqgan_kernels/bound.py, fp32 FMAs) > 0 lets the
//       CPU use its expanded l2 scan for fp32 and d <= 4, 0 keeps the direct formula; grid lets the CPU use its
//       cell-grid search for l2, fp32 and d <= 2 (cpu/assign_grid.h); CUDA ignores both
//   pq_ema_stats(x (N, D), indices (N, S), K)        -> (counts (S, K), sums (S, K, d))   fp32 (fp64 for fp64 x)
//       CPU cpu/scatter.cpp, CUDA cuda/scatter.cu
//   pq_codebook_grad(grad (N, D), indices (N, S), K) -> (S, K, d)                        fp32 (fp64 for fp64 grad)
//       CPU cpu/scatter.cpp, CUDA cuda/scatter.cu
//   pq_ema_apply_(codebooks (S, K, d)!, cluster_size (S, K)!, embed_sum (S, K, d)!, counts, sums, decay, eps) -> ()
//       the EMA apply step of pqgan_kernels/ema_apply.py in place, fp32 contiguous state, CPU only (cpu/ema_apply.cpp)
//   pq_assign_gemm(x (N, D), codebooks (S, K, d), bound_coefficient, blas = false) -> like pq_assign, l2, CPU only:
//       the exact GEMM + bounded re-check path (cpu/assign_gemm.cpp; coefficient from pqgan_kernels/bound.py);
//       blas: score with torch's BLAS even where the fused fp32 kernel (cpu/assign_gemm_kernel.h) exists
//   cpu_isa() -> str     which copy of the CPU assignment micro-kernels runs: "avx512", "avx2" or "generic"
//       (cpu/assign.cpp)
//   build_info() -> str  which parts were compiled in: "cpu" or "cpu+cuda" (here)
#include <Python.h>
#include <torch/library.h>

#include <string>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "pqgan native kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace pqgan {
namespace {

std::string build_info() {
#ifdef PQGAN_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}

}  // namespace
}  // namespace pqgan

TORCH_LIBRARY_FRAGMENT(pqgan_native, m) {
  m.def("pq_assign(Tensor x, Tensor codebooks, bool cosine, float bound_coefficient=0., bool grid=False) -> "
        "(Tensor, Tensor)");
  m.def("pq_ema_stats(Tensor x, Tensor indices, int num_codes) -> (Tensor, Tensor)");
  m.def("pq_codebook_grad(Tensor grad, Tensor indices, int num_codes) -> Tensor");
  m.def("pq_ema_apply_(Tensor(a!) codebooks, Tensor(b!) cluster_size, Tensor(c!) embed_sum, Tensor counts, "
        "Tensor sums, float decay, float eps) -> ()");
  m.def("pq_assign_gemm(Tensor x, Tensor codebooks, float bound_coefficient, bool blas=False) -> (Tensor, Tensor)");
  m.def("cpu_isa() -> str");
  m.def("build_info() -> str", &pqgan::build_info);
}
