// The CPU assignment micro-kernels: nearest codeword of a small block of rows in one subspace.
//
// Torch-free on purpose: this header is compiled three times, for the baseline x86-64 ISA (assign_generic.cpp),
// under `#pragma GCC target("avx2,fma")` (assign_avx2.cpp) and with 64-byte vectors under an AVX-512 target
// (assign_avx512.cpp, PQ_VEC_BYTES=64); assign.cpp picks one at run time. It must not
// call out-of-line library code (std:: templates would be instantiated with the AVX2 target and could be merged with
// the baseline copies by the linker), so it only uses GCC vector extensions and plain loops.
//
// Shapes (all contiguous, T = float or double, the compute type):
//   xs   (rows, d)  the rows' sub-vectors of this subspace; rows is a multiple of kRows (padding rows are ignored)
//   cbT  (d, Kp)    the codebook of this subspace transposed, Kp a multiple of kCodeStep (and of assign_tiles.h's
//                   kTileCodes, a multiple of every copy's kCodeStep); columns K..Kp-1 are NaN
//                   (a NaN distance never compares smaller, so padding codes are never chosen)
//   out  (rows,)    index of the nearest codeword: smallest sum of squared differences (l2), or the largest dot
//                   product with the pre-normalised codewords (cosine); ties -> lowest index.
// No (rows, K) buffer: each row keeps a running (best distance, best index) per vector lane.
#pragma once
#include <cstdint>


#ifndef PQ_KERNEL_NS
#error "define PQ_KERNEL_NS before including assign_kernel.h"
#endif

