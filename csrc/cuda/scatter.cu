// pq_ema_stats and pq_codebook_grad (CUDA; schemas in ../ops.cpp). d = sub-dimension, D = S*d.
//
// One thread per element, atomicAdd into (S, K, d) (and (S, K) counts); the sum order is therefore not deterministic
// (fp32 rounding differs run to run). Out-of-range indices are skipped here; the Python op checks the range before
// calling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "scatter_ops.h"
#include "cuda/grid_stride.cuh"

namespace pqgan::cuda {
namespace {

// sums[s, k, j] += values[n, s*d + j], counts[s, k] += 1 (when counts != nullptr), k = indices[n, s], into the
// outputs zeroed by scatter_cuda.
template <typename scalar_t, typename T, typename index_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ values, const index_t* __restrict__ indices, int64_t N,
                               int S, int K, int d, T* __restrict__ sums, T* __restrict__ counts) {
  for_each_element(N, S, d, [&](int64_t i, int64_t ns, int s, int j) {
    const int64_t k = static_cast<int64_t>(indices[ns]);
    if (k < 0 || k >= K) return;  // range is checked by the caller; never write out of bounds
    const int64_t code = static_cast<int64_t>(s) * K + k;
    atomicAdd(sums + code * d + j, static_cast<T>(values[i]));
    if (counts != nullptr && j == 0) atomicAdd(counts + code, T(1));
  });
}

void scatter_cuda(const at::Tensor& values, const at::Tensor& indices, at::Tensor& sums, at::Tensor* counts) {
  const int64_t N = indices.size(0);
  const int S = static_cast<int>(indices.size(1)), K = static_cast<int>(sums.size(1)),
            d = static_cast<int>(sums.size(2));
  const int64_t total = N * S * d;
  const c10::cuda::CUDAGuard guard(values.device());
  sums.zero_();
  if (counts != nullptr) counts->zero_();
  if (total == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "pq_scatter_cuda", [&] {
    using T = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;
    T* cp = counts ? counts->data_ptr<T>() : nullptr;
    if (indices.scalar_type() == at::kLong) {
      scatter_kernel<scalar_t, T, int64_t><<<element_blocks(total), kElementThreads, 0, stream>>>(
          values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(), N, S, K, d, sums.data_ptr<T>(), cp);
    } else {
      scatter_kernel<scalar_t, T, int32_t><<<element_blocks(total), kElementThreads, 0, stream>>>(
          values.data_ptr<scalar_t>(), indices.data_ptr<int32_t>(), N, S, K, d, sums.data_ptr<T>(), cp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace pqgan::cuda

TORCH_LIBRARY_IMPL(pqgan_native, CUDA, m) {
  m.impl("pq_ema_stats", &pqgan::ema_stats_op<at::kCUDA, pqgan::cuda::scatter_cuda>);
  m.impl("pq_codebook_grad", &pqgan::codebook_grad_op<at::kCUDA, pqgan::cuda::scatter_cuda>);
}
