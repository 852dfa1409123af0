// pq_assign_gemm (CPU): exact l2 assignment at GEMM speed, for large sub-dims (Python routes l2 with
// pqgan_kernels.native_backend.uses_gemm(d, K) here).
//
// The rounding bound is the one derived in pqgan_kernels/bound.py; Python passes its coefficient
// (bound_coefficient(d, matmul precision, compute dtype)) so the constant lives in one place. Per subspace s:
//   1. centre: m = mean of the codebook when it lies away from the origin (|m| > max_k |c_k - m|), else m = 0
//      (bound.py holds for any centre; m = 0 leaves the codes in place); x' = fl(x - m), c'_k = fl(c_k - m);
//      Rc = max_k |c'_k|;
//   2. approximate scores a_k = |c'_k|^2 - 2 x'.c'_k by BLAS (at::addmm_out, which honours torch's fp32 matmul
//      precision). A task is (s, block of R rows): it centres its rows once, then walks K in tiles of Kt codes
//      (centred once per task when m != 0, ~256 KiB, kept in L2) and scores each tile against its rows, G <=
//      kGroupRows at a time, so no (N, K) buffer exists and the codebook is read N / R times;
//   3. per row keep the running best approximate score and every code with a_k <= best + B,
//      B = coefficient * (|x'| + Rc)^2 (pruned as the best falls), at most kMaxCandidates of them;
//   4. resolve with the oracle's direct formula sum_j (x_j - c_kj)^2 on the uncentred inputs: one candidate is the
//      winner as it is, several are re-scored (smallest wins, ties -> lowest index), and a row whose list
//      overflowed (many near-ties, e.g. quantised data far from the origin) or has no finite score is decided by a
//      direct scan over all K codes. Every branch is exact; only the speed depends on the data.
// Working memory (not proportional to N * K): per thread R centred rows + their candidate lists + one code tile
// with its norms + a (G, Kt) score tile, R chosen so this stays within max(output bytes / threads,
// kMinThreadBytes) unless one code tile and one row group alone need more (small N: about 0.6 MiB per thread
// at d = 256); plus (S, d) means, (S, K) code norms and, for mixed dtypes, the codebook converted to the compute dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "assign_setup.h"

namespace pqgan::cpu {
namespace {

constexpr int64_t kGroupRows = 512;      // rows per BLAS call at most (fewer packings of the code tile) ...
constexpr int64_t kMinGroupRows = 128;   // ... and at least, where N allows (budget permitting more)
constexpr int64_t kTileBytes = 256 << 10; // a code tile (Kt, d) of about this size stays in L2 ...
constexpr int64_t kMinTileCodes = 16;     // ... with at least this many ...
constexpr int64_t kMaxTileCodes = 512;    // ... and at most this many codes
constexpr int kMaxCandidates = 16;        // per row; more -> the row is decided by a direct scan
constexpr int64_t kMinThreadBytes = 256 << 10;  // workspace floor per thread (tiny outputs)

// The oracle's formula sum_j (x_j - c_j)^2 in T (any summation order is covered by the bound).
template <typename scalar_t, typename T>
inline T direct_l2(const scalar_t* x, const T* c, int64_t d) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) {
      const T diff = static_cast<T>(x[j + l]) - c[j + l];
      acc[l] += diff * diff;
    }
  for (; j < d; ++j) {
    const T diff = static_cast<T>(x[j]) - c[j];
    acc[j & 7] += diff * diff;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// out = fl(v - m) (d values), returns |out|^2 in T, summed in 8 interleaved partial sums (vectorisable).
template <typename scalar_t, typename T>
inline T centre_row(const scalar_t* v, const T* m, int64_t d, T* out) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) {
      const T c = static_cast<T>(v[j + l]) - m[j + l];
      out[j + l] = c;
      acc[l] += c * c;
    }
  for (; j < d; ++j) {
    const T c = static_cast<T>(v[j]) - m[j];
    out[j] = c;
    acc[j & 7] += c * c;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Lowest index of the smallest direct distance over all K codes of one subspace (cb: (K, d) rows).
template <typename scalar_t, typename T>
int64_t direct_scan(const scalar_t* x, const T* cb, int64_t K, int64_t d) {
  T best = std::numeric_limits<T>::infinity();
  int64_t arg = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T e = direct_l2<scalar_t, T>(x, cb + k * d, d);
    if (e < best) {
      best = e;
      arg = k;
    }
  }
  return arg;
}

// Per-row candidate list: codes (ascending) whose approximate score is within the bound of the running best.
template <typename T>
struct Candidates {
  T best, bound;
  int count;
  bool overflow;
  T a[kMaxCandidates];
  int32_t k[kMaxCandidates];

