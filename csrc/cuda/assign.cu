// pq_assign (CUDA; schemas in ../ops.cpp). d = sub-dimension, D = S*d.
//
// Grid (row blocks, S). Each block stages a chunk of codebook s (kc codes x d, compute type) in shared memory; each
// thread keeps RPT rows' sub-vectors in registers (compile-time d in {1,2,3,4,8,16,32,64}; other d read x from
// global memory) and scans the chunk with exact FMAs (sum of squared differences, or minus the dot product with
// pre-normalised codewords for cosine), keeping a running (best, index) per row: codes are visited in increasing
// order with a strict "<", so ties go to the lowest index. No (N, K) buffer. A second small kernel (lookup_kernel)
// gathers the chosen codewords into quantized (x.dtype).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "assign_setup.h"
#include "cuda/grid_stride.cuh"

namespace pqgan::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kSmemBytes = 32 * 1024;  // codebook chunk staged per block

template <typename T> __device__ __forceinline__ T fma_(T a, T b, T c);
template <> __device__ __forceinline__ float fma_(float a, float b, float c) { return __fmaf_rn(a, b, c); }
template <> __device__ __forceinline__ double fma_(double a, double b, double c) { return __fma_rn(a, b, c); }

template <typename T> __device__ __forceinline__ T inf_();
template <> __device__ __forceinline__ float inf_() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double inf_() { return __longlong_as_double(0x7ff0000000000000LL); }

// Rows per thread: enough independent work for small d, few registers for large d.
template <int kd> struct RowsPerThread { static constexpr int value = kd == 0 ? 1 : (kd <= 4 ? 4 : (kd <= 16 ? 2 : 1)); };

// One term of a code's score: l2 adds (c - x)^2; cosine (pre-normalised codewords) adds -c*x.
template <typename T, bool COS>
__device__ __forceinline__ T score_step(T c, T x, T acc) {
  if constexpr (COS) {
    return fma_<T>(-c, x, acc);
  } else {
    const T diff = c - x;
    return fma_<T>(diff, diff, acc);
  }
}