namespace pqgan {
namespace cpu {
namespace PQ_KERNEL_NS {

#ifndef PQ_VEC_BYTES
#define PQ_VEC_BYTES 32  // vector width of this copy: 32 (AVX2 / baseline) or 64 (AVX-512)
#endif

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float V __attribute__((vector_size(PQ_VEC_BYTES)));
  typedef int32_t IT;
  typedef IT I __attribute__((vector_size(PQ_VEC_BYTES)));
  static constexpr int W = PQ_VEC_BYTES / 4;
};
template <> struct Vec<double> {
  typedef double V __attribute__((vector_size(PQ_VEC_BYTES)));
  typedef int64_t IT;
  typedef IT I __attribute__((vector_size(PQ_VEC_BYTES)));
  static constexpr int W = PQ_VEC_BYTES / 8;
};

constexpr int kRows = 4;                      // rows per register block
constexpr int kCodeStep = PQ_VEC_BYTES / 2;   // codes per step of the large-d kernel: 2 vectors of floats, 4 of doubles

// Broadcast (an initializer list, so GCC emits one vbroadcastss/sd; a lane loop becomes a chain of inserts).
template <typename T>
static inline typename Vec<T>::V splat(T s);
#if PQ_VEC_BYTES == 64
template <>
inline Vec<float>::V splat<float>(float s) {
  return Vec<float>::V{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}
template <>
inline Vec<double>::V splat<double>(double s) {
  return Vec<double>::V{s, s, s, s, s, s, s, s};
}
#else
template <>
inline Vec<float>::V splat<float>(float s) {
  return Vec<float>::V{s, s, s, s, s, s, s, s};
}
template <>
inline Vec<double>::V splat<double>(double s) {
  return Vec<double>::V{s, s, s, s};
}
#endif

template <typename T>
static inline typename Vec<T>::V load(const T* p) {
  typename Vec<T>::V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Lanes i ^ step of v (a butterfly stage).
template <typename VV, typename I>
static inline VV swap_lanes(const VV& v, int step) {
  I perm;
  for (int i = 0; i < int(sizeof(I) / sizeof(perm[0])); ++i) perm[i] = i ^ step;
  return __builtin_shuffle(v, perm);
}

// Lane-wise (best, index) -> the row's answer: the smallest value, lowest index among equal values. Branch-free
// butterfly reductions (best values are never NaN: they only take values that compared smaller).
template <typename T>
static inline int64_t reduce_lanes(const typename Vec<T>::V& best, const typename Vec<T>::I& idx) {
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::I I;
  constexpr int W = Vec<T>::W;
  V m = best;
  for (int step = W / 2; step >= 1; step /= 2) {
    const V t = swap_lanes<V, I>(m, step);
    m = t < m ? t : m;
  }
  typedef typename Vec<T>::IT IT;
  const IT big = static_cast<IT>(~(static_cast<IT>(1) << (sizeof(IT) * 8 - 1)));  // the largest IT
  I k = best == m ? idx : (idx - idx) + big;
  for (int step = W / 2; step >= 1; step /= 2) {
    const I u = swap_lanes<I, I>(k, step);
    k = u < k ? u : k;
  }
  return k[0];
}

// min(a, b) lane-wise where a < b, else b (so a NaN a never replaces b): vminps/vminpd on AVX2 and AVX-512.
#ifdef PQ_KERNEL_AVX2
static inline Vec<float>::V vmin_isa(const Vec<float>::V& a, const Vec<float>::V& b) {
  return __builtin_ia32_minps256(a, b);
}
static inline Vec<double>::V vmin_isa(const Vec<double>::V& a, const Vec<double>::V& b) {
  return __builtin_ia32_minpd256(a, b);
}
#define PQ_HAVE_VMIN_ISA 1
#elif defined(PQ_KERNEL_AVX512)
static inline Vec<float>::V vmin_isa(const Vec<float>::V& a, const Vec<float>::V& b) {
  return __builtin_ia32_minps512_mask(a, b, a, static_cast<unsigned short>(0xFFFF), 4);  // 4: current rounding
}
static inline Vec<double>::V vmin_isa(const Vec<double>::V& a, const Vec<double>::V& b) {
  return __builtin_ia32_minpd512_mask(a, b, a, static_cast<unsigned char>(0xFF), 4);
}
#define PQ_HAVE_VMIN_ISA 1
#endif
// Bit l set where a[l] <= t[l] (false for NaN): one compare + mask move on AVX2 / AVX-512.
static inline uint32_t lanes_le(const Vec<float>::V& a, const Vec<float>::V& t) {
#if defined(PQ_HAVE_VMIN_ISA) && PQ_VEC_BYTES == 64
  return __builtin_ia32_cmpps512_mask(a, t, 2 /* _CMP_LE_OS */, static_cast<unsigned short>(0xFFFF), 4);
#elif defined(PQ_HAVE_VMIN_ISA)
  return static_cast<uint32_t>(__builtin_ia32_movmskps256(__builtin_ia32_cmpps256(a, t, 2 /* _CMP_LE_OS */)));
#else
  uint32_t bits = 0;
  for (int l = 0; l < Vec<float>::W; ++l) bits |= static_cast<uint32_t>(a[l] <= t[l]) << l;
  return bits;
#endif
}

template <typename T>
static inline typename Vec<T>::V vmin(const typename Vec<T>::V& a, const typename Vec<T>::V& b,
                                      const typename Vec<T>::I& a_lt_b) {
#ifdef PQ_HAVE_VMIN_ISA
  (void)a_lt_b;
  return vmin_isa(a, b);
#else
  return a_lt_b ? a : b;
#endif
}

// Score of one code vector for one row (xr: the row's d broadcast values): sum of squared differences (l2) or the
// negated dot product (cosine). Shared by the scan and the re-scan of assign_small_d, so both get the same bits.
template <typename T, int kd, bool COS>
static inline typename Vec<T>::V small_score(const typename Vec<T>::V* c, const typename Vec<T>::V* xr) {
  typename Vec<T>::V acc;
  if (COS) {
    acc = -(c[0] * xr[0]);
    for (int j = 1; j < kd; ++j) acc -= c[j] * xr[j];
  } else {
    typename Vec<T>::V diff = c[0] - xr[0];
    acc = diff * diff;
    for (int j = 1; j < kd; ++j) {
      diff = c[j] - xr[j];
      acc += diff * diff;
    }
  }
  return acc;
}

// Small d (compile-time kd = d): the d codebook vectors of a code step are loaded once and used by kRows rows.
// Codes are scanned in blocks of kBlockCodes: per block only a lane-wise min is kept (one op per code vector), and
// the block's start is recorded where a lane's min improves (strictly: the first block reaching the final min).
// At the end the row's min v* is known, and the block recorded by each lane holding v* is re-scored for that row
// to find the lowest code with score v* -- the same answer as a per-code compare, at a fraction of the ops.
constexpr int kBlockCodes = 32;  // = assign_tiles.h kTileCodes: Kp is a multiple of it
template <typename T, int kd, bool COS>
static void assign_small_d(const T* xs, int64_t rows, const T* cbT, int64_t Kp, int64_t* out) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  constexpr int W = Vec<T>::W;
  constexpr int R = kRows;
  constexpr int NB = kBlockCodes / W;  // code vectors per block
  I lane;
  for (int i = 0; i < W; ++i) lane[i] = i;
  const V inf = splat<T>(__builtin_inf());
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    V xb[R][kd];
    V best[R];
    I bblk[R];
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < kd; ++j) xb[r][j] = splat<T>(xs[(r0 + r) * kd + j]);
      best[r] = inf;
      bblk[r] = lane - lane;
    }
    I kb = lane - lane;
    for (int64_t k = 0; k < Kp; k += kBlockCodes) {
      V bm[R];
      for (int r = 0; r < R; ++r) bm[r] = inf;
      for (int u = 0; u < NB; ++u) {
        V c[kd];
        for (int j = 0; j < kd; ++j) c[j] = load<T>(cbT + j * Kp + k + u * W);
        for (int r = 0; r < R; ++r) {
          const V acc = small_score<T, kd, COS>(c, xb[r]);
          bm[r] = vmin<T>(acc, bm[r], acc < bm[r]);  // a NaN score (padding code) never enters
        }
      }
      for (int r = 0; r < R; ++r) {
        const I m = bm[r] < best[r];
        best[r] = vmin<T>(bm[r], best[r], m);
        bblk[r] = m ? kb : bblk[r];
      }
      kb += kBlockCodes;
    }
    for (int r = 0; r < R; ++r) {
      V m = best[r];
      for (int step = W / 2; step >= 1; step /= 2) {
        const V t = swap_lanes<V, I>(m, step);
        m = t < m ? t : m;
      }
      const T vstar = m[0];
      int64_t answer = -1, fallback = -1;
      for (int l = 0; l < W; ++l) {
        if (!(best[r][l] == vstar)) continue;
        const int64_t base = static_cast<int64_t>(bblk[r][l]);
        if (fallback < 0 || base + l < fallback) fallback = base + l;
        for (int u = 0; u < NB; ++u) {
          V c[kd];
          for (int j = 0; j < kd; ++j) c[j] = load<T>(cbT + j * Kp + base + u * W);
          const V acc = small_score<T, kd, COS>(c, xb[r]);
          if (acc[l] == vstar) {
            const int64_t code = base + u * W + l;
            if (answer < 0 || code < answer) answer = code;
            break;
          }
        }
      }
      // no finite score at all (NaN inputs): the lowest recorded code, 0 -- as the per-code compare gives
      out[r0 + r] = answer >= 0 ? answer : (fallback >= 0 ? fallback : 0);
    }
  }
}

