// pq_assign (CPU): the launcher over the micro-kernels of assign_kernel.h, the choice of their instruction-set copy,
// and the op cpu_isa (schemas in ../ops.cpp). Parallelised with at::parallel_for (OpenMP in the usual torch build;
// it honours torch.set_num_threads). d = sub-dimension, D = S*d.
//
// Tasks are (block of kBlockRows rows, range of subspaces). Per subspace, a task gathers its rows' sub-vectors into a
// small buffer in the compute type (fp16/bf16 are up-cast to fp32 here), runs the micro-kernel (assign_tiles.h)
// against the transposed codebook tile cbT[s] (d, Kp), writes the indices and copies the chosen codewords into
// quantized. Working memory: the (S, d, Kp) transposed codebooks plus kBlockRows*d per thread; no (N, K) buffer.
// l2, fp32, d <= kExpandedMaxD on the AVX2 / AVX-512 copies: the expanded-formula scan with its exact re-check runs
// instead, then the direct scan for the rows it leaves undecided (scan_expanded).
// l2, fp32, d <= 2 when the caller asks for it (grid = true; pqgan_kernels/native_backend.py decides by the number of
// rows): the cell-grid search of assign_grid.h instead (assign_grid_impl), tables built per call (assign_grid.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "assign_setup.h"
#include "cpu/assign_grid_build.h"
#include "cpu/assign_tiles.h"
#include "cpu/isa.h"

