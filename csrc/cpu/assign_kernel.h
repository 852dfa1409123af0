// The CPU assignment micro-kernels: nearest codeword of a small block of rows in one subspace.
//
// Torch-free on purpose: this header is compiled twice, once for the baseline x86-64 ISA (assign_generic.cpp) and
// once under `#pragma GCC target("avx2,fma")` (assign_avx2.cpp); ops_cpu.cpp picks one at run time. It must not
// call out-of-line library code (std:: templates would be instantiated with the AVX2 target and could be merged with
// the baseline copies by the linker), so it only uses GCC vector extensions and plain loops.
//
// Shapes (all contiguous, T = float or double, the compute type):
//   xs   (rows, d)  the rows' sub-vectors of this subspace; rows is a multiple of kRows (padding rows are ignored)
//   cbT  (d, Kp)    the codebook of this subspace transposed, Kp a multiple of kCodeStep; columns K..Kp-1 are NaN
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

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <> struct Vec<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  static constexpr int W = 4;
};

constexpr int kRows = 4;        // rows per register block
constexpr int kUnroll = 2;      // code vectors per step of the large-d kernel
constexpr int kCodeStep = 16;   // Kp is a multiple of this (= kUnroll * 8 floats = kUnroll * 2 * 4 doubles)

template <typename T>
static inline typename Vec<T>::V splat(T s) {
  typename Vec<T>::V v;
  for (int i = 0; i < Vec<T>::W; ++i) v[i] = s;
  return v;
}

template <typename T>
static inline typename Vec<T>::V load(const T* p) {
  typename Vec<T>::V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Lane-wise (best, index) -> the row's answer: the smallest value, lowest index among equal values. Branch-free
// butterfly reductions (best values are never NaN: they only take values that compared smaller).
static inline int64_t reduce_lanes(const Vec<float>::V& best, const Vec<float>::I& idx) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  V m = best, t;
  t = __builtin_shuffle(m, I{4, 5, 6, 7, 0, 1, 2, 3});
  m = t < m ? t : m;
  t = __builtin_shuffle(m, I{2, 3, 0, 1, 6, 7, 4, 5});
  m = t < m ? t : m;
  t = __builtin_shuffle(m, I{1, 0, 3, 2, 5, 4, 7, 6});
  m = t < m ? t : m;
  I big = idx - idx + 0x7fffffff;
  I k = best == m ? idx : big, u;
  u = __builtin_shuffle(k, I{4, 5, 6, 7, 0, 1, 2, 3});
  k = u < k ? u : k;
  u = __builtin_shuffle(k, I{2, 3, 0, 1, 6, 7, 4, 5});
  k = u < k ? u : k;
  u = __builtin_shuffle(k, I{1, 0, 3, 2, 5, 4, 7, 6});
  k = u < k ? u : k;
  return k[0];
}
static inline int64_t reduce_lanes(const Vec<double>::V& best, const Vec<double>::I& idx) {
  typedef Vec<double>::V V;
  typedef Vec<double>::I I;
  V m = best, t;
  t = __builtin_shuffle(m, I{2, 3, 0, 1});
  m = t < m ? t : m;
  t = __builtin_shuffle(m, I{1, 0, 3, 2});
  m = t < m ? t : m;
  I big = idx - idx + 0x7fffffffffffffffLL;
  I k = best == m ? idx : big, u;
  u = __builtin_shuffle(k, I{2, 3, 0, 1});
  k = u < k ? u : k;
  u = __builtin_shuffle(k, I{1, 0, 3, 2});
  k = u < k ? u : k;
  return k[0];
}

// min(a, b) lane-wise where a < b, else b (so a NaN a never replaces b): vminps/vminpd on AVX2.
#ifdef PQ_KERNEL_AVX2
static inline Vec<float>::V vmin_isa(const Vec<float>::V& a, const Vec<float>::V& b) {
  return __builtin_ia32_minps256(a, b);
}
static inline Vec<double>::V vmin_isa(const Vec<double>::V& a, const Vec<double>::V& b) {
  return __builtin_ia32_minpd256(a, b);
}
#endif
template <typename T>
static inline typename Vec<T>::V vmin(const typename Vec<T>::V& a, const typename Vec<T>::V& b,
                                      const typename Vec<T>::I& a_lt_b) {
#ifdef PQ_KERNEL_AVX2
  (void)a_lt_b;
  return vmin_isa(a, b);
#else
  return a_lt_b ? a : b;
#endif
}

// Small d (compile-time D): the D codebook vectors of a code step are loaded once and used by kRows rows.
template <typename T, int D, bool COS>
static void assign_small_d(const T* xs, int64_t rows, const T* cbT, int64_t Kp, int64_t* out) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  constexpr int W = Vec<T>::W;
  constexpr int R = kRows;
  I lane;
  for (int i = 0; i < W; ++i) lane[i] = i;
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    V xb[R][D];
    V best[R];
    I bidx[R];
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < D; ++j) xb[r][j] = splat<T>(xs[(r0 + r) * D + j]);
      best[r] = splat<T>(__builtin_inf());
      bidx[r] = lane - lane;
    }
    I kv = lane;
    for (int64_t k = 0; k < Kp; k += W) {
      V c[D];
      for (int j = 0; j < D; ++j) c[j] = load<T>(cbT + j * Kp + k);
      for (int r = 0; r < R; ++r) {
        V acc;
        if (COS) {
          acc = -(c[0] * xb[r][0]);
          for (int j = 1; j < D; ++j) acc -= c[j] * xb[r][j];
        } else {
          V diff = c[0] - xb[r][0];
          acc = diff * diff;
          for (int j = 1; j < D; ++j) {
            diff = c[j] - xb[r][j];
            acc += diff * diff;
          }
        }
        const I m = acc < best[r];
        best[r] = vmin<T>(acc, best[r], m);
        bidx[r] = m ? kv : bidx[r];
      }
      kv += W;
    }
    for (int r = 0; r < R; ++r) out[r0 + r] = reduce_lanes(best[r], bidx[r]);
  }
}

// Any d (run time): kRows x kUnroll accumulators, the d loop inside, codebook vectors shared by the rows.
template <typename T, bool COS>
static void assign_large_d(const T* xs, int64_t rows, int64_t d, const T* cbT, int64_t Kp, int64_t* out) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  constexpr int W = Vec<T>::W;
  constexpr int R = kRows;
  constexpr int U = kUnroll * (8 / W);  // 2 vectors of floats, 4 of doubles: 16 codes per step
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
    for (int r = 0; r < R; ++r) out[r0 + r] = reduce_lanes(best[r], bidx[r]);
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

}  // namespace PQ_KERNEL_NS
}  // namespace cpu
}  // namespace pqgan