// The oracle's direct formula sum_j (x_j - c_kj)^2 for one row and code (cbT (kd, Kp) transposed).
template <int kd>
static inline float direct_l2_small(const float* x, const float* cbT, int64_t Kp, int64_t code) {
  float e = 0.f;
  for (int j = 0; j < kd; ++j) {
    const float diff = x[j] - cbT[j * Kp + code];
    e += diff * diff;
  }
  return e;
}

// Smallest lane of v (a shuffle-and-min tree with constant lane masks).
static inline float hmin(Vec<float>::V v) {
  typedef Vec<float>::I I;
#if PQ_VEC_BYTES == 64
  v = __builtin_ia32_minps512_mask(v, __builtin_shuffle(v, I{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}),
                                   v, static_cast<unsigned short>(0xFFFF), 4);
  v = __builtin_ia32_minps512_mask(v, __builtin_shuffle(v, I{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}),
                                   v, static_cast<unsigned short>(0xFFFF), 4);
  v = __builtin_ia32_minps512_mask(v, __builtin_shuffle(v, I{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}),
                                   v, static_cast<unsigned short>(0xFFFF), 4);
  v = __builtin_ia32_minps512_mask(v, __builtin_shuffle(v, I{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}),
                                   v, static_cast<unsigned short>(0xFFFF), 4);
#else
  Vec<float>::V t = __builtin_shuffle(v, I{4, 5, 6, 7, 0, 1, 2, 3});
  v = t < v ? t : v;
  t = __builtin_shuffle(v, I{2, 3, 0, 1, 6, 7, 4, 5});
  v = t < v ? t : v;
  t = __builtin_shuffle(v, I{1, 0, 3, 2, 5, 4, 7, 6});
  v = t < v ? t : v;
#endif
  return v[0];
}

