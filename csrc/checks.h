// Argument checks shared by the CPU and CUDA implementations of the pqgan_native ops. Bad shapes or values raise
// ValueError in Python (TORCH_CHECK_VALUE), bad dtypes TypeError (TORCH_CHECK_TYPE). d = sub-dimension, D = S*d.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <utility>

namespace pqgan {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Distances/statistics are computed in float64 when any input is float64, else float32.
inline at::ScalarType compute_dtype(const at::Tensor& a) { return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }
inline at::ScalarType compute_dtype(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

// x (N, D), codebooks (S, K, d); returns nothing, raises on mismatch.
inline void check_assign_args(const at::Tensor& x, const at::Tensor& codebooks) {
  TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), "pq_assign: x must be a float tensor, got ", x.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(codebooks.scalar_type()), "pq_assign: codebooks must be a float tensor, got ",
                   codebooks.scalar_type());
  TORCH_CHECK_VALUE(codebooks.dim() == 3, "pq_assign: codebooks must be (S, K, d), got ", codebooks.sizes());
  const int64_t S = codebooks.size(0), K = codebooks.size(1), d = codebooks.size(2);
  TORCH_CHECK_VALUE(S >= 1 && K >= 1 && d >= 1, "pq_assign: codebooks must have S, K, d >= 1, got ",
                    codebooks.sizes());
  TORCH_CHECK_VALUE(K <= (int64_t(1) << 31) - 16, "pq_assign: at most 2^31 - 16 codes per codebook, got ", K);
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == S * d, "pq_assign: x must be (N, S*d) = (N, ", S * d,
                    "), got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(0) >= 1, "pq_assign: x is an empty batch (N = 0)");
  TORCH_CHECK_VALUE(x.device() == codebooks.device(), "pq_assign: x and codebooks must be on the same device, got ",
                    x.device(), " and ", codebooks.device());
}

// The tensors of `op` are on the device type of the backend running it, e.g. "pq_assign (cpu): tensors must be on
// the CPU, got cuda:0".
inline void check_device(const char* op, const at::Tensor& t, c10::DeviceType device) {
  const bool cuda = device == c10::DeviceType::CUDA;
  TORCH_CHECK_VALUE(t.device().type() == device, op, cuda ? " (cuda)" : " (cpu)", ": tensors must be on ",
                    cuda ? "a CUDA device" : "the CPU", ", got ", t.device());
}

// The rounding-bound coefficient of pqgan_kernels/bound.py passed to an op: finite, > 0 (or 0 where allowed: the op
// then uses no bound-checked search).
inline void check_bound_coefficient(const char* op, double coefficient, bool zero_allowed) {
  TORCH_CHECK_VALUE(std::isfinite(coefficient) && (coefficient > 0 || (zero_allowed && coefficient == 0)), op,
                    ": bound_coefficient must be finite and ", zero_allowed ? ">= 0" : "> 0", ", got ", coefficient);
}

// values (N, D) float, indices (N, S) int32/int64, num_codes >= 1.
inline void check_scatter_args(const char* op, const at::Tensor& values, const at::Tensor& indices,
                               int64_t num_codes) {
  TORCH_CHECK_TYPE(is_float_dtype(values.scalar_type()), op, ": values must be a float tensor, got ",
                   values.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, op,
                   ": indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(1) >= 1, op, ": indices must be (N, S), got ",
                    indices.sizes());
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(0) == indices.size(0) &&
                        values.size(1) % indices.size(1) == 0 && values.size(1) >= indices.size(1),
                    op, ": values (N, S*d) and indices (N, S) do not match: ", values.sizes(), " vs ",
                    indices.sizes());
  TORCH_CHECK_VALUE(num_codes >= 1, op, ": num_codes must be >= 1, got ", num_codes);
  TORCH_CHECK_VALUE(values.device() == indices.device(), op, ": tensors must be on the same device, got ",
                    values.device(), " and ", indices.device());
}

// pq_ema_apply_ (CPU): codebooks and embed_sum (S, K, d), cluster_size (S, K), counts (S, K), sums (S, K, d), all
// fp32, contiguous, on the CPU.
inline void check_ema_apply_args(const at::Tensor& codebooks, const at::Tensor& cluster_size,
                                 const at::Tensor& embed_sum, const at::Tensor& counts, const at::Tensor& sums) {
  const std::pair<const char*, const at::Tensor*> args[] = {{"codebooks", &codebooks}, {"cluster_size", &cluster_size},
                                                            {"embed_sum", &embed_sum}, {"counts", &counts},
                                                            {"sums", &sums}};
  for (const auto& [name, t] : args) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, "pq_ema_apply_ (cpu): ", name, " must be float32, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->is_contiguous(), "pq_ema_apply_ (cpu): ", name,
                      " must be a contiguous CPU tensor");
  }
  TORCH_CHECK_VALUE(codebooks.dim() == 3, "pq_ema_apply_: codebooks must be (S, K, d), got ", codebooks.sizes());
  const int64_t S = codebooks.size(0), K = codebooks.size(1);
  TORCH_CHECK_VALUE(embed_sum.sizes() == codebooks.sizes() && sums.sizes() == codebooks.sizes(),
                    "pq_ema_apply_: embed_sum and sums must be (S, K, d) = ", codebooks.sizes(), ", got ",
                    embed_sum.sizes(), " and ", sums.sizes());
  TORCH_CHECK_VALUE(cluster_size.dim() == 2 && cluster_size.size(0) == S && cluster_size.size(1) == K &&
                        counts.sizes() == cluster_size.sizes(),
                    "pq_ema_apply_: cluster_size and counts must be (S, K) = (", S, ", ", K, "), got ",
                    cluster_size.sizes(), " and ", counts.sizes());
}

}  // namespace pqgan
