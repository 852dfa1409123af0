// pq_ema_stats and pq_codebook_grad, written once for every backend: checks, contiguous inputs, outputs in the
// compute dtype of the values, then the backend's scatter (CPU cpu/scatter.cpp, CUDA cuda/scatter.cu) fills them.
// d = sub-dimension, D = S*d.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "checks.h"

namespace pqgan {

// A backend's scatter: for contiguous values (N, D) and indices (N, S), k = indices[n, s], the uninitialised
// sums (S, K, d) become sums[s, k, :] = the sum of values[n, s*d:(s+1)*d] over the rows n with code k, and
// counts (S, K) (when counts != nullptr) the number of those rows. The scatter writes every element (it zeroes
// what it accumulates into; the CPU's slot tables write their results whole, with no zeroing pass).
using Scatter = void (*)(const at::Tensor& values, const at::Tensor& indices, at::Tensor& sums, at::Tensor* counts);

// Returns (counts (S, K) or an undefined tensor, sums (S, K, d)), both fp32 (fp64 for fp64 values).
inline std::tuple<at::Tensor, at::Tensor> scatter_outputs(const at::Tensor& values_in, const at::Tensor& indices_in,
                                                          int64_t num_codes, bool with_counts, Scatter scatter) {
  const at::Tensor values = values_in.contiguous(), indices = indices_in.contiguous();
  const int64_t S = indices.size(1), d = values.size(1) / S;
  const auto opts = values.options().dtype(compute_dtype(values));
  at::Tensor counts = with_counts ? at::empty({S, num_codes}, opts) : at::Tensor();
  at::Tensor sums = at::empty({S, num_codes, d}, opts);
  scatter(values, indices, sums, with_counts ? &counts : nullptr);
  return {counts, sums};
}

// pq_ema_stats on the backend of `device` whose scatter is `scatter`: x (N, D), indices (N, S) -> (counts, sums).
template <c10::DeviceType device, Scatter scatter>
std::tuple<at::Tensor, at::Tensor> ema_stats_op(const at::Tensor& x, const at::Tensor& indices, int64_t num_codes) {
  check_scatter_args("pq_ema_stats", x, indices, num_codes);
  check_device("pq_ema_stats", x, device);
  return scatter_outputs(x, indices, num_codes, /*with_counts=*/true, scatter);
}

// pq_codebook_grad likewise: grad (N, D), indices (N, S) -> sums (S, K, d).
template <c10::DeviceType device, Scatter scatter>
at::Tensor codebook_grad_op(const at::Tensor& grad, const at::Tensor& indices, int64_t num_codes) {
  check_scatter_args("pq_codebook_grad", grad, indices, num_codes);
  check_device("pq_codebook_grad", grad, device);
  return std::get<1>(scatter_outputs(grad, indices, num_codes, /*with_counts=*/false, scatter));
}

}  // namespace pqgan