// Small d, l2, float: the expanded formula on centred data, then the exact re-check of pqgan_kernels/bound.py.
// With x' = fl(x - m) and ce = [|c'_k|^2 ; -2 c'_k] for c'_k = fl(c_k - m) (m: the codebook mean), the scan scores
// a_k = |c'_k|^2 - 2 x'.c'_k: d FMAs and one min per code and row (the direct formula costs 2d + 1 ops). Codes are
// scanned in blocks of kExpBlock; per vector lane the kernel keeps the smallest block minimum (best), the block
// holding it and the second smallest block minimum. With t = min(best) + B (B = coefficient (|x'| + Rc)^2 from
// bound.py), every code with a_k <= t -- a set that holds the direct formula's winner -- lies in the best block of
// a lane whose best is <= t, unless some lane's second is <= t too. So when no lane's second is <= t, the kernel
// re-scores the few lane-best blocks within t (same code path, same bits) and, if exactly one code is <= t, that
// code is the answer; several candidates are decided by the oracle's direct formula on the uncentred inputs
// (smallest wins, ties -> lowest index). Any other row (near-ties across blocks: duplicated codewords, quantised
// data; no finite score; a bound that overflowed) gets out = -1 for the caller to decide with the direct kernel.
//   xs (rows, kd) uncentred, rows a multiple of kRows; cbT (kd, Kp) uncentred, NaN padding (for the re-check);
//   ce (kd + 1, Kpe): row 0 |c'_k|^2 (NaN padding), rows 1..kd -2 c'_k (0 padding), Kpe a multiple of kExpBlock;
//   m (kd) the centre; rc = max_k |c'_k|; coefficient = bound.py's bound_coefficient(d) for fp32.
constexpr int kExpBlock = static_cast<int>(kExpandedBlock);  // codes per block (assign_tiles.h)
static_assert(kExpBlock <= 64, "a block's candidates are one 64-bit mask (assign_small_d_expanded)");
template <int kd>
static inline Vec<float>::V expanded_score(const Vec<float>::V* c, const Vec<float>::V* xb) {
  Vec<float>::V acc = c[0];
  for (int j = 0; j < kd; ++j) acc += xb[j] * c[j + 1];
  return acc;
}
template <int kd>
static void assign_small_d_expanded(const float* xs, int64_t rows, const float* cbT, int64_t Kp, const float* ce,
                                    int64_t Kpe, const float* m, float rc, float coefficient, int64_t* out) {
  using V = typename Vec<float>::V;
  using I = typename Vec<float>::I;
  constexpr int W = Vec<float>::W;
  constexpr int R = kRows;
  constexpr int NB = kExpBlock / W;
  const V inf = splat<float>(__builtin_inff());
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    V xb[R][kd];
    V best[R], second[R];
    I blk[R];
    float bound[R];
    for (int r = 0; r < R; ++r) {
      float norm2 = 0.f;
      for (int j = 0; j < kd; ++j) {
        const float xc = xs[(r0 + r) * kd + j] - m[j];
        xb[r][j] = splat<float>(xc);
        norm2 += xc * xc;
      }
      const float span = __builtin_sqrtf(norm2) + rc;
      bound[r] = coefficient * span * span;
      best[r] = inf;
      second[r] = inf;
      blk[r] = I{} ;
    }
    I bvec = I{};
    for (int64_t k = 0; k < Kpe; k += kExpBlock) {
      V bm[R];
      for (int r = 0; r < R; ++r) bm[r] = inf;
      for (int u = 0; u < NB; ++u) {
        V c[kd + 1];
        for (int j = 0; j <= kd; ++j) c[j] = load<float>(ce + j * Kpe + k + u * W);
        for (int r = 0; r < R; ++r) {
          const V acc = expanded_score<kd>(c, xb[r]);
          bm[r] = vmin<float>(acc, bm[r], acc < bm[r]);  // a NaN score (padding code) never enters
        }
      }
      for (int r = 0; r < R; ++r) {
        const I lt = bm[r] < best[r];
        const V hi = lt ? best[r] : bm[r];  // max(best, bm): the one that is not the new best
        second[r] = vmin<float>(hi, second[r], hi < second[r]);
        best[r] = vmin<float>(bm[r], best[r], lt);
        blk[r] = lt ? bvec : blk[r];
      }
      bvec += kExpBlock;
    }
    for (int r = 0; r < R; ++r) {
      const float threshold = hmin(best[r]) + bound[r];
      int64_t answer = -1;
      const V tv = splat<float>(threshold);
      uint32_t hits = lanes_le(best[r], tv);
      // false for NaN / inf (no finite score, or a bound that overflowed) and for near-ties across blocks
      if (threshold < __builtin_inff() && lanes_le(second[r], tv) == 0) {
        const float* xr = xs + (r0 + r) * kd;
        float best_e = __builtin_inff();
        bool single = true;  // so far at most one candidate, in `answer`
        while (hits != 0) {
          const int64_t base = static_cast<int64_t>(blk[r][__builtin_ctz(hits)]);
          uint32_t same = 0;  // the hit lanes whose best block is this one: re-scored together
          for (uint32_t h = hits; h != 0; h &= h - 1) {
            const int l = __builtin_ctz(h);
            same |= static_cast<uint32_t>(blk[r][l] == base) << l;
          }
          hits &= ~same;
          uint64_t in = 0;  // bit u * W + l: code base + u * W + l is a candidate (a <= t)
          for (int u = 0; u < NB; ++u) {
            V c[kd + 1];
            for (int j = 0; j <= kd; ++j) c[j] = load<float>(ce + j * Kpe + base + u * W);
            in |= static_cast<uint64_t>(lanes_le(expanded_score<kd>(c, xb[r]), tv) & same) << (u * W);
          }
          if (single && answer < 0 && (in & (in - 1)) == 0 && in != 0) {  // the usual case: one candidate
            answer = base + __builtin_ctzll(in);
            continue;
          }
          if (single && answer >= 0) best_e = direct_l2_small<kd>(xr, cbT, Kp, answer);
          single = false;
          for (; in != 0; in &= in - 1) {  // several: the oracle's formula decides, ties -> lowest index
            const int64_t code = base + __builtin_ctzll(in);
            const float e = direct_l2_small<kd>(xr, cbT, Kp, code);
            if (e < best_e || (e == best_e && (answer < 0 || code < answer))) {
              best_e = e;
              answer = code;
            }
          }
        }
        if (!single && !(best_e < __builtin_inff())) answer = -1;  // no finite direct score: the direct kernel
      }
      out[r0 + r] = answer;
    }
  }
}

