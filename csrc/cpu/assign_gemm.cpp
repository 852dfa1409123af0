// pq_assign_gemm (CPU): exact l2 assignment at GEMM speed, for large sub-dims (Python routes l2 with
// pqgan_kernels.native_backend.uses_gemm(d, K) here).
//
// The rounding bound is the one derived in pqgan_kernels/bound.py; Python passes its coefficient
// (bound_coefficient(d, matmul precision, compute dtype)) so the constant lives in one place. Per subspace s:
//   1. centre: m = mean of the codebook when it lies away from the origin (|m| > max_k |c_k - m|), else m = 0
//      (bound.py holds for any centre; m = 0 leaves the codes in place); x' = fl(x - m), c'_k = fl(c_k - m);
//      Rc = max_k |c'_k|;
//   2. approximate scores a_k = |c'_k|^2 - 2 x'.c'_k. A task is (s, block of R rows): it centres its rows once,
//      then walks K in tiles of Kt codes (centred once per task when m != 0, ~256 KiB, kept in L2), so no (N, K)
//      buffer exists and the codebook is read N / R times. The tiles are scored by
//      - fused (fp32 compute on the AVX2 / AVX-512 copies, unless the caller asks for BLAS): gemm_scan of
//        assign_gemm_kernel.h, a register-blocked fp32 FMA kernel (u_in = 0) that packs the task's rows into
//        panels once, reads the codes in place and compares the scores with the rows' thresholds in registers;
//        only blocks with a score within a row's threshold reach the candidate lists (take_block), so there is
//        no score tile and R is limited only by the workspace cap;
//      - BLAS (the baseline copy, fp64 compute, or a lowered fp32 matmul precision, which the caller's bound
//        coefficient accounts for): at::addmm_out per group of G <= kGroupRows rows into a (G, Kt) score tile,
//        scanned by Candidates::offer;
//   3. per row keep the running best approximate score and every code with a_k <= best + B,
//      B = coefficient * (|x'| + Rc)^2 (pruned as the best falls), at most kMaxCandidates of them;
//   4. resolve with the oracle's direct formula sum_j (x_j - c_kj)^2 on the uncentred inputs: one candidate is the
//      winner as it is, several are re-scored (smallest wins, ties -> lowest index), and a row whose list
//      overflowed (many near-ties, e.g. quantised data far from the origin) or has no finite score is decided by a
//      direct scan over all K codes. Every branch is exact; only the speed depends on the data.
// Working memory (not proportional to N * K): per thread R centred rows (fused: in panels, with their thresholds)
// + their candidate lists + one code tile with its norms (+ for BLAS a (G, Kt) score tile), R chosen so this stays
// within max(output bytes / threads, kMinThreadBytes) unless one code tile and one row group alone need more (small
// N: about 0.6 MiB per thread at d = 256); plus (S, d) means, (S, K) code norms, (S, K / kCentreChunk, d) partial
// sums in double and, for mixed dtypes, the codebook converted to the compute dtype.
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
#include "cpu/assign_gemm_scan.h"
#include "cpu/assign_tiles.h"
#include "cpu/isa.h"

