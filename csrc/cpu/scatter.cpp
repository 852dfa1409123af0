// pq_ema_stats and pq_codebook_grad (CPU; schemas in ../ops.cpp): a scatter-add per code, each sum accumulated over
// the rows of a row part in order, the parts then added in a fixed order; the parts depend on the shapes only, so
// the sums are deterministic and independent of the thread count (see scatter_cpu_impl). One parallel region of
// at::parallel_for (OpenMP in the usual torch build; it honours torch.set_num_threads). d = sub-dimension, D = S*d.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "scatter_ops.h"

namespace pqgan::cpu {
namespace {

constexpr int64_t kStatChunk = 16;     // coordinates per scatter work unit
constexpr int64_t kMergeChunk = 1 << 12;  // output elements (or slots) per merge chunk

// dst[0 .. lanes of V) += src[...]: one unaligned vector load, add and store.
template <typename V>
inline void add_vector(float* dst, const float* src) {
  V a, b;
  __builtin_memcpy(&a, dst, sizeof(a));
  __builtin_memcpy(&b, src, sizeof(b));
  a += b;
  __builtin_memcpy(dst, &a, sizeof(a));
}

// dst[0 .. n) += src[0 .. n), converted to T; fp32 into fp32 by 4- and 2-lane vectors (the compiler does not
// vectorise the plain loop, since dst and src may alias: S16 d16 statistics 0.80 -> 0.48 ms).
template <typename T, typename scalar_t>
inline void add_into(T* dst, const scalar_t* src, int64_t n) {
  int64_t j = 0;
  if constexpr (std::is_same<T, float>::value && std::is_same<scalar_t, float>::value) {
    typedef float F4 __attribute__((vector_size(16)));
    typedef float F2 __attribute__((vector_size(8)));
    for (; j + 4 <= n; j += 4) add_vector<F4>(dst + j, src + j);
    for (; j + 2 <= n; j += 2) add_vector<F2>(dst + j, src + j);
  }
  for (; j < n; ++j) dst[j] += static_cast<T>(src[j]);
}

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
        add_into(sums_p + (s * K + k) * kd, xrow + s * kd, kd);
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
      add_into(sums_p + (s * K + k) * d + j0, xrow + s * d + j0, j1 - j0);
      if (COUNTS && c == 0) counts_p[s * K + k] += T(1);
      if (++c == nchunks) {
        c = 0;
        ++s;
      }
    }
  }
  return true;
}

// fp32 sums for d <= 3 (and the counts) as one 16-byte slot per (subspace, code) -- lanes 0 .. kd - 1 the sums,
// lane 3 the count -- so a (row, subspace) is one 16-byte read-modify-write instead of two (sums, counts), and
// the outputs are written once, by write_slots, instead of zeroed and then added into. Rows [n0, n1), subspaces
// [u0, u1) into table (S * K slots, slot s * K + k), whose slots [u0 * K, u1 * K) are zeroed first. Per (subspace,
// code) the rows are added in order from n0, so a slot holds the bits of scatter_rows' sums.
typedef float Slot __attribute__((vector_size(16)));
template <int kd, typename index_t>
bool scatter_rows_slots(const float* vp, const index_t* ip, int64_t n0, int64_t n1, int64_t S, int64_t K, int64_t u0,
                        int64_t u1, Slot* table) {
  static_assert(kd >= 1 && kd <= 3, "the sums and the count fit one 4-float slot");
  typedef float F2 __attribute__((vector_size(8)));
  std::fill(table + u0 * K, table + u1 * K, Slot{0.f, 0.f, 0.f, 0.f});
  for (int64_t n = n0; n < n1; ++n) {
    const index_t* irow = ip + n * S;
    const float* xrow = vp + n * kd * S;
    for (int64_t s = u0; s < u1; ++s) {
      const int64_t k = static_cast<int64_t>(irow[s]);
      if (static_cast<uint64_t>(k) >= static_cast<uint64_t>(K)) return false;
      const float* x = xrow + kd * s;
      Slot add;
      if constexpr (kd == 2) {  // one 8-byte load (a partial memcpy into a 16-byte vector stalls store forwarding)
        F2 v;
        __builtin_memcpy(&v, x, sizeof(v));
        add = __builtin_shufflevector(v, F2{0.f, 1.f}, 0, 1, 2, 3);
      } else {
        add = Slot{x[0], kd > 1 ? x[1] : 0.f, kd > 2 ? x[2] : 0.f, 1.f};
      }
      table[s * K + k] += add;
    }
  }
  return true;
}