// Any d (run time): kRows x (kCodeStep / W) accumulators, the d loop inside, codebook vectors shared by the rows.
template <typename T, bool COS>
static void assign_large_d(const T* xs, int64_t rows, int64_t d, const T* cbT, int64_t Kp, int64_t* out) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  constexpr int W = Vec<T>::W;
  constexpr int R = kRows;
  constexpr int U = kCodeStep / W;  // 2 vectors of floats, 4 of doubles per step
  I lane;
  for (int i = 0; i < W; ++i) lane[i] = i;
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const T* x0 = xs + r0 * d;
    V best[R];
    I bidx[R];
    for (int r = 0; r < R; ++r) {
      best[r] = splat<T>(__builtin_inf());
      bidx[r] = lane - lane;
    }
    I kv = lane;
    for (int64_t k = 0; k < Kp; k += U * W) {
      V acc[R][U];
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < U; ++u) acc[r][u] = splat<T>(0);
      const T* cp = cbT + k;
      for (int64_t j = 0; j < d; ++j, cp += Kp) {
        V c[U];
        for (int u = 0; u < U; ++u) c[u] = load<T>(cp + u * W);
        for (int r = 0; r < R; ++r) {
          const V xv = splat<T>(x0[r * d + j]);
          for (int u = 0; u < U; ++u) {
            if (COS) {
              acc[r][u] -= c[u] * xv;
            } else {
              const V diff = c[u] - xv;
              acc[r][u] += diff * diff;
            }
          }
        }
      }
      for (int u = 0; u < U; ++u) {
        for (int r = 0; r < R; ++r) {
          const I m = acc[r][u] < best[r];
          best[r] = vmin<T>(acc[r][u], best[r], m);
          bidx[r] = m ? kv : bidx[r];
        }
        kv += W;
      }
    }
    for (int r = 0; r < R; ++r) out[r0 + r] = reduce_lanes<T>(best[r], bidx[r]);
  }
}