namespace pqgan::cpu {
namespace {

constexpr int64_t kBlockRows = 64;  // rows per task (a multiple of kTileRows)
// ... of the grid search: tasks of kGridGroup subspaces (their d = 2 sub-vectors: one 64-byte line per row of x)
// by kGridBlockRows rows, so that a subspace's table (~72 KiB at K = 512) serves that many rows from L2
constexpr int64_t kGridBlockRows = 4096;
constexpr int64_t kGridGroup = 8;
constexpr int64_t kGridSampleRows = 128;  // rows of a block queried first, to see whether the grid pays there

std::string cpu_isa() {
  switch (isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

template <typename T>
void assign_tile_dispatch(const T* xs, int64_t rows, int64_t d, const T* cbT, int64_t Kp, bool cosine, int64_t* out) {
  // The 64-byte copy only for d >= 5 (the register-blocked any-d kernel): measured per-thread CPU time on the
  // 2-core AVX-512 Xeon, it is ~17% faster there and 10-35% slower for d <= 4.
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

typedef void (*GridQueryFn)(const float* xs, int64_t rows, int64_t d, const GridView& grid, int32_t* scratch,
                            float* scratch_xy, int64_t* out);

// The cell-grid query of this process (AVX2 / AVX-512 copies; nullptr for the baseline ISA or other compilers).
GridQueryFn grid_query() {
#ifdef PQ_HAVE_ISA_COPIES
  switch (isa()) {
    case Isa::avx512: return avx512::assign_tile_grid;
    case Isa::avx2: return avx2::assign_tile_grid;
    default: return nullptr;
  }
#else
  return nullptr;
#endif
}

// The expanded scan's per-subspace inputs (see assign_tiles.h): ce (S, d + 1, Kpe), centres m (S, d), rc (S).
struct ExpandedCodebooks {
  at::Tensor ce, m, rc;
  int64_t Kpe = 0;
  float coefficient = 0.f;
};

// cb (S, K, d) contiguous, float or double -> (S, d, Kp) transposed, columns K..Kp-1 NaN. A plain loop (see below).
at::Tensor transposed_codebooks(const at::Tensor& cb, int64_t Kp) {
  const int64_t S = cb.size(0), K = cb.size(1), d = cb.size(2);
  at::Tensor cbT = at::empty({S, d, Kp}, cb.options());
  AT_DISPATCH_FLOATING_TYPES(cb.scalar_type(), "transposed_codebooks", [&] {
    const scalar_t* c = cb.data_ptr<scalar_t>();
    scalar_t* t = cbT.data_ptr<scalar_t>();
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j < d; ++j) {
        scalar_t* row = t + (s * d + j) * Kp;
        for (int64_t k = 0; k < K; ++k) row[k] = c[(s * K + k) * d + j];
        for (int64_t k = K; k < Kp; ++k) row[k] = std::numeric_limits<scalar_t>::quiet_NaN();
      }
  });
  return cbT;
}

// Plain loops, not torch ops: a dozen small ops cost ~0.5 ms per call on the 2-core box (each wakes the thread pool).
ExpandedCodebooks expanded_codebooks(const at::Tensor& cb, float coefficient) {  // cb (S, K, d) float contiguous
  const int64_t S = cb.size(0), K = cb.size(1), d = cb.size(2);
  ExpandedCodebooks e;
  e.Kpe = (K + kExpandedBlock - 1) / kExpandedBlock * kExpandedBlock;
  e.m = at::empty({S, d}, cb.options());
  e.rc = at::empty({S}, cb.options());
  e.ce = at::empty({S, d + 1, e.Kpe}, cb.options());
  const float* c = cb.data_ptr<float>();
  float* m = e.m.data_ptr<float>();
  float* rc = e.rc.data_ptr<float>();
  float* ce = e.ce.data_ptr<float>();
  for (int64_t s = 0; s < S; ++s) {
    const float* cs = c + s * K * d;
    for (int64_t j = 0; j < d; ++j) {  // the mean (any centre keeps the bound valid)
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += cs[k * d + j];
      m[s * d + j] = static_cast<float>(acc / K);
    }
    float* norm2 = ce + s * (d + 1) * e.Kpe;  // row 0: fl(|c'_k|^2), NaN padding; rows 1..d: -2 c'_k, 0 padding
    double r2 = 0;                            // max_k |c'_k|^2, in fp64
    for (int64_t k = 0; k < K; ++k) {
      float n2 = 0.f;
      double n2d = 0;
      for (int64_t j = 0; j < d; ++j) {
        const float cj = cs[k * d + j] - m[s * d + j];  // fl(c - m)
        n2 += cj * cj;
        n2d += static_cast<double>(cj) * cj;
        norm2[(1 + j) * e.Kpe + k] = -2.f * cj;
      }
      norm2[k] = n2;
      r2 = std::max(r2, n2d);
    }
    for (int64_t k = K; k < e.Kpe; ++k) {
      norm2[k] = std::numeric_limits<float>::quiet_NaN();
      for (int64_t j = 0; j < d; ++j) norm2[(1 + j) * e.Kpe + k] = 0.f;
    }
    rc[s] = static_cast<float>(std::sqrt(r2));
  }
  e.coefficient = coefficient;
  return e;
}

// The expanded-formula scan (l2, fp32, d <= kExpandedMaxD) of the AVX2 / AVX-512 copies for subspace s, then the
// direct scan for the rows it leaves at -1 (near-ties, no finite score): measured on the 2-core AVX-512 Xeon at F8
// (d = 2, K = 512) it takes half the time of the direct scan. xs (rows, d), readable (and padded with any finite
// rows) up to rows rounded up to kTileRows; out likewise sized.
void scan_expanded(const float* xs, int64_t rows, int64_t d, const float* cbTs, int64_t Kp, const ExpandedCodebooks& e,
                   int64_t s, int64_t* out) {
  const int64_t padded = (rows + kTileRows - 1) / kTileRows * kTileRows;
  const float* ce = e.ce.data_ptr<float>() + s * (d + 1) * e.Kpe;
  const float* m = e.m.data_ptr<float>() + s * d;
  const float rc = e.rc.data_ptr<float>()[s];
  if (isa() == Isa::avx512) avx512::assign_tile_expanded(xs, padded, d, cbTs, Kp, ce, e.Kpe, m, rc, e.coefficient, out);
  else avx2::assign_tile_expanded(xs, padded, d, cbTs, Kp, ce, e.Kpe, m, rc, e.coefficient, out);
  decide_marked_rows(xs, rows, d, cbTs, Kp, out);
}

// The grid's undecided rows (out[r] < 0, r < rows; xs (rows, d) of subspace s) decided by the expanded scan when
// its inputs are given (rows far from every code -- a codebook much smaller than the data -- would otherwise all
// take the direct scan, twice its cost), and what that leaves by the direct scan. tmp: (rows rounded up to
// kTileRows) * (d + 2) floats of scratch.
void decide_grid_rows(const float* xs, int64_t rows, int64_t d, const float* cbTs, int64_t Kp,
                      const ExpandedCodebooks* expanded, int64_t s, float* tmp, int64_t* out) {
  if (expanded == nullptr) return decide_marked_rows(xs, rows, d, cbTs, Kp, out);
  int64_t n = 0;
  int64_t* member = reinterpret_cast<int64_t*>(tmp + ((rows + kTileRows - 1) / kTileRows * kTileRows) * d);
  for (int64_t r = 0; r < rows; ++r)
    if (out[r] < 0) {
      std::memcpy(tmp + n * d, xs + r * d, d * sizeof(float));
      member[n++] = r;
    }
  if (n == 0) return;
  const int64_t padded = (n + kTileRows - 1) / kTileRows * kTileRows;
  for (int64_t i = n; i < padded; ++i) std::memcpy(tmp + i * d, tmp + (n - 1) * d, d * sizeof(float));
  std::vector<int64_t> decided(padded);
  scan_expanded(tmp, n, d, cbTs, Kp, *expanded, s, decided.data());
  for (int64_t i = 0; i < n; ++i) out[member[i]] = decided[i];
}

// x (N, D) scalar_t, cbT (S, d, Kp) T, cbx (S, K, d) scalar_t -> quantized (N, D) scalar_t, indices (N, S).
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
        bool decided = false;
        if constexpr (std::is_same<T, float>::value) {
          if (expanded != nullptr) {
            scan_expanded(buf.data(), rows, d, cbTp + s * d * Kp, Kp, *expanded, s, out.data());
            decided = true;
          }
        }
        if (!decided) assign_tile_dispatch<T>(buf.data(), padded, d, cbTp + s * d * Kp, Kp, cosine, out.data());
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

// The cell-grid search (assign_grid.h): x (N, D) scalar_t, cbT (S, kd, Kp) fp32, cbx (S, K, kd) scalar_t ->
// quantized, indices. Tasks are (group of kGridGroup subspaces, block of kGridBlockRows rows), group-major: the
// group's tables (~72 KiB each at K = 512) stay in L2 across its row blocks, and each task reads its rows' lines of
// x once (the group's sub-vectors are one 64-byte line per row at d = 2) into one buffer per subspace and writes
// the outputs row by row. Rows without a certificate get the expanded scan where its inputs are given, else (and
// for what it leaves) the direct scan (decide_grid_rows). A block whose first kGridSampleRows rows are over a
// quarter uncertified, and every block of a subspace without a table, takes the scan pq_assign runs without grid.
template <typename scalar_t, int kd>
void assign_grid_impl(const at::Tensor& x, const at::Tensor& cbT, const at::Tensor& cbx, const GridTables& grids,
                      const ExpandedCodebooks* expanded, at::Tensor& quantized, at::Tensor& indices) {
  const int64_t N = x.size(0), S = cbx.size(0), K = cbx.size(1), D = S * kd, Kp = cbT.size(2);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const float* cbTp = cbT.data_ptr<float>();
  const scalar_t* cbxp = cbx.data_ptr<scalar_t>();
  scalar_t* qp = quantized.data_ptr<scalar_t>();
  int64_t* ip = indices.data_ptr<int64_t>();
  const int64_t nblocks = (N + kGridBlockRows - 1) / kGridBlockRows, groups = (S + kGridGroup - 1) / kGridGroup;
  const int64_t ntasks = nblocks * groups;
  std::atomic<int64_t> next{0};
  const GridQueryFn query = grid_query();
  at::parallel_for(0, std::min<int64_t>(std::max<int64_t>(1, at::get_num_threads()), ntasks), 1,
                   [&](int64_t, int64_t) {
    std::vector<float> buf(kGridGroup * kGridBlockRows * kd);    // (group, rows, kd)
    std::vector<int64_t> out(kGridGroup * kGridBlockRows);       // (group, rows)
    std::vector<int32_t> scratch(kGridScratch(kGridBlockRows, K));
    std::vector<float> scratch_xy(kGridScratchXY(K));
    std::vector<float> undecided(kGridBlockRows * (kd + 2));  // decide_grid_rows' scratch
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) {
      const int64_t n0 = (t % nblocks) * kGridBlockRows, rows = std::min(kGridBlockRows, N - n0);
      const int64_t s0 = (t / nblocks) * kGridGroup, ns = std::min(kGridGroup, S - s0);
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* src = xp + (n0 + r) * D + s0 * kd;
        for (int64_t i = 0; i < ns; ++i)
          for (int j = 0; j < kd; ++j) buf[(i * kGridBlockRows + r) * kd + j] = static_cast<float>(src[i * kd + j]);
      }
      for (int64_t i = 0; i < ns; ++i) {
        float* xs = buf.data() + i * kGridBlockRows * kd;
        int64_t* o = out.data() + i * kGridBlockRows;
        const float* cbTs = cbTp + (s0 + i) * kd * Kp;
        if (const GridView* view = grids.view(s0 + i)) {
          // a sample first: when over a quarter of it has no certificate (data far from the codes), the grid
          // would mostly add its cost to the scan's, so the whole block takes the scan pq_assign runs without it
          const int64_t sample = std::min(rows, kGridSampleRows);
          query(xs, sample, kd, *view, scratch.data(), scratch_xy.data(), o);
          if (4 * std::count(o, o + sample, int64_t(-1)) <= sample) {
            query(xs + sample * kd, rows - sample, kd, *view, scratch.data(), scratch_xy.data(), o + sample);
            decide_grid_rows(xs, rows, kd, cbTs, Kp, expanded, s0 + i, undecided.data(), o);
            continue;
          }
        }
        const int64_t padded = (rows + kTileRows - 1) / kTileRows * kTileRows;  // <= kGridBlockRows
        std::fill(xs + rows * kd, xs + padded * kd, 0.f);
        if (expanded != nullptr) {  // the scan pq_assign runs without the grid
          scan_expanded(xs, rows, kd, cbTs, Kp, *expanded, s0 + i, o);
        } else {
          assign_tile_dispatch<float>(xs, padded, kd, cbTs, Kp, false, o);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        int64_t* irow = ip + (n0 + r) * S + s0;
        scalar_t* qrow = qp + (n0 + r) * D + s0 * kd;
        for (int64_t i = 0; i < ns; ++i) {
          const int64_t k = out[i * kGridBlockRows + r];
          irow[i] = k;
          for (int j = 0; j < kd; ++j) qrow[i * kd + j] = cbxp[((s0 + i) * K + k) * kd + j];
        }
      }
    }
  });
}

// bound_coefficient: pqgan_kernels/bound.py's for (d, "ieee", fp32) enables the expanded l2 scan (fp32, d <= 4); 0
// keeps every code on the direct formula. grid: the cell-grid search (assign_grid.h) for l2, fp32 and d <= 2 on the
// AVX2 / AVX-512 copies, in every subspace where its table is built (the caller decides when it pays: building the
// tables costs about as much as scanning ~1000 rows).
std::tuple<at::Tensor, at::Tensor> pq_assign_cpu(const at::Tensor& x_in, const at::Tensor& codebooks, bool cosine,
                                                 double bound_coefficient, bool grid) {
  check_assign_args(x_in, codebooks);
  check_device("pq_assign", x_in, at::kCPU);
  check_bound_coefficient("pq_assign", bound_coefficient, /*zero_allowed=*/true);
  const at::Tensor x = x_in.contiguous();
  AssignSetup a = assign_setup(x, codebooks, cosine);
  const int64_t S = a.cb.size(0), K = a.cb.size(1), d = a.cb.size(2);
  const int64_t Kp = (K + kTileCodes - 1) / kTileCodes * kTileCodes;
  const at::Tensor cbT = transposed_codebooks(a.cb, Kp);
  const bool fp32_l2 = !cosine && a.compute == at::kFloat && isa() != Isa::generic;
  std::optional<GridTables> grids;
  if (grid && fp32_l2 && d <= 2 && x.size(0) > 0 && grid_query() != nullptr)
    grids.emplace(a.cb.data_ptr<float>(), S, K, d);
  ExpandedCodebooks expanded;
  const bool use_expanded = fp32_l2 && bound_coefficient > 0 && d <= kExpandedMaxD;
  if (use_expanded) expanded = expanded_codebooks(a.cb, static_cast<float>(bound_coefficient));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pq_assign_cpu", [&] {
    if (grids && d == 1)
      assign_grid_impl<scalar_t, 1>(x, cbT, a.cbx, *grids, use_expanded ? &expanded : nullptr, a.quantized,
                                    a.indices);
    else if (grids)
      assign_grid_impl<scalar_t, 2>(x, cbT, a.cbx, *grids, use_expanded ? &expanded : nullptr, a.quantized,
                                    a.indices);
    else if (a.compute == at::kDouble)
      assign_cpu_impl<scalar_t, double>(x, cbT, a.cbx, cosine, nullptr, a.quantized, a.indices);
    else
      assign_cpu_impl<scalar_t, float>(x, cbT, a.cbx, cosine, use_expanded ? &expanded : nullptr, a.quantized,
                                       a.indices);
  });
  return {a.quantized, a.indices};
}

}  // namespace
}  // namespace pqgan::cpu

// cpu_isa has no tensor argument, so its one kernel is the CompositeImplicitAutograd one (what a def with a function
// registers), which the dispatcher also uses when no dispatch key applies.
TORCH_LIBRARY_IMPL(pqgan_native, CompositeImplicitAutograd, m) {
  m.impl("cpu_isa", &pqgan::cpu::cpu_isa);
}

TORCH_LIBRARY_IMPL(pqgan_native, CPU, m) {
  m.impl("pq_assign", &pqgan::cpu::pq_assign_cpu);
}