namespace pqgan::cpu {
namespace {

constexpr int64_t kGroupRows = 512;      // rows per BLAS call at most (fewer packings of the code tile) ...
constexpr int64_t kMinGroupRows = 128;   // ... and at least, where N allows (budget permitting more)
constexpr int64_t kTileBytes = 256 << 10; // a code tile (Kt, d) of about this size stays in L2 ...
constexpr int64_t kMinTileCodes = 16;     // ... with at least this many ...
constexpr int64_t kMaxTileCodes = 512;    // ... and at most this many codes
constexpr int kMaxCandidates = 16;        // per row; more -> the row is decided by a direct scan
constexpr int64_t kMinThreadBytes = 256 << 10;  // workspace floor per thread (tiny outputs)
constexpr int64_t kCentreChunk = 1024;          // codes per work unit of the centres' set-up

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

// The row's code from its candidate list (step 4 of the header comment): exact in every branch.
template <typename scalar_t, typename T>
int64_t decide(Candidates<T>& c, const scalar_t* xr, const T* cbs, int64_t K, int64_t d) {
  if (!c.overflow) c.prune();
  if (c.overflow || c.count == 0) return direct_scan<scalar_t, T>(xr, cbs, K, d);
  if (c.count == 1) return c.k[0];
  T best = std::numeric_limits<T>::infinity();
  int64_t k = c.k[0];
  for (int i = 0; i < c.count; ++i) {  // ascending codes: strict < keeps the lowest index on ties
    const T e = direct_l2<scalar_t, T>(xr, cbs + int64_t(c.k[i]) * d, d);
    if (e < best) {
      best = e;
      k = c.k[i];
    }
  }
  return k;
}

// Per subspace (step 1): the centre m (S, d) (zero where the codes are used in place), Rc, whether the subspace is
// centred, and |c_k|^2 (S, K) (used where the codes are used in place).
struct Centres {
  at::Tensor means, in_place_norms;
  std::vector<double> rc;
  std::vector<char> centred;
};

template <typename T>
Centres find_centres(const at::Tensor& cb) {
  const int64_t S = cb.size(0), K = cb.size(1), d = cb.size(2);
  const T* cbp = cb.data_ptr<T>();
  Centres out{at::zeros({S, d}, cb.options()), at::empty({S, K}, cb.options()), std::vector<double>(S),
              std::vector<char>(S)};
  // bound.py holds for any centre: the codebook mean (accumulated in double) when the codebook lies away from the
  // origin (|mean| > Rc about the mean), else 0 -- then the bound is at most ~4x wider, and the codes need no
  // centred copy: the scorer reads them in place and their norms are computed once per call instead of once per task.
  // Work units are (s, chunk of kCentreChunk codes), so a single codebook uses every thread too; the mean adds the
  // units' sums in a fixed order (the same for any thread count). Squared radii are in T (8 partial sums,
  // vectorised): the bound's generous constant covers their rounding, and |c_k|^2 are the codes' norms (any order).
  const int64_t nchunks = (K + kCentreChunk - 1) / kCentreChunk, units = S * nchunks;
  const std::vector<T> origin(d, T(0));
  at::Tensor partial = at::empty({units, d}, cb.options().dtype(at::kDouble));  // per unit: sum of its codes
  double* pp = partial.data_ptr<double>();
  T* inp = out.in_place_norms.data_ptr<T>();
  std::vector<T> r2max(units, T(0)), r2max_origin(units, T(0));  // per unit: largest |c_k - m|^2, |c_k|^2
  auto for_units = [&](auto&& body) {  // body(s, code range [k0, k1), unit)
    at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t s = u / nchunks, k0 = u % nchunks * kCentreChunk;
        body(s, k0, std::min(K, k0 + kCentreChunk), u);
      }
    });
  };
  for_units([&](int64_t s, int64_t k0, int64_t k1, int64_t u) {  // one sweep: sums and norms
    double* acc = pp + u * d;
    std::fill(acc, acc + d, 0.0);
    for (int64_t k = k0; k < k1; ++k) {
      const T* c = cbp + (s * K + k) * d;
      for (int64_t j = 0; j < d; ++j) acc[j] += static_cast<double>(c[j]);
      inp[s * K + k] = direct_l2<T, T>(c, origin.data(), d);
      r2max_origin[u] = std::max(r2max_origin[u], inp[s * K + k]);
    }
  });
  std::vector<T> mean(S * d), mean2(S), r2_origin(S, T(0));
  std::vector<char> maybe(S);  // |m| > max_k |c_k| / 2: else max_k |c_k - m| >= |m| and m = 0 is taken
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t j = 0; j < d; ++j) {
      double sum = 0;
      for (int64_t c = 0; c < nchunks; ++c) sum += pp[(s * nchunks + c) * d + j];
      mean[s * d + j] = static_cast<T>(sum / static_cast<double>(K));
    }
    mean2[s] = direct_l2<T, T>(mean.data() + s * d, origin.data(), d);
    for (int64_t c = 0; c < nchunks; ++c) r2_origin[s] = std::max(r2_origin[s], r2max_origin[s * nchunks + c]);
    maybe[s] = 4 * mean2[s] > r2_origin[s];
  }
  if (std::find(maybe.begin(), maybe.end(), char(1)) != maybe.end())
    for_units([&](int64_t s, int64_t k0, int64_t k1, int64_t u) {  // radii about the mean where they may decide
      if (!maybe[s]) return;
      for (int64_t k = k0; k < k1; ++k)
        r2max[u] = std::max(r2max[u], direct_l2<T, T>(cbp + (s * K + k) * d, mean.data() + s * d, d));
    });
  T* mp = out.means.data_ptr<T>();
  for (int64_t s = 0; s < S; ++s) {
    T r2 = 0;
    for (int64_t c = 0; c < nchunks; ++c) r2 = std::max(r2, r2max[s * nchunks + c]);
    out.centred[s] = maybe[s] && mean2[s] > r2;
    if (out.centred[s]) std::copy(mean.begin() + s * d, mean.begin() + (s + 1) * d, mp + s * d);
    out.rc[s] = std::sqrt(static_cast<double>(out.centred[s] ? r2 : r2_origin[s]));
  }
  return out;
}

