// CPU implementations of the pqgan_native ops (schemas in native_ops.cpp), parallelised with at::parallel_for
// (OpenMP in the usual torch build; it honours torch.set_num_threads).
//
// pq_assign: tasks are (block of kBlockRows rows, range of subspaces). Per subspace, a task gathers its rows'
//   sub-vectors into a small buffer in the compute type (fp16/bf16 are up-cast to fp32 here), runs the micro-kernel of assign_kernel.h
//   against the transposed codebook tile cbT[s] (d, Kp), writes the indices and copies the chosen codewords into
//   quantized. Working memory: the (S, d, Kp) transposed codebooks plus kBlockRows*d per thread; no (N, K) buffer.
// pq_ema_stats / pq_codebook_grad: a scatter-add per code into per-row-part partial sums added in a fixed order, so
//   the sums are deterministic and independent of the thread count (see scatter_cpu_impl).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <type_traits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"

namespace pqgan {
namespace cpu {
namespace {

constexpr int64_t kBlockRows = 64;  // rows per task (a multiple of kTileRows)
constexpr int64_t kStatChunk = 16;      // coordinates per scatter work unit
constexpr int64_t kStatParts = 8;       // at most this many row parts (partial sums) ...
constexpr int64_t kStatPartRows = 1024; // ... of at least this many rows

std::string cpu_isa() {
  switch (isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

template <typename T>
void assign_tile_dispatch(const T* xs, int64_t rows, int64_t d, const T* cbT, int64_t Kp, bool cosine, int64_t* out) {
  // The 64-byte copy only for d >= 5 (the register-blocked any-d kernel): measured per-thread CPU time on an
  // AVX-512 Xeon with one 512-bit FP port, it is ~17% faster there and 10-35% slower for d <= 4.
  switch (isa()) {
    case Isa::avx512:
      if (d >= 5) return avx512::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
      return avx2::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
    case Isa::avx2: return avx2::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
    default: return generic::assign_tile(xs, rows, d, cbT, Kp, cosine, out);
  }
}

// Rows the expanded scan marked -1 (out[r] < 0, r < rows; xs (rows, d)) decided by the direct-formula scan,
// kTileRows at a time (a partial group repeats its last row).
void decide_marked_rows(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, int64_t* out) {
  float group[kTileRows * kExpandedMaxD];
  int64_t member[kTileRows], result[kTileRows];
  int64_t filled = 0;
  for (int64_t r = 0; r <= rows; ++r) {
    if (r < rows && out[r] >= 0) continue;
    if (r < rows) {
      member[filled] = r;
      std::memcpy(group + filled * d, xs + r * d, d * sizeof(float));
      ++filled;
    }
    if (filled == kTileRows || (r == rows && filled > 0)) {
      for (int64_t i = filled; i < kTileRows; ++i)
        std::memcpy(group + i * d, group + (filled - 1) * d, d * sizeof(float));
      assign_tile_dispatch<float>(group, kTileRows, d, cbT, Kp, false, result);
      for (int64_t i = 0; i < filled; ++i) out[member[i]] = result[i];
      filled = 0;
    }
  }
}

// The expanded-formula scan (l2, fp32, d <= kExpandedMaxD) of the AVX2 / AVX-512 copies: measured on the 2-core
// AVX-512 Xeon at F8 (d = 2, K = 512) it takes half the time of the direct-formula scan. Rows it leaves at -1
// (near-ties, no finite score) are decided by assign_tile_dispatch, kTileRows at a time.
void assign_tile_expanded_dispatch(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp,
                                   const float* ce, int64_t Kpe, const float* m, float rc, float coefficient,
                                   int64_t* out) {
  if (isa() == Isa::avx512) avx512::assign_tile_expanded(xs, rows, d, cbT, Kp, ce, Kpe, m, rc, coefficient, out);
  else avx2::assign_tile_expanded(xs, rows, d, cbT, Kp, ce, Kpe, m, rc, coefficient, out);
}

// The expanded scan's per-subspace inputs (see kernels.h): ce (S, d + 1, Kpe), centres m (S, d), rc (S).
struct ExpandedCodebooks {
  at::Tensor ce, m, rc;
  int64_t Kpe = 0;
  float coefficient = 0.f;
};

ExpandedCodebooks expanded_codebooks(const at::Tensor& cb) {  // cb (S, K, d) float
  const int64_t S = cb.size(0), K = cb.size(1), d = cb.size(2);
  ExpandedCodebooks e;
  e.Kpe = (K + kExpandedBlock - 1) / kExpandedBlock * kExpandedBlock;
  e.m = cb.mean(1);                                                  // (S, d): any centre keeps the bound valid
  const at::Tensor centred = cb - e.m.unsqueeze(1);                  // fl(c - m)
  const at::Tensor norm2 = centred.pow(2).sum(-1);                   // (S, K) fl(|c'|^2)
  e.rc = centred.to(at::kDouble).pow(2).sum(-1).amax(1).sqrt().to(at::kFloat);  // (S,) max_k |c'_k|
  e.ce = at::zeros({S, d + 1, e.Kpe}, cb.options());
  e.ce.select(1, 0).fill_(std::numeric_limits<float>::quiet_NaN());
  e.ce.select(1, 0).narrow(1, 0, K).copy_(norm2);
  e.ce.narrow(1, 1, d).narrow(2, 0, K).copy_(centred.transpose(1, 2) * -2);
  // = pqgan_kernels/bound.py bound_coefficient(d, "ieee", torch.float32): 8 u_in + (7 d + 20) u, u_in = 0, u = 2^-24
  e.coefficient = static_cast<float>((7 * d + 20) * std::ldexp(1.0, -24));
  return e;
}

// x (N, S*d) scalar_t, cbT (S, d, Kp) T, cbx (S, K, d) scalar_t -> quantized (N, S*d) scalar_t, indices (N, S).
// expanded: the expanded scan's inputs when it applies (T = float), else nullptr.
template <typename scalar_t, typename T>
void assign_cpu_impl(const at::Tensor& x, const at::Tensor& cbT, const at::Tensor& cbx, bool cosine,
                     const ExpandedCodebooks* expanded, at::Tensor& quantized, at::Tensor& indices) {
  const int64_t N = x.size(0), S = cbx.size(0), K = cbx.size(1), d = cbx.size(2), D = S * d;
  const int64_t Kp = cbT.size(2);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const T* cbTp = cbT.data_ptr<T>();
  const scalar_t* cbxp = cbx.data_ptr<scalar_t>();
  scalar_t* qp = quantized.data_ptr<scalar_t>();
  int64_t* ip = indices.data_ptr<int64_t>();
  const int64_t nblocks = (N + kBlockRows - 1) / kBlockRows;
  // Tasks are (row block, range of subspaces), block-major: a task's rows of x, indices and quantized stay in cache
  // while it walks its subspaces. Subspaces are split into groups only when there are too few row blocks.
  const int64_t nthreads_max = std::max<int64_t>(1, at::get_num_threads());
  const int64_t groups = std::min<int64_t>(S, std::max<int64_t>(1, (4 * nthreads_max + nblocks - 1) / nblocks));
  const int64_t group_size = (S + groups - 1) / groups;
  const int64_t ntasks = nblocks * groups;
  // A shared task counter (dynamic scheduling inside torch's thread pool): a slow or descheduled thread does not
  // hold up the others, as it would with a static split.
  std::atomic<int64_t> next{0};
  const int64_t nthreads = std::min<int64_t>(nthreads_max, ntasks);
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    std::vector<T> buf(kBlockRows * d);
    std::vector<int64_t> out(kBlockRows);
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) {
      const int64_t n0 = (t / groups) * kBlockRows;
      const int64_t s0 = (t % groups) * group_size, s1 = std::min(S, s0 + group_size);
      const int64_t rows = std::min(kBlockRows, N - n0);
      const int64_t padded = (rows + kTileRows - 1) / kTileRows * kTileRows;
      for (int64_t i = rows * d; i < padded * d; ++i) buf[i] = T(0);
      for (int64_t s = s0; s < s1; ++s) {
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* src = xp + (n0 + r) * D + s * d;
          for (int64_t j = 0; j < d; ++j) buf[r * d + j] = static_cast<T>(src[j]);
        }
        if constexpr (std::is_same<T, float>::value) {
          if (expanded != nullptr) {
            assign_tile_expanded_dispatch(buf.data(), padded, d, cbTp + s * d * Kp, Kp,
                                          expanded->ce.data_ptr<float>() + s * (d + 1) * expanded->Kpe,
                                          expanded->Kpe, expanded->m.data_ptr<float>() + s * d,
                                          expanded->rc.data_ptr<float>()[s], expanded->coefficient, out.data());
            decide_marked_rows(buf.data(), rows, d, cbTp + s * d * Kp, Kp, out.data());
          } else {
            assign_tile_dispatch<T>(buf.data(), padded, d, cbTp + s * d * Kp, Kp, cosine, out.data());
          }
        } else {
          assign_tile_dispatch<T>(buf.data(), padded, d, cbTp + s * d * Kp, Kp, cosine, out.data());
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t k = out[r];
          ip[(n0 + r) * S + s] = k;
          const scalar_t* src = cbxp + (s * K + k) * d;  // a loop, not memcpy: d is small and a call costs more
          scalar_t* dst = qp + (n0 + r) * D + s * d;
          for (int64_t j = 0; j < d; ++j) dst[j] = src[j];
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pq_assign_cpu(const at::Tensor& x_in, const at::Tensor& codebooks, bool cosine) {
  check_assign_args(x_in, codebooks);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "pq_assign (cpu): tensors must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), S = codebooks.size(0), K = codebooks.size(1), d = codebooks.size(2);
  const at::ScalarType ct = compute_dtype(x, codebooks);
  at::Tensor cb = codebooks.to(ct);
  if (cosine) cb = cb / cb.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);
  const int64_t Kp = (K + kTileCodes - 1) / kTileCodes * kTileCodes;
  at::Tensor cbT = at::full({S, d, Kp}, std::numeric_limits<double>::quiet_NaN(), cb.options());
  cbT.narrow(2, 0, K).copy_(cb.transpose(1, 2));
  const at::Tensor cbx = codebooks.to(x.scalar_type()).contiguous();
  at::Tensor quantized = at::empty_like(x);
  at::Tensor indices = at::empty({N, S}, x.options().dtype(at::kLong));
  ExpandedCodebooks expanded;
  const bool use_expanded = !cosine && ct == at::kFloat && d <= kExpandedMaxD && isa() != Isa::generic;
  if (use_expanded) expanded = expanded_codebooks(cb.contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pq_assign_cpu", [&] {
    if (ct == at::kDouble) assign_cpu_impl<scalar_t, double>(x, cbT, cbx, cosine, nullptr, quantized, indices);
    else assign_cpu_impl<scalar_t, float>(x, cbT, cbx, cosine, use_expanded ? &expanded : nullptr, quantized, indices);
  });
  return {quantized, indices};
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
  // buffer, and the parts are added in order at the end. Both splits depend only on the shapes and the thread count
  // never changes a sum: the result is deterministic.
  const int64_t nchunks = (d + kStatChunk - 1) / kStatChunk;
  const int64_t units = S * nchunks;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Partial buffers cost zeroing plus one reduction pass over (parts - 1) outputs: only worth it while they are
  // no larger than the input (with a big codebook, e.g. plain VQ, one part and more coordinate groups is faster).
  const int64_t out_elems = S * K * d;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({kStatParts, (N + kStatPartRows - 1) / kStatPartRows,
                                                                  1 + (N * D) / std::max<int64_t>(1, out_elems)}));
  const int64_t groups = std::min<int64_t>(units, (4 * threads + parts - 1) / parts);
  const int64_t per_part = S * K * d;
  std::vector<T> partial(parts > 1 ? (parts - 1) * (per_part + (cp ? S * K : 0)) : 0, T(0));
  std::atomic<bool> bad{false};
  at::parallel_for(0, parts * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = t / groups, g = t % groups;
      const int64_t u0 = units * g / groups, u1 = units * (g + 1) / groups;
      const int64_t n0 = N * p / parts, n1 = N * (p + 1) / parts;
      T* sums_p = p == 0 ? sp : partial.data() + (p - 1) * (per_part + (cp ? S * K : 0));
      T* counts_p = cp == nullptr ? nullptr : (p == 0 ? cp : sums_p + per_part);
      const int64_t s_first = u0 / nchunks, c_first = u0 % nchunks;
      for (int64_t n = n0; n < n1; ++n) {
        const index_t* irow = ip + n * S;
        const scalar_t* xrow = vp + n * D;
        int64_t s = s_first, c = c_first;  // unit u = (s, chunk c), walked without divisions
        for (int64_t u = u0; u < u1; ++u) {
          const int64_t k = static_cast<int64_t>(irow[s]);
          if (k < 0 || k >= K) {
            bad = true;
            return;
          }
          const int64_t j0 = c * kStatChunk, j1 = std::min(d, j0 + kStatChunk);
          const scalar_t* src = xrow + s * d;
          T* dst = sums_p + (s * K + k) * d;
          for (int64_t j = j0; j < j1; ++j) dst[j] += static_cast<T>(src[j]);
          if (counts_p != nullptr && c == 0) counts_p[s * K + k] += T(1);
          if (++c == nchunks) {
            c = 0;
            ++s;
          }
        }
      }
    }
  });
  if (parts > 1 && !bad) {
    const int64_t stride = per_part + (cp ? S * K : 0);
    at::parallel_for(0, stride, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T* out = i < per_part ? sp + i : cp + (i - per_part);
        T acc = *out;
        for (int64_t p = 1; p < parts; ++p) acc += partial[(p - 1) * stride + i];
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

std::tuple<at::Tensor, at::Tensor> pq_ema_stats_cpu(const at::Tensor& x_in, const at::Tensor& indices_in,
                                                    int64_t num_codes) {
  check_scatter_args("pq_ema_stats", x_in, indices_in, num_codes);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "pq_ema_stats (cpu): tensors must be on the CPU, got ", x_in.device());
  return scatter_outputs(x_in, indices_in, num_codes, true, scatter_cpu);
}

at::Tensor pq_codebook_grad_cpu(const at::Tensor& grad_in, const at::Tensor& indices_in, int64_t num_codes) {
  check_scatter_args("pq_codebook_grad", grad_in, indices_in, num_codes);
  TORCH_CHECK_VALUE(grad_in.device().is_cpu(), "pq_codebook_grad (cpu): tensors must be on the CPU, got ",
                    grad_in.device());
  return std::get<1>(scatter_outputs(grad_in, indices_in, num_codes, false, scatter_cpu));
}

}  // namespace
}  // namespace cpu
}  // namespace pqgan

// Which copy of the CPU assignment kernels runs: "avx512", "avx2" or "generic".
TORCH_LIBRARY_FRAGMENT(pqgan_native, m) {
  m.def("cpu_isa() -> str", &pqgan::cpu::cpu_isa);
}

TORCH_LIBRARY_IMPL(pqgan_native, CPU, m) {
  m.impl("pq_assign", &pqgan::cpu::pq_assign_cpu);
  m.impl("pq_ema_stats", &pqgan::cpu::pq_ema_stats_cpu);
  m.impl("pq_codebook_grad", &pqgan::cpu::pq_codebook_grad_cpu);
}