// Slots [i0, i1) of the parts' tables (parts tables of `slots` slots each) added in part order and written out as
// sums (slots, kd) and counts (slots).
template <int kd>
void write_slots(const Slot* tables, int64_t parts, int64_t slots, int64_t i0, int64_t i1, float* sums,
                 float* counts) {
  for (int64_t i = i0; i < i1; ++i) {
    Slot acc = tables[i];
    for (int64_t p = 1; p < parts; ++p) acc += tables[p * slots + i];
    for (int j = 0; j < kd; ++j) sums[i * kd + j] = acc[j];
    if (counts != nullptr) counts[i] = acc[3];
  }
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

// A busy-wait step: waiting on other threads' tasks of a few microseconds (sleeping would cost a wake-up, ~50 us).
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A zeroed buffer of n elements at p: one memset in this thread up to 1 MiB (a parallel fill would wake the thread
// pool, which costs more than zeroing a few hundred KiB), else at::parallel_for.
template <typename T>
void zero_fill(T* p, int64_t n) {
  if (n * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 20)) {
    std::memset(p, 0, n * sizeof(T));
    return;
  }
  at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t b, int64_t e) { std::memset(p + b, 0, (e - b) * sizeof(T)); });
}

// Scratch memory for n elements: a buffer kept by the calling thread between calls when n is at most kScratchBytes
// (a fresh one each call costs its page faults: ~0.1 ms per MiB here), else a fresh tensor held by `fresh`.
constexpr int64_t kScratchBytes = int64_t(8) << 20;
template <typename T>
T* scratch(int64_t n, at::Tensor& fresh, const at::TensorOptions& opts) {
  thread_local std::vector<unsigned char> kept;
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  if (bytes > kScratchBytes) {
    fresh = at::empty({bytes}, opts.dtype(at::kByte));
    return reinterpret_cast<T*>(fresh.data_ptr());
  }
  if (static_cast<int64_t>(kept.size()) < bytes + 64) kept.resize(bytes + 64);
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(kept.data()) + 63) & ~uintptr_t(63));
}

// The number of row parts (each accumulated into its own output, the parts then added in order): a function of the
// shapes only, never of the thread count, so the sums are the same bits with any number of threads. A part reads
// its rows whole and in order (contiguous memory; splitting each row between threads instead costs ~40 % of the read
// rate); it must be long enough that its output -- written or zeroed, then read by the merge -- stays small next to
// its rows: >= kStatPartRows rows and >= kPartInputRatio times its output's elements.
constexpr int64_t kStatParts = 8;
constexpr int64_t kStatPartRows = 1024;
constexpr int64_t kPartInputRatio = 8;
int64_t row_parts(int64_t N, int64_t D, int64_t out_elems) {
  const int64_t by_size = N * D / (kPartInputRatio * std::max<int64_t>(1, out_elems));
  return std::max<int64_t>(1, std::min<int64_t>({kStatParts, N / kStatPartRows, by_size}));
}

// Runs task(t) for t in [0, tasks) and then, once all of them are done, chunk(c) for c in [0, chunks), in one
// parallel region: the threads take tasks and then chunks from shared counters. Only tasks already taken, hence
// running, are waited for (spinning: sleeping would cost a wake-up), so this cannot deadlock whatever number of
// threads (one included) runs the region. task returns false at a bad index: the chunks are then skipped and
// this returns false.
template <typename Task, typename Chunk>
bool run_two_phases(int64_t tasks, const Task& task, int64_t chunks, const Chunk& chunk) {
  std::atomic<int64_t> next_task{0}, done{0}, next_chunk{0};
  std::atomic<bool> bad{false};
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  at::parallel_for(0, std::min(threads, std::max(tasks, chunks)), 1, [&](int64_t, int64_t) {
    for (int64_t t; (t = next_task.fetch_add(1)) < tasks;) {
      if (!bad.load(std::memory_order_relaxed) && !task(t)) bad = true;
      done.fetch_add(1, std::memory_order_release);
    }
    if (chunks == 0) return;
    while (done.load(std::memory_order_acquire) < tasks) spin_pause();
    if (bad.load(std::memory_order_relaxed)) return;
    for (int64_t c; (c = next_chunk.fetch_add(1)) < chunks;) chunk(c);
  });
  return !bad;
}