// Task sizes: R rows per task (the codebook is read N / R times), code tiles of Kt codes, and for BLAS groups of
// G rows per call. fused: the scorer is gemm_scan (no score tile; R a multiple of kGemmPanelRows).
struct Blocking {
  int64_t R, Kt, G;
};

template <typename T>
Blocking blocking(int64_t N, int64_t S, int64_t K, int64_t d, int64_t budget, int64_t nthreads, bool fused) {
  constexpr int64_t t = sizeof(T);
  // about 4 tasks per thread when N allows (a descheduled thread on a shared machine then holds up little)
  const int64_t tasks_wanted = (4 * nthreads + S - 1) / S;
  const int64_t rows_wanted = (N + tasks_wanted - 1) / tasks_wanted;
  if (fused) {  // per row: its panel column, threshold, bound and candidate list; fixed: a centred code tile + norms
    const int64_t per_row = (d + 2) * t + int64_t(sizeof(Candidates<T>));
    int64_t Kt = std::min(kTileBytes / (d * t), budget / 2 / ((d + 1) * t));
    Kt = std::min(K, std::max(kGemmCodeBlock, Kt / kGemmCodeBlock * kGemmCodeBlock));
    const int64_t P = kGemmPanelRows;
    int64_t R = std::max(P, (budget - Kt * (d + 1) * t) / per_row / P * P);
    R = std::min({R, (rows_wanted + P - 1) / P * P, (N + P - 1) / P * P});
    return {R, Kt, 0};
  }
  const int64_t per_row = d * t + int64_t(sizeof(Candidates<T>));
  // rows per BLAS call: as many as half the budget holds (their centred rows and candidate lists), within bounds
  const int64_t G = std::min({kGroupRows, N, std::max(kMinGroupRows, budget / 2 / per_row / 16 * 16)});
  // code tile (Kt, d) + norms + (G, Kt) scores within half the budget and about kTileBytes of codes
  int64_t Kt = std::min(kTileBytes / (d * t), budget / 2 / ((d + 1 + G) * t));
  Kt = std::min(K, std::max(kMinTileCodes, std::min(kMaxTileCodes, Kt / kMinTileCodes * kMinTileCodes)));
  const int64_t fixed = (Kt * (d + 1) + G * Kt) * t;
  int64_t R = std::max<int64_t>(G, (budget - fixed) / per_row / G * G);
  // but at least one BLAS group of rows per task
  R = std::min(R, std::max(G, rows_wanted));
  return {std::max<int64_t>(1, std::min(R, N)), Kt, G};
}

// gemm_scan's hit callback: the (row, code) pairs of a register block scoring within the rows' thresholds offered
// to the rows' candidate lists, code by code in ascending order (as Candidates::offer does; a lower threshold
// after a take only rejects more), then those rows' thresholds refreshed (-inf once a list overflowed: that row is
// decided by a direct scan and needs no more scores).
struct FusedRows {
  Candidates<float>* cand;
  float* thr;
  int64_t rows;  // the task's rows; panel rows beyond are padding
};