// x (N, D) T, cb (S, K, d) T -> indices (N, S) int64. kd = d at compile time, or 0 (run-time d).
template <typename T, int kd, bool COS>
__global__ void __launch_bounds__(kThreads)
assign_kernel(const T* __restrict__ x, const T* __restrict__ cb, int64_t N, int S, int K, int d_rt, int kc,
              int64_t* __restrict__ indices) {
  constexpr int RPT = RowsPerThread<kd>::value;
  constexpr int XD = kd == 0 ? 1 : kd;
  const int d = kd == 0 ? d_rt : kd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  const int s = blockIdx.y;
  const int64_t D = static_cast<int64_t>(S) * d;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * (kThreads * RPT) + threadIdx.x;

  T xr[RPT][XD];
  const T* xrow[RPT];
  T best[RPT];
  int bidx[RPT];
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    const int64_t n = min(row0 + static_cast<int64_t>(r) * kThreads, N - 1);  // clamp: tail rows are not written
    xrow[r] = x + n * D + static_cast<int64_t>(s) * d;
    if (kd != 0) {
#pragma unroll
      for (int j = 0; j < XD; ++j) xr[r][j] = xrow[r][j];
    }
    best[r] = inf_<T>();
    bidx[r] = 0;
  }
  const T* cbs = cb + static_cast<int64_t>(s) * K * d;
  for (int k0 = 0; k0 < K; k0 += kc) {
    const int n_codes = min(kc, K - k0);
    __syncthreads();
    for (int i = threadIdx.x; i < n_codes * d; i += kThreads) tile[i] = cbs[static_cast<int64_t>(k0) * d + i];
    __syncthreads();
    for (int k = 0; k < n_codes; ++k) {
      const T* c = tile + k * d;
#pragma unroll
      for (int r = 0; r < RPT; ++r) {
        T acc = T(0);
        if (kd != 0) {
#pragma unroll
          for (int j = 0; j < XD; ++j) acc = score_step<T, COS>(c[j], xr[r][j], acc);
        } else {
          for (int j = 0; j < d; ++j) acc = score_step<T, COS>(c[j], xrow[r][j], acc);
        }
        if (acc < best[r]) { best[r] = acc; bidx[r] = k0 + k; }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    const int64_t n = row0 + static_cast<int64_t>(r) * kThreads;
    if (n < N) indices[n * S + s] = bidx[r];
  }
}

// quantized[n, s*d + j] = cbx[s, indices[n, s], j]
template <typename scalar_t>
__global__ void lookup_kernel(const scalar_t* __restrict__ cbx, const int64_t* __restrict__ indices, int64_t N, int S,
                              int K, int d, scalar_t* __restrict__ quantized) {
  for_each_element(N, S, d, [&](int64_t i, int64_t ns, int s, int j) {
    quantized[i] = cbx[(static_cast<int64_t>(s) * K + indices[ns]) * d + j];
  });
}

template <typename T, int kd>
void launch_assign(const at::Tensor& x, const at::Tensor& cb, bool cosine, at::Tensor& indices, cudaStream_t stream) {
  const int64_t N = x.size(0);
  const int S = static_cast<int>(cb.size(0)), K = static_cast<int>(cb.size(1)), d = static_cast<int>(cb.size(2));
  constexpr int RPT = RowsPerThread<kd>::value;
  const int kc = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(K, kSmemBytes / (d * sizeof(T)))));
  const int64_t blocks = (N + kThreads * RPT - 1) / (kThreads * RPT);
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int>::max(), "pq_assign (cuda): too many rows (", N, ")");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(S));
  const size_t smem = static_cast<size_t>(kc) * d * sizeof(T);
  auto kernel = cosine ? assign_kernel<T, kd, true> : assign_kernel<T, kd, false>;
  kernel<<<grid, kThreads, smem, stream>>>(x.data_ptr<T>(), cb.data_ptr<T>(), N, S, K, d, kc,
                                           indices.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void assign_dispatch_d(const at::Tensor& x, const at::Tensor& cb, bool cosine, at::Tensor& indices,
                       cudaStream_t stream) {
  switch (cb.size(2)) {
    case 1: return launch_assign<T, 1>(x, cb, cosine, indices, stream);
    case 2: return launch_assign<T, 2>(x, cb, cosine, indices, stream);
    case 3: return launch_assign<T, 3>(x, cb, cosine, indices, stream);
    case 4: return launch_assign<T, 4>(x, cb, cosine, indices, stream);
    case 8: return launch_assign<T, 8>(x, cb, cosine, indices, stream);
    case 16: return launch_assign<T, 16>(x, cb, cosine, indices, stream);
    case 32: return launch_assign<T, 32>(x, cb, cosine, indices, stream);
    case 64: return launch_assign<T, 64>(x, cb, cosine, indices, stream);
    default: return launch_assign<T, 0>(x, cb, cosine, indices, stream);
  }
}

// bound_coefficient: unused (every code is scored with the direct formula here).
std::tuple<at::Tensor, at::Tensor> pq_assign_cuda(const at::Tensor& x_in, const at::Tensor& codebooks, bool cosine,
                                                  double /*bound_coefficient*/, bool /*grid*/) {
  check_assign_args(x_in, codebooks);
  check_device("pq_assign", x_in, at::kCUDA);
  const int64_t N = x_in.size(0), S = codebooks.size(0), K = codebooks.size(1), d = codebooks.size(2);
  TORCH_CHECK_VALUE(S <= 65535, "pq_assign (cuda): at most 65535 subspaces, got ", S);
  TORCH_CHECK_VALUE(d * 8 <= kSmemBytes, "pq_assign (cuda): subspace dim d <= ", kSmemBytes / 8, ", got ", d);
  const c10::cuda::CUDAGuard guard(x_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AssignSetup a = assign_setup(x_in, codebooks, cosine);
  const at::Tensor x = x_in.to(a.compute).contiguous();
  if (a.compute == at::kDouble) assign_dispatch_d<double>(x, a.cb, cosine, a.indices, stream);
  else assign_dispatch_d<float>(x, a.cb, cosine, a.indices, stream);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "pq_lookup_cuda", [&] {
    lookup_kernel<scalar_t><<<element_blocks(N * S * d), kElementThreads, 0, stream>>>(
        a.cbx.data_ptr<scalar_t>(), a.indices.data_ptr<int64_t>(), N, static_cast<int>(S), static_cast<int>(K),
        static_cast<int>(d), a.quantized.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {a.quantized, a.indices};
}

}  // namespace
}  // namespace pqgan::cuda

TORCH_LIBRARY_IMPL(pqgan_native, CUDA, m) {
  m.impl("pq_assign", &pqgan::cuda::pq_assign_cuda);
}