// Outputs at least as large as the input (K >= N) and larger than the L2 (e.g. plain VQ with a large codebook and a
// wide code: 16 MiB of sums at d = 256, K = 16384): the rows sorted by code per subspace (sort_by_code, a stable
// counting sort), then every output row written once (write_sorted): its rows added in order into zeros, or zeros --
// the bits of the plain scatter over one row part, with no zeroing pass and no read-modify-write of a table larger
// than the caches (VQ d256: 0.79 -> 0.66 ms).
//
// Rows of subspace s by code: on return, the rows n with indices[n, s] = k are order[bounds[k] .. bounds[k + 1]),
// in increasing n (bounds: K + 2 entries, order: N). Returns false at the first index outside [0, K).
constexpr int64_t kSortedMinBytes = int64_t(2) << 20;  // smaller outputs stay in the L2: the plain scatter
template <typename index_t>
bool sort_by_code(const index_t* ip, int64_t N, int64_t S, int64_t K, int64_t s, int64_t* bounds, int64_t* order) {
  std::fill(bounds, bounds + K + 2, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t k = static_cast<int64_t>(ip[n * S + s]);
    if (static_cast<uint64_t>(k) >= static_cast<uint64_t>(K)) return false;
    ++bounds[k + 2];
  }
  for (int64_t k = 2; k < K + 2; ++k) bounds[k] += bounds[k - 1];  // bounds[k + 1] = first row slot of code k
  for (int64_t n = 0; n < N; ++n) order[bounds[static_cast<int64_t>(ip[n * S + s]) + 1]++] = n;
  return true;  // bounds[k + 1] = one past the last row slot of code k
}

// Codes [k0, k1) of subspace s from its sorted rows: sums (K, d) and counts (K) of that subspace, zeroed by one
// memset per chunk (most codes have no row when K >= N). (Non-temporal stores measured no faster.)
template <typename scalar_t, typename T>
void write_sorted(const scalar_t* vp, int64_t D, int64_t d, int64_t s, int64_t k0, int64_t k1, const int64_t* bounds,
                  const int64_t* order, T* sums, T* counts) {
  std::memset(sums + k0 * d, 0, (k1 - k0) * d * sizeof(T));
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t r = bounds[k]; r < bounds[k + 1]; ++r) add_into(sums + k * d, vp + order[r] * D + s * d, d);
    if (counts != nullptr) counts[k] = T(bounds[k + 1] - bounds[k]);
  }
}

