// The element-wise launch shared by the CUDA lookup (assign.cu) and scatter (scatter.cu) kernels: a grid-stride loop
// over the N*S*d elements of an (N, S, d) array (d = sub-dimension, D = S*d), kElementThreads threads a block.
#pragma once
#include <algorithm>
#include <cstdint>

namespace pqgan::cuda {

constexpr int kElementThreads = 256;

// Blocks for `total` elements: one per kElementThreads, capped (the grid-stride loop covers the rest).
inline int element_blocks(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kElementThreads - 1) / kElementThreads, 65535 * 8));
}

// Calls body(i, ns, s, j) for each element i = (n*S + s)*d + j this thread owns: ns = n*S + s, j < d.
template <typename Body>
__device__ __forceinline__ void for_each_element(int64_t N, int S, int d, Body body) {
  const int64_t total = N * S * d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ns = i / d;
    const int j = static_cast<int>(i - ns * d);
    const int s = static_cast<int>(ns % S);
    body(i, ns, s, j);
  }
}

}  // namespace pqgan::cuda