void take_block(void* ctx, const float* scores, int64_t row0, int64_t rows, const uint32_t* hits, int64_t code0,
                int64_t ncodes) {
  const FusedRows& f = *static_cast<const FusedRows*>(ctx);
  const int64_t left = f.rows - row0;  // rows of the block that are not padding (padding rows never hit anyway)
  const uint32_t valid = left >= 32 ? ~0u : left <= 0 ? 0u : (1u << left) - 1;
  uint32_t touched = 0;
  for (int64_t i = 0; i < ncodes; ++i)
    for (uint32_t h = hits[i] & valid; h != 0; h &= h - 1) {
      const int r = __builtin_ctz(h);
      Candidates<float>& c = f.cand[row0 + r];
      if (c.overflow) continue;
      float thr = c.best + c.bound;
      c.take(scores[i * rows + r], code0 + i, thr);
      touched |= 1u << r;
    }
  for (; touched != 0; touched &= touched - 1) {
    const int r = __builtin_ctz(touched);
    const Candidates<float>& c = f.cand[row0 + r];
    f.thr[row0 + r] = c.overflow ? -std::numeric_limits<float>::infinity() : c.best + c.bound;
  }
}

// The fused scorer of this process (AVX2 / AVX-512 copies; nullptr for the baseline ISA or other compilers).
GemmScanFn fused_scanner() {
#ifdef PQ_HAVE_ISA_COPIES
  switch (isa()) {
    case Isa::avx512: return avx512::gemm_scan;
    case Isa::avx2: return avx2::gemm_scan;
    default: return nullptr;
  }
#else
  return nullptr;
#endif
}