template <typename T, bool COS>
static void assign_tile_impl(const T* xs, int64_t rows, int64_t d, const T* cbT, int64_t Kp, int64_t* out) {
  switch (d) {
    case 1: return assign_small_d<T, 1, COS>(xs, rows, cbT, Kp, out);
    case 2: return assign_small_d<T, 2, COS>(xs, rows, cbT, Kp, out);
    case 3: return assign_small_d<T, 3, COS>(xs, rows, cbT, Kp, out);
    case 4: return assign_small_d<T, 4, COS>(xs, rows, cbT, Kp, out);
    default: return assign_large_d<T, COS>(xs, rows, d, cbT, Kp, out);
  }
}

void assign_tile(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, bool cosine,
                 int64_t* out) {
  if (cosine) assign_tile_impl<float, true>(xs, rows, d, cbT, Kp, out);
  else assign_tile_impl<float, false>(xs, rows, d, cbT, Kp, out);
}

void assign_tile(const double* xs, int64_t rows, int64_t d, const double* cbT, int64_t Kp, bool cosine,
                 int64_t* out) {
  if (cosine) assign_tile_impl<double, true>(xs, rows, d, cbT, Kp, out);
  else assign_tile_impl<double, false>(xs, rows, d, cbT, Kp, out);
}

void assign_tile_expanded(const float* xs, int64_t rows, int64_t d, const float* cbT, int64_t Kp, const float* ce,
                          int64_t Kpe, const float* m, float rc, float coefficient, int64_t* out) {
  switch (d) {
    case 1: return assign_small_d_expanded<1>(xs, rows, cbT, Kp, ce, Kpe, m, rc, coefficient, out);
    case 2: return assign_small_d_expanded<2>(xs, rows, cbT, Kp, ce, Kpe, m, rc, coefficient, out);
    case 3: return assign_small_d_expanded<3>(xs, rows, cbT, Kp, ce, Kpe, m, rc, coefficient, out);
    default: return assign_small_d_expanded<4>(xs, rows, cbT, Kp, ce, Kpe, m, rc, coefficient, out);
  }
}

}  // namespace PQ_KERNEL_NS
}  // namespace cpu
}  // namespace pqgan