// sums[s, k, :] = sum of values[n, s*d:(s+1)*d] over the rows n with indices[n, s] = k, in order of n within a row
// part, the parts added in order; counts[s, k] = the number of such rows (when counts is defined). sums and counts
// come uninitialised: every element is written here. Three ways, the same bits: slot tables (fp32, d <= 3), the
// rows sorted by code (outputs at least as large as the input), the plain scatter (the rest).
template <typename scalar_t, typename T, typename index_t>
void scatter_cpu_impl(const at::Tensor& values, const at::Tensor& indices, at::Tensor& sums, at::Tensor* counts) {
  const int64_t N = indices.size(0), S = indices.size(1), K = sums.size(1), d = sums.size(2), D = S * d;
  const scalar_t* vp = values.data_ptr<scalar_t>();
  const index_t* ip = indices.data_ptr<index_t>();
  T* sp = sums.data_ptr<T>();
  T* cp = counts ? counts->data_ptr<T>() : nullptr;
  // Scatter tasks are (row part p, range of work units), a unit being (s, coordinate chunk) in memory order: a task
  // walks its rows in order and reads one contiguous piece of each row into part p's output (part 0: sums /
  // counts; the others: partial buffers). Threads beyond the parts split the units, which never changes a sum.
  const int64_t nchunks = (d + kStatChunk - 1) / kStatChunk;
  const int64_t units = S * nchunks;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_part = S * K * d;
  const int64_t parts = row_parts(N, D, per_part);
  const int64_t groups = std::min<int64_t>(units, (threads + parts - 1) / parts);
  const int64_t stride = per_part + (cp ? S * K : 0);
  // fp32 sums with d <= 3: slot tables (scatter_rows_slots), one per part, when a task's table fits the L2 (1 MiB)
  // and all of them the scratch memory; the merge then writes every output element.
  bool slots = false;
  if constexpr (std::is_same<scalar_t, float>::value && std::is_same<T, float>::value)
    slots = d <= 3 && (units + groups - 1) / groups * K * 16 <= (int64_t(1) << 20) &&
            parts * S * K * 16 <= kScratchBytes;
  // scatter task t: row part p (rows [n0, n1)), units [u0, u1)
  struct PartTask {
    int64_t p, n0, n1, u0, u1;
  };
  auto part_task = [&](int64_t t) {
    const int64_t p = t / groups, g = t % groups;
    return PartTask{p, N * p / parts, N * (p + 1) / parts, units * g / groups, units * (g + 1) / groups};
  };
  at::Tensor fresh;
  bool ok = false;
  if (!slots && parts == 1 && K >= N && per_part * static_cast<int64_t>(sizeof(T)) > kSortedMinBytes) {
    int64_t* bounds = scratch<int64_t>(S * (K + 2 + N), fresh, sums.options());
    int64_t* order = bounds + S * (K + 2);
    const int64_t codes_per_chunk = std::max<int64_t>(1, 4096 / d);  // ~16 KiB of fp32 output per chunk
    const int64_t code_chunks = (K + codes_per_chunk - 1) / codes_per_chunk;
    ok = run_two_phases(
        S, [&](int64_t s) { return sort_by_code(ip, N, S, K, s, bounds + s * (K + 2), order + s * N); },
        S * code_chunks, [&](int64_t c) {
          const int64_t s = c / code_chunks, k0 = c % code_chunks * codes_per_chunk;
          write_sorted(vp, D, d, s, k0, std::min(K, k0 + codes_per_chunk), bounds + s * (K + 2), order + s * N,
                       sp + s * K * d, cp == nullptr ? nullptr : cp + s * K);
        });
  } else if (slots) {
    if constexpr (std::is_same<scalar_t, float>::value && std::is_same<T, float>::value) {
      Slot* tables = scratch<Slot>(parts * S * K, fresh, sums.options());
      ok = run_two_phases(
          parts * groups, [&](int64_t t) {
            const PartTask a = part_task(t);
            Slot* table = tables + a.p * S * K;
            return d == 1   ? scatter_rows_slots<1>(vp, ip, a.n0, a.n1, S, K, a.u0, a.u1, table)
                   : d == 2 ? scatter_rows_slots<2>(vp, ip, a.n0, a.n1, S, K, a.u0, a.u1, table)
                            : scatter_rows_slots<3>(vp, ip, a.n0, a.n1, S, K, a.u0, a.u1, table);
          },
          (S * K + kMergeChunk - 1) / kMergeChunk, [&](int64_t c) {
            const int64_t i0 = c * kMergeChunk, i1 = std::min(S * K, i0 + kMergeChunk);
            if (d == 1) write_slots<1>(tables, parts, S * K, i0, i1, sp, cp);
            else if (d == 2) write_slots<2>(tables, parts, S * K, i0, i1, sp, cp);
            else write_slots<3>(tables, parts, S * K, i0, i1, sp, cp);
          });
    }
  } else {
    // The plain scatter adds into zeroed outputs (part 0) and zeroed partial buffers (the others), which the
    // merge adds in part order. A part's buffers are zeroed by the task that fills them when one task covers the
    // whole part (then in its own cache, and in parallel), else here.
    T* partial_p = scratch<T>((parts - 1) * stride, fresh, sums.options());
    const bool zero_in_task = groups == 1;
    if (!zero_in_task) {
      zero_fill(sp, per_part);
      if (cp) zero_fill(cp, S * K);
      zero_fill(partial_p, (parts - 1) * stride);
    }
    ok = run_two_phases(
        parts * groups, [&](int64_t t) {
          const PartTask a = part_task(t);
          T* sums_p = a.p == 0 ? sp : partial_p + (a.p - 1) * stride;
          T* counts_p = cp == nullptr ? nullptr : (a.p == 0 ? cp : sums_p + per_part);
          if (zero_in_task) {
            std::memset(sums_p, 0, per_part * sizeof(T));
            if (counts_p) std::memset(counts_p, 0, S * K * sizeof(T));
          }
          return cp != nullptr
                     ? scatter_rows_any_d<true>(vp, ip, a.n0, a.n1, S, K, d, a.u0, a.u1, sums_p, counts_p)
                     : scatter_rows_any_d<false>(vp, ip, a.n0, a.n1, S, K, d, a.u0, a.u1, sums_p, counts_p);
        },
        parts > 1 ? (stride + kMergeChunk - 1) / kMergeChunk : 0, [&](int64_t c) {
          // elements [i0, i1) of part 0's sums and counts (one after the other), plus the partials in part order
          const int64_t i0 = c * kMergeChunk, i1 = std::min(stride, i0 + kMergeChunk);
          for (int64_t p = 1; p < parts; ++p) {
            const T* part = partial_p + (p - 1) * stride;
            if (i0 < per_part) add_into(sp + i0, part + i0, std::min(i1, per_part) - i0);
            if (i1 > per_part)
              add_into(cp + std::max<int64_t>(0, i0 - per_part), part + std::max(i0, per_part),
                       i1 - std::max(i0, per_part));
          }
        });
  }
  TORCH_CHECK_VALUE(ok, "indices has values outside [0, ", K, ")");
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