  void reset(T b) {
    best = std::numeric_limits<T>::infinity();
    bound = b;
    count = 0;
    overflow = false;
  }
  void prune() {  // drop codes that left the window best + bound
    const T thr = best + bound;
    int w = 0;
    for (int i = 0; i < count; ++i)
      if (a[i] <= thr) {
        a[w] = a[i];
        k[w++] = k[i];
      }
    count = w;
  }
  // Offer every code of a score tile row (scores[0..kt), code index k0 + i).
  void offer(const T* scores, int64_t kt, int64_t k0) {
    if (overflow) return;
    // 16-byte vectors: native on the baseline ISA (SSE2 / NEON), so the common no-hit test is a few instructions
    constexpr int W = 16 / sizeof(T);
    typedef T V __attribute__((vector_size(16)));
    typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type IT;
    typedef IT I __attribute__((vector_size(16)));
    int64_t i = 0;
    T thr = best + bound;
    V t;
    for (int l = 0; l < W; ++l) t[l] = thr;
    for (; i + 4 * W <= kt; i += 4 * W) {
      V v0, v1, v2, v3;
      std::memcpy(&v0, scores + i, sizeof(V));
      std::memcpy(&v1, scores + i + W, sizeof(V));
      std::memcpy(&v2, scores + i + 2 * W, sizeof(V));
      std::memcpy(&v3, scores + i + 3 * W, sizeof(V));
      const I hit = ((v0 <= t) | (v1 <= t)) | ((v2 <= t) | (v3 <= t));  // NaN never hits
      uint64_t w[2];
      std::memcpy(w, &hit, sizeof(w));
      if ((w[0] | w[1]) == 0) continue;
      for (int l = 0; l < 4 * W; ++l) take(scores[i + l], k0 + i + l, thr);
      for (int l = 0; l < W; ++l) t[l] = thr;
      if (overflow) return;
    }
    for (; i < kt; ++i) {
      take(scores[i], k0 + i, thr);
      if (overflow) return;
    }
  }
  inline void take(T s, int64_t code, T& thr) {
    if (!(s <= thr)) return;
    if (s < best) {
      best = s;
      thr = best + bound;
    }
    if (count == kMaxCandidates) {
      prune();
      if (count == kMaxCandidates) {
        overflow = true;
        return;
      }
    }
    a[count] = s;
    k[count++] = static_cast<int32_t>(code);
  }
};

// x (N, S*d) scalar_t contiguous, cb (S, K, d) T contiguous, cbx (S, K, d) scalar_t (for quantized).
template <typename scalar_t, typename T>
void assign_gemm_impl(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& cbx, double coefficient,
                      at::Tensor& quantized, at::Tensor& indices) {
  const int64_t N = x.size(0), S = cb.size(0), K = cb.size(1), d = cb.size(2), D = S * d;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const T* cbp = cb.data_ptr<T>();
  const scalar_t* cbxp = cbx.data_ptr<scalar_t>();
  scalar_t* qp = quantized.data_ptr<scalar_t>();
  int64_t* ip = indices.data_ptr<int64_t>();

  // Per subspace: the centre m and Rc = max_k |fl(c_k - m)|. bound.py holds for any centre: the codebook mean
  // (accumulated in double) when the codebook lies away from the origin (|mean| > Rc about the mean), else 0 --
  // then the bound is at most ~4x wider, and the codes need no centred copy: the BLAS reads them in place and
  // their norms |c_k|^2 (S, K) are computed once per call instead of once per task.
  at::Tensor means = at::zeros({S, d}, cb.options());
  T* mp = means.data_ptr<T>();
  std::vector<double> rc(S);
  std::vector<char> centred(S);
  const std::vector<T> origin(d, T(0));
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    std::vector<double> acc(d);
    std::vector<T> mean(d);
    for (int64_t s = s0; s < s1; ++s) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const T* c = cbp + s * K * d;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < d; ++j) acc[j] += static_cast<double>(c[k * d + j]);
      for (int64_t j = 0; j < d; ++j) mean[j] = static_cast<T>(acc[j] / static_cast<double>(K));
      // squared radii in T (8 partial sums, vectorised): the bound's generous constant covers their rounding
      const T mean2 = direct_l2<T, T>(mean.data(), origin.data(), d);
      T r2max = 0, r2max_origin = 0;
      for (int64_t k = 0; k < K; ++k) {
        r2max = std::max(r2max, direct_l2<T, T>(c + k * d, mean.data(), d));
        r2max_origin = std::max(r2max_origin, direct_l2<T, T>(c + k * d, origin.data(), d));
      }
      centred[s] = mean2 > r2max;
      if (centred[s]) std::copy(mean.begin(), mean.end(), mp + s * d);
      rc[s] = std::sqrt(static_cast<double>(centred[s] ? r2max : r2max_origin));
    }
  });
  // |c_k|^2 of the subspaces used in place (zero elsewhere, unused), in T, any summation order (bound.py)
  at::Tensor in_place_norms = at::zeros({S, K}, cb.options());
  T* inp = in_place_norms.data_ptr<T>();
  at::parallel_for(0, S * K, 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      if (!centred[i / K]) inp[i] = direct_l2<T, T>(cbp + i * d, origin.data(), d);
  });

  // Tasks are (s, block of R rows). A task centres its rows once (xc), then walks K in code tiles of Kt codes
  // (centred once per task, kept in L2) and scores them against its rows G at a time. R is as large as
  // the workspace cap allows, so the codebook is read N / R times, not N / G times.
  const int64_t nthreads_max = std::max<int64_t>(1, at::get_num_threads());
  const int64_t out_bytes = quantized.numel() * quantized.element_size() + indices.numel() * 8;
  const int64_t budget = std::max(kMinThreadBytes, out_bytes / nthreads_max);  // bytes per thread
  const int64_t per_row = d * int64_t(sizeof(T)) + int64_t(sizeof(Candidates<T>));
  // rows per BLAS call: as many as half the budget holds (their centred rows and candidate lists), within bounds
  const int64_t G = std::min({kGroupRows, N, std::max(kMinGroupRows, budget / 2 / per_row / 16 * 16)});
  // code tile (Kt, d) + norms + (G, Kt) scores within half the budget and about kTileBytes of codes
  int64_t Kt = std::min(kTileBytes / (d * int64_t(sizeof(T))), budget / 2 / ((d + 1 + G) * int64_t(sizeof(T))));
  Kt = std::min(K, std::max(kMinTileCodes, std::min(kMaxTileCodes, Kt / kMinTileCodes * kMinTileCodes)));
  const int64_t fixed = (Kt * (d + 1) + G * Kt) * int64_t(sizeof(T));
  int64_t R = std::max<int64_t>(G, (budget - fixed) / per_row / G * G);
  // about 4 tasks per thread when N allows (a descheduled thread on a shared machine then holds up little),
  // but at least one BLAS group of rows per task
  const int64_t tasks_wanted = (4 * nthreads_max + S - 1) / S;
  R = std::min(R, std::max(G, (N + tasks_wanted - 1) / tasks_wanted));
  R = std::max<int64_t>(1, std::min(R, N));
  const int64_t nblocks = (N + R - 1) / R;
  const int64_t ntasks = nblocks * S;
  const int64_t nthreads = std::min(nthreads_max, ntasks);
  const int64_t ws_floats = R * d + Kt * (d + 1) + std::min(G, R) * Kt;
  at::Tensor workspace = at::empty({nthreads, ws_floats}, cb.options());
  static_assert(std::is_trivially_copyable<Candidates<T>>::value, "Candidates lives in a byte tensor");
  at::Tensor cand_bytes = at::empty({nthreads * R * int64_t(sizeof(Candidates<T>))}, x.options().dtype(at::kByte));
  Candidates<T>* cand_all = reinterpret_cast<Candidates<T>*>(cand_bytes.data_ptr<uint8_t>());

  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t tid, int64_t) {
    T* xc = workspace.data_ptr<T>() + tid * ws_floats;
    T* cc = xc + R * d;
    T* n2 = cc + Kt * d;
    T* sc = n2 + Kt;
    Candidates<T>* cand = cand_all + tid * R;
    const auto opts = cb.options();
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) {
      const int64_t s = t / nblocks, n0 = (t % nblocks) * R;
      const int64_t rows = std::min(R, N - n0);
      const T* m = mp + s * d;
      const T* cbs = cbp + s * K * d;
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* src = xp + (n0 + r) * D + s * d;
        // |x'| from the rounded centred values; the bound's generous constant covers this norm's own rounding
        const double span = std::sqrt(static_cast<double>(centre_row(src, m, d, xc + r * d))) + rc[s];
        cand[r].reset(static_cast<T>(coefficient * span * span));
      }
      for (int64_t k0 = 0; k0 < K; k0 += Kt) {
        const int64_t kt = std::min(Kt, K - k0);
        const T* codes = cbs + k0 * d;
        const T* norms_p = inp + s * K + k0;
        if (centred[s]) {
          for (int64_t i = 0; i < kt; ++i) n2[i] = centre_row(cbs + (k0 + i) * d, m, d, cc + i * d);
          codes = cc;
          norms_p = n2;
        }
        const at::Tensor norms = at::from_blob(const_cast<T*>(norms_p), {1, kt}, opts);
        const at::Tensor codesT = at::from_blob(const_cast<T*>(codes), {kt, d}, opts).t();
        for (int64_t g0 = 0; g0 < rows; g0 += G) {
          const int64_t g = std::min(G, rows - g0);
          // sc (g, kt) = 1 * |c'|^2 (broadcast over rows) - 2 * xc (g, d) @ cc^T (d, kt), by torch's BLAS
          at::Tensor sc_t = at::from_blob(sc, {g, kt}, opts);
          at::addmm_out(sc_t, norms, at::from_blob(xc + g0 * d, {g, d}, opts), codesT, /*beta=*/1, /*alpha=*/-2);
          for (int64_t r = 0; r < g; ++r) cand[g0 + r].offer(sc + r * kt, kt, k0);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        Candidates<T>& c = cand[r];
        const scalar_t* xr = xp + (n0 + r) * D + s * d;
        int64_t k;
        if (!c.overflow) c.prune();
        if (c.overflow || c.count == 0) {
          k = direct_scan<scalar_t, T>(xr, cbs, K, d);
        } else if (c.count == 1) {
          k = c.k[0];
        } else {
          T best = std::numeric_limits<T>::infinity();
          k = c.k[0];
          for (int i = 0; i < c.count; ++i) {  // ascending codes: strict < keeps the lowest index on ties
            const T e = direct_l2<scalar_t, T>(xr, cbs + int64_t(c.k[i]) * d, d);
            if (e < best) {
              best = e;
              k = c.k[i];
            }
          }
        }
        ip[(n0 + r) * S + s] = k;
        std::memcpy(qp + (n0 + r) * D + s * d, cbxp + (s * K + k) * d, d * sizeof(scalar_t));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pq_assign_gemm_cpu(const at::Tensor& x_in, const at::Tensor& codebooks,
                                                      double bound_coefficient) {
  check_assign_args(x_in, codebooks);
  check_device("pq_assign_gemm", x_in, at::kCPU);
  check_bound_coefficient("pq_assign_gemm", bound_coefficient, /*zero_allowed=*/false);
  const at::Tensor x = x_in.contiguous();
  AssignSetup a = assign_setup(x, codebooks, /*cosine=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pq_assign_gemm_cpu", [&] {
    if (a.compute == at::kDouble)
      assign_gemm_impl<scalar_t, double>(x, a.cb, a.cbx, bound_coefficient, a.quantized, a.indices);
    else assign_gemm_impl<scalar_t, float>(x, a.cb, a.cbx, bound_coefficient, a.quantized, a.indices);
  });
  return {a.quantized, a.indices};
}

}  // namespace
}  // namespace pqgan::cpu

TORCH_LIBRARY_IMPL(pqgan_native, CPU, m) {
  m.impl("pq_assign_gemm", &pqgan::cpu::pq_assign_gemm_cpu);
}
