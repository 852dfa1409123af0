// pq_ema_stats and pq_codebook_grad (CPU; schemas in ../ops.cpp): a scatter-add per code, each sum accumulated over
// the rows in order (with few work units: per row part, the parts then added in a fixed order), so the sums are
// deterministic and independent of the thread count (see scatter_cpu_impl). Parallelised with at::parallel_for
// (OpenMP in the usual torch build; it honours torch.set_num_threads). d = sub-dimension, D = S*d.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "scatter_ops.h"

namespace pqgan::cpu {
namespace {

constexpr int64_t kStatChunk = 16;      // coordinates per scatter work unit
constexpr int64_t kMinUnits = 16;       // with this many work units, one row part: no partial sums at all
constexpr int64_t kStatParts = 8;       // else at most this many row parts (partial sums) ...
constexpr int64_t kStatPartRows = 1024; // ... of at least this many rows

// Rows [n0, n1) of the work units [u0, u1) (unit u = (subspace u / nchunks, coordinate chunk u % nchunks)) added
// into sums_p (S, K, d) and, when COUNTS, counts_p (S, K). kd: d at compile time when a sub-vector is one chunk
// (then unit u = subspace u), else 0. Returns false at the first index outside [0, K).
template <int kd, bool COUNTS, typename scalar_t, typename T, typename index_t>
bool scatter_rows(const scalar_t* vp, const index_t* ip, int64_t n0, int64_t n1, int64_t S, int64_t K, int64_t d,
                  int64_t u0, int64_t u1, T* sums_p, T* counts_p) {
  const int64_t D = S * d;
  if constexpr (kd > 0) {
    for (int64_t n = n0; n < n1; ++n) {
      const index_t* irow = ip + n * S;
      const scalar_t* xrow = vp + n * D;
      for (int64_t s = u0; s < u1; ++s) {
        const int64_t k = static_cast<int64_t>(irow[s]);
        if (static_cast<uint64_t>(k) >= static_cast<uint64_t>(K)) return false;
        T* dst = sums_p + (s * K + k) * kd;
        const scalar_t* src = xrow + s * kd;
        if constexpr (kd == 2 && std::is_same<T, float>::value && std::is_same<scalar_t, float>::value) {
          typedef float F2 __attribute__((vector_size(8)));  // the pair as one 8-byte load, add and store
          F2 a, b;
          __builtin_memcpy(&a, dst, 8);
          __builtin_memcpy(&b, src, 8);
          a += b;
          __builtin_memcpy(dst, &a, 8);
        } else {
          for (int j = 0; j < kd; ++j) dst[j] += static_cast<T>(src[j]);
        }
        if constexpr (COUNTS) counts_p[s * K + k] += T(1);
      }
    }
    return true;
  }
  const int64_t nchunks = (d + kStatChunk - 1) / kStatChunk;
  const int64_t s_first = u0 / nchunks, c_first = u0 % nchunks;
  for (int64_t n = n0; n < n1; ++n) {
    const index_t* irow = ip + n * S;
    const scalar_t* xrow = vp + n * D;
    int64_t s = s_first, c = c_first;  // unit u = (s, chunk c), walked without divisions
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t k = static_cast<int64_t>(irow[s]);
      if (static_cast<uint64_t>(k) >= static_cast<uint64_t>(K)) return false;
      const int64_t j0 = c * kStatChunk, j1 = std::min(d, j0 + kStatChunk);
      const scalar_t* src = xrow + s * d;
      T* dst = sums_p + (s * K + k) * d;
      for (int64_t j = j0; j < j1; ++j) dst[j] += static_cast<T>(src[j]);
      if (COUNTS && c == 0) counts_p[s * K + k] += T(1);
      if (++c == nchunks) {
        c = 0;
        ++s;
      }
    }
  }
  return true;
}

// The statistics (sums and counts) for d <= 3, fp32: one 16-byte slot per (subspace, code) in a thread-local table
// -- lanes 0 .. kd - 1 the sums, lane 3 the count -- so a (row, subspace) is one 16-byte read-modify-write instead of
// two (sums, counts); the table is added into sums_p / counts_p at the end. Per (subspace, code) the rows are added
// in order from 0, so the results are the bits of scatter_rows. Measured at F8 (2 threads): 0.46 vs 0.57 ms.
constexpr int64_t kSlotsMaxBytes = 1 << 20;  // a larger thread-local table: scatter_rows instead
template <int kd, typename index_t>
bool scatter_rows_slots(const float* vp, const index_t* ip, int64_t n0, int64_t n1, int64_t S, int64_t K, int64_t u0,
                        int64_t u1, float* sums_p, float* counts_p) {
  static_assert(kd >= 1 && kd <= 3, "the sums and the count fit one 4-float slot");
  typedef float F4 __attribute__((vector_size(16)));
  typedef float F2 __attribute__((vector_size(8)));
  // kept per thread between calls (<= kSlotsMaxBytes): a fresh table each call costs its page faults
  thread_local std::vector<F4> slot;
  slot.assign((u1 - u0) * K, F4{0.f, 0.f, 0.f, 0.f});
  for (int64_t n = n0; n < n1; ++n) {
    const index_t* irow = ip + n * S;
    const float* xrow = vp + n * kd * S;
    for (int64_t s = u0; s < u1; ++s) {
      const int64_t k = static_cast<int64_t>(irow[s]);
      if (static_cast<uint64_t>(k) >= static_cast<uint64_t>(K)) return false;
      const float* x = xrow + kd * s;
      F4 add;
      if constexpr (kd == 2) {  // one 8-byte load (a partial memcpy into a 16-byte vector stalls store forwarding)
        F2 v;
        __builtin_memcpy(&v, x, sizeof(v));
        add = __builtin_shufflevector(v, F2{0.f, 1.f}, 0, 1, 2, 3);
      } else {
        add = F4{x[0], kd > 1 ? x[1] : 0.f, kd > 2 ? x[2] : 0.f, 1.f};
      }
      slot[(s - u0) * K + k] += add;
    }
  }
  for (int64_t s = u0; s < u1; ++s)
    for (int64_t k = 0; k < K; ++k) {
      const F4 t = slot[(s - u0) * K + k];
      for (int j = 0; j < kd; ++j) sums_p[(s * K + k) * kd + j] += t[j];
      counts_p[s * K + k] += t[3];
    }
  return true;
}

template <bool COUNTS, typename scalar_t, typename T, typename index_t>
bool scatter_rows_any_d(const scalar_t* vp, const index_t* ip, int64_t n0, int64_t n1, int64_t S, int64_t K,
                        int64_t d, int64_t u0, int64_t u1, T* sums_p, T* counts_p) {
#define PQ_SCATTER_ROWS(KD) scatter_rows<KD, COUNTS>(vp, ip, n0, n1, S, K, d, u0, u1, sums_p, counts_p)
  switch (d) {
    case 1: return PQ_SCATTER_ROWS(1);
    case 2: return PQ_SCATTER_ROWS(2);
    case 3: return PQ_SCATTER_ROWS(3);
    case 4: return PQ_SCATTER_ROWS(4);
    case 8: return PQ_SCATTER_ROWS(8);
    case 16: return PQ_SCATTER_ROWS(16);
    default: return PQ_SCATTER_ROWS(0);
  }
#undef PQ_SCATTER_ROWS
}

// sums[s, k, :] += values[n, s*d:(s+1)*d] for k = indices[n, s]; counts[s, k] += 1 (when counts is defined).
template <typename scalar_t, typename T, typename index_t>
void scatter_cpu_impl(const at::Tensor& values, const at::Tensor& indices, at::Tensor& sums, at::Tensor* counts) {
  const int64_t N = indices.size(0), S = indices.size(1), K = sums.size(1), d = sums.size(2), D = S * d;
  const scalar_t* vp = values.data_ptr<scalar_t>();
  const index_t* ip = indices.data_ptr<index_t>();
  T* sp = sums.data_ptr<T>();
  T* cp = counts ? counts->data_ptr<T>() : nullptr;
  // Tasks are (row part p, range of work units), a unit being (s, coordinate chunk) in memory order. A task walks
  // its rows in order and reads one contiguous piece of each row; row part p accumulates into its own partial
  // buffer, and the parts are added in order at the end. The number of parts depends only on the shapes, and the
  // thread count (which sets the unit ranges) never changes a sum: the result is deterministic.
  const int64_t nchunks = (d + kStatChunk - 1) / kStatChunk;
  const int64_t units = S * nchunks;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Enough units (e.g. PQ's 64 subspaces): tasks split the units and need no partial sums. Few (plain VQ with a
  // small d): row parts, each with its partial buffer -- zeroing plus one reduction pass over (parts - 1) outputs,
  // only worth it while they are no larger than the input.
  const int64_t out_elems = S * K * d;
  const int64_t parts =
      units >= kMinUnits ? 1
                         : std::max<int64_t>(1, std::min<int64_t>({kStatParts, (N + kStatPartRows - 1) / kStatPartRows,
                                                                   1 + (N * D) / std::max<int64_t>(1, out_elems)}));
  // one contiguous range of units per thread and row part: every pass over the rows reads each row once
  const int64_t groups = std::min<int64_t>(units, (threads + parts - 1) / parts);
  const int64_t per_part = S * K * d;
  const int64_t stride = per_part + (cp ? S * K : 0);
  const at::Tensor partial = at::zeros({parts > 1 ? (parts - 1) * stride : 0}, sums.options());
  T* partial_p = partial.data_ptr<T>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, parts * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end && !bad; ++t) {
      const int64_t p = t / groups, g = t % groups;
      const int64_t u0 = units * g / groups, u1 = units * (g + 1) / groups;
      const int64_t n0 = N * p / parts, n1 = N * (p + 1) / parts;
      T* sums_p = p == 0 ? sp : partial_p + (p - 1) * stride;
      T* counts_p = cp == nullptr ? nullptr : (p == 0 ? cp : sums_p + per_part);
      bool ok;
      if constexpr (std::is_same<scalar_t, float>::value && std::is_same<T, float>::value) {
        if (cp != nullptr && d <= 3 && (u1 - u0) * K * 16 <= kSlotsMaxBytes) {
          ok = d == 1   ? scatter_rows_slots<1>(vp, ip, n0, n1, S, K, u0, u1, sums_p, counts_p)
               : d == 2 ? scatter_rows_slots<2>(vp, ip, n0, n1, S, K, u0, u1, sums_p, counts_p)
                        : scatter_rows_slots<3>(vp, ip, n0, n1, S, K, u0, u1, sums_p, counts_p);
          if (!ok) bad = true;
          continue;
        }
      }
      ok = cp != nullptr ? scatter_rows_any_d<true>(vp, ip, n0, n1, S, K, d, u0, u1, sums_p, counts_p)
                         : scatter_rows_any_d<false>(vp, ip, n0, n1, S, K, d, u0, u1, sums_p, counts_p);
      if (!ok) bad = true;
    }
  });
  if (parts > 1 && !bad) {
    at::parallel_for(0, stride, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T* out = i < per_part ? sp + i : cp + (i - per_part);
        T acc = *out;
        for (int64_t p = 1; p < parts; ++p) acc += partial_p[(p - 1) * stride + i];
        *out = acc;
      }
    });
  }
  TORCH_CHECK_VALUE(!bad, "indices has values outside [0, ", K, ")");
}

void scatter_cpu(const at::Tensor& values, const at::Tensor& indices, at::Tensor& sums, at::Tensor* counts) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "pq_scatter_cpu", [&] {
    const bool f64 = sums.scalar_type() == at::kDouble;
    if (indices.scalar_type() == at::kLong) {
      if (f64) scatter_cpu_impl<scalar_t, double, int64_t>(values, indices, sums, counts);
      else scatter_cpu_impl<scalar_t, float, int64_t>(values, indices, sums, counts);
    } else {
      if (f64) scatter_cpu_impl<scalar_t, double, int32_t>(values, indices, sums, counts);
      else scatter_cpu_impl<scalar_t, float, int32_t>(values, indices, sums, counts);
    }
  });
}

}  // namespace
}  // namespace pqgan::cpu

TORCH_LIBRARY_IMPL(pqgan_native, CPU, m) {
  m.impl("pq_ema_stats", &pqgan::ema_stats_op<at::kCPU, pqgan::cpu::scatter_cpu>);
  m.impl("pq_codebook_grad", &pqgan::codebook_grad_op<at::kCPU, pqgan::cpu::scatter_cpu>);
}