// x (N, S*d) scalar_t contiguous, cb (S, K, d) T contiguous, cbx (S, K, d) scalar_t (for quantized).
// blas: score with at::addmm_out even where the fused fp32 kernel (gemm_scan) exists.
template <typename scalar_t, typename T>
void assign_gemm_impl(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& cbx, double coefficient, bool blas,
                      at::Tensor& quantized, at::Tensor& indices) {
  const int64_t N = x.size(0), S = cb.size(0), K = cb.size(1), d = cb.size(2), D = S * d;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const T* cbp = cb.data_ptr<T>();
  const scalar_t* cbxp = cbx.data_ptr<scalar_t>();
  scalar_t* qp = quantized.data_ptr<scalar_t>();
  int64_t* ip = indices.data_ptr<int64_t>();
  const Centres centres = find_centres<T>(cb);
  const T* mp = centres.means.data_ptr<T>();
  const T* inp = centres.in_place_norms.data_ptr<T>();
  const GemmScanFn scan = std::is_same<T, float>::value && !blas ? fused_scanner() : nullptr;

  // Tasks are (s, block of R rows). A task centres its rows once, then walks K in code tiles of Kt codes
  // (centred once per task, kept in L2) and scores them against its rows. R is as large as the workspace cap
  // allows, so the codebook is read N / R times.
  const int64_t nthreads_max = std::max<int64_t>(1, at::get_num_threads());
  const int64_t out_bytes = quantized.numel() * quantized.element_size() + indices.numel() * 8;
  const int64_t budget = std::max(kMinThreadBytes, out_bytes / nthreads_max);  // bytes per thread
  const Blocking b = blocking<T>(N, S, K, d, budget, nthreads_max, scan != nullptr);
  const int64_t R = b.R, Kt = b.Kt, G = b.G;
  const int64_t nblocks = (N + R - 1) / R;
  const int64_t ntasks = nblocks * S;
  const int64_t nthreads = std::min(nthreads_max, ntasks);
  // per thread: rows (R, d) centred (BLAS) or their panels + thresholds (fused), the code tile (Kt, d) + norms,
  // and for BLAS a (G, Kt) score tile
  const int64_t ws_floats = scan ? R * (d + 2) + Kt * (d + 1) : R * d + Kt * (d + 1) + std::min(G, R) * Kt;
  at::Tensor workspace = at::empty({nthreads, ws_floats}, cb.options());
  static_assert(std::is_trivially_copyable<Candidates<T>>::value, "Candidates lives in a byte tensor");
  at::Tensor cand_bytes = at::empty({nthreads * R * int64_t(sizeof(Candidates<T>))}, x.options().dtype(at::kByte));
  Candidates<T>* cand_all = reinterpret_cast<Candidates<T>*>(cand_bytes.data_ptr<uint8_t>());

  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t tid, int64_t) {
    T* xc = workspace.data_ptr<T>() + tid * ws_floats;  // BLAS: (R, d) rows; fused: (R / 32, d, 32) panels
    T* thr = xc + R * d;                                 // fused: (R) thresholds and (R) bounds
    T* bound = thr + R;
    T* cc = scan ? bound + R : xc + R * d;               // the code tile (Kt, d)
    T* n2 = cc + Kt * d;
    T* sc = n2 + Kt;                                     // BLAS: the (G, Kt) scores
    Candidates<T>* cand = cand_all + tid * R;
    const auto opts = cb.options();
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) {
      const int64_t s = t / nblocks, n0 = (t % nblocks) * R;
      const int64_t rows = std::min(R, N - n0);
      const T* m = mp + s * d;
      const T* cbs = cbp + s * K * d;
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* src = xp + (n0 + r) * D + s * d;
        T* row = scan ? cc : xc + r * d;  // fused: centred into the free code tile, then into its panel column
        // |x'| from the rounded centred values; the bound's generous constant covers this norm's own rounding
        const double span = std::sqrt(static_cast<double>(centre_row(src, m, d, row))) + centres.rc[s];
        cand[r].reset(static_cast<T>(coefficient * span * span));
        if (scan) {
          T* column = xc + r / kGemmPanelRows * d * kGemmPanelRows + r % kGemmPanelRows;
          for (int64_t j = 0; j < d; ++j) column[j * kGemmPanelRows] = row[j];
          thr[r] = cand[r].best + cand[r].bound;
          bound[r] = cand[r].bound;
        }
      }
      if (scan)  // padding rows of the last panel: zero, never a hit
        for (int64_t r = rows; r < (rows + kGemmPanelRows - 1) / kGemmPanelRows * kGemmPanelRows; ++r) {
          T* column = xc + r / kGemmPanelRows * d * kGemmPanelRows + r % kGemmPanelRows;
          for (int64_t j = 0; j < d; ++j) column[j * kGemmPanelRows] = 0;
          thr[r] = -std::numeric_limits<T>::infinity();
          bound[r] = 0;
        }
      for (int64_t k0 = 0; k0 < K; k0 += Kt) {
        const int64_t kt = std::min(Kt, K - k0);
        const T* codes = cbs + k0 * d;
        const T* norms_p = inp + s * K + k0;
        if (centres.centred[s]) {
          for (int64_t i = 0; i < kt; ++i) n2[i] = centre_row(cbs + (k0 + i) * d, m, d, cc + i * d);
          codes = cc;
          norms_p = n2;
        }
        if constexpr (std::is_same<T, float>::value) {
          if (scan) {
            FusedRows hits{cand, thr, rows};
            scan(xc, (rows + kGemmPanelRows - 1) / kGemmPanelRows, d, codes, norms_p, kt, k0, thr, bound, take_block,
                 &hits);
            continue;
          }
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
        const scalar_t* xr = xp + (n0 + r) * D + s * d;
        const int64_t k = decide<scalar_t, T>(cand[r], xr, cbs, K, d);
        ip[(n0 + r) * S + s] = k;
        std::memcpy(qp + (n0 + r) * D + s * d, cbxp + (s * K + k) * d, d * sizeof(scalar_t));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pq_assign_gemm_cpu(const at::Tensor& x_in, const at::Tensor& codebooks,
                                                      double bound_coefficient, bool blas) {
  check_assign_args(x_in, codebooks);
  check_device("pq_assign_gemm", x_in, at::kCPU);
  check_bound_coefficient("pq_assign_gemm", bound_coefficient, /*zero_allowed=*/false);
  const at::Tensor x = x_in.contiguous();
  AssignSetup a = assign_setup(x, codebooks, /*cosine=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pq_assign_gemm_cpu", [&] {
    if (a.compute == at::kDouble)
      assign_gemm_impl<scalar_t, double>(x, a.cb, a.cbx, bound_coefficient, blas, a.quantized, a.indices);
    else assign_gemm_impl<scalar_t, float>(x, a.cb, a.cbx, bound_coefficient, blas, a.quantized, a.indices);
  });
  return {a.quantized, a.indices};
}

}  // namespace
}  // namespace pqgan::cpu

TORCH_LIBRARY_IMPL(pqgan_native, CPU, m) {
  m.impl("pq_assign_gemm", &pqgan::cpu::pq_assign_gemm_cpu);
}
