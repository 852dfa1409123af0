// pq_ema_apply_ (CPU; schema in ../ops.cpp): the Laplace-smoothed EMA step of pqgan_kernels/ema_apply.py, in place,
// for fp32 contiguous state, in two passes over it instead of ema_apply.py's eight torch ops (each of which reads
// and writes whole tensors and, above torch's grain size, wakes the thread pool). S subspaces, K codes, d =
// sub-dimension:
//   cluster_size <- decay * cluster_size + (1 - decay) * counts                (S, K)
//   embed_sum    <- decay * embed_sum + (1 - decay) * sums                     (S, K, d)
//   n = cluster_size.sum(-1);  smoothed = (cluster_size + eps) / (n + K * eps) * n
//   codebooks    <- embed_sum / smoothed                                       (S, K, d)
// The same fp32 operations as ema_apply.py, except n, summed here in fp64 then rounded (torch sums in fp32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"

namespace pqgan::cpu {
namespace {

constexpr int64_t kApplyGrain = int64_t(1) << 17;  // elements of state per parallel chunk: F8's 98 K stay inline

// One code's d sums and codeword; restrict: the tensors do not overlap, so the compiler may vectorise (the divisions
// are most of the work).
inline void update_code(float* __restrict__ es, const float* __restrict__ sm, float* __restrict__ cb, int64_t d,
                        float keep, float take, float smoothed) {
  for (int64_t j = 0; j < d; ++j) {
    const float e = es[j] * keep + take * sm[j];
    es[j] = e;
    cb[j] = e / smoothed;
  }
}

void ema_apply_cpu(at::Tensor& codebooks, at::Tensor& cluster_size, at::Tensor& embed_sum, const at::Tensor& counts,
                   const at::Tensor& sums, double decay, double eps) {
  check_ema_apply_args(codebooks, cluster_size, embed_sum, counts, sums);
  const int64_t S = codebooks.size(0), K = codebooks.size(1), d = codebooks.size(2);
  float* cb = codebooks.data_ptr<float>();
  float* cs = cluster_size.data_ptr<float>();
  float* es = embed_sum.data_ptr<float>();
  const float* cnt = counts.data_ptr<float>();
  const float* sm = sums.data_ptr<float>();
  // the scalars as torch rounds them for fp32 tensors: mul_(decay), add_(.., alpha=1 - decay), + eps, + K * eps
  const float keep = static_cast<float>(decay), take = static_cast<float>(1.0 - decay);
  const float eps_f = static_cast<float>(eps), k_eps = static_cast<float>(K * eps);
  // pass 1, per subspace: the new cluster sizes and their sum n
  std::vector<float> n(S);
  at::parallel_for(0, S, std::max<int64_t>(1, kApplyGrain / K), [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      double total = 0;
      for (int64_t i = s * K; i < (s + 1) * K; ++i) {
        const float c = cs[i] * keep;
        cs[i] = c + take * cnt[i];
        total += cs[i];
      }
      n[s] = static_cast<float>(total);
    }
  });
  // pass 2, per code: the new sums and the codeword
  at::parallel_for(0, S * K, std::max<int64_t>(1, kApplyGrain / (d + 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t s = i0 / K, i = i0; i < i1; ++s) {  // (subspace, code) rows, no division per code
      const float ns = n[s];
      for (const int64_t end = std::min(i1, (s + 1) * K); i < end; ++i) {
        const float smoothed = (cs[i] + eps_f) / (ns + k_eps) * ns;
        update_code(es + i * d, sm + i * d, cb + i * d, d, keep, take, smoothed);
      }
    }
  });
}

}  // namespace
}  // namespace pqgan::cpu

TORCH_LIBRARY_IMPL(pqgan_native, CPU, m) { m.impl("pq_ema_apply_", &pqgan::cpu::ema_apply_cpu); }
