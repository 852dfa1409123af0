"""CPU timing of backend "cpu" against faiss-cpu, torch.compile(naive) and the naive expansion, in ONE process.

    python -m benchmarks.bench_native_cpu [--threads 2] [--reps 5] [--compile/--no-compile] [--no-stats]
                                          [name=N,S,d,K ...]

Every contender runs on the same data (fp32, seeded randn) in this process, so the ratios hold on a shared,
noisy machine even when absolute times do not. Per shape it prints the median wall time (ms) of
  - pqgan cpu:      pqgan_kernels.pq_assign(x, cb, backend="cpu")
  - faiss:          S = 1: IndexFlatL2.add(codebook) + search(x, k=1); S > 1: ProductQuantizer.compute_codes
                    (codes only, no unpacking) -- faiss is skipped for S > 1 when K is not a power of two
  - torch.compile:  torch.compile(naive_quantizer.pq_assign_naive) (compile time excluded)
  - naive:          naive_quantizer.pq_assign_naive (the full (N, S, K) expansion |x|^2 - 2 x.c + |c|^2)
the ratios "x faiss" / "x compile" / "x naive" (their time / ours: > 1 means we are faster), and the fraction of the
machine's arithmetic limit our time reaches. The limit is measured, not assumed: at start-up the benchmark times
torch's own SGEMM (torch.mm, 2048 x 2048 x 2048, fp32, the same threads) and takes its rate as what the cores
sustain -- R GFLOP/s, i.e. R / 2 G fp32 lane-FMAs per second. Per shape, by the path the "cpu" backend takes:
  - "sgemm" (l2 where native_backend.uses_gemm(d, K)): limit = 2 N S K d flops / R;
  - "expanded" (l2, fp32 inputs, d <= 4, AVX2/AVX-512 copy): d FMAs + one min = d + 1 lane ops per (row, code)
    pair, limit = N S K (d + 1) / (R / 2);
  - "direct" (the direct-formula scan, all else): d subtractions + d multiply(-add)s + one min = 2d + 1 lane ops
    per pair, limit = N S K (2d + 1) / (R / 2);
  - "grid" (l2, fp32 inputs, d <= 2, from native_backend.GRID_MIN_ROWS rows): the cell-grid search scores only
    ~20-30 of the K codes per row (csrc/cpu/assign_grid.h), so no scan of all K codes bounds it; the limit shown
    is the "expanded" one, the fastest a full scan could be, and the fraction can exceed 100 %.
The lane-op models count one issue slot per vector lane operation at the rate the SGEMM sustains (loads, index
book-keeping and the exact re-check are not counted, so 100 % is out of reach); --sgemm-gflops overrides R.
Then the EMA statistics and the codebook gradient (pq_ema_stats / pq_codebook_grad, backend "cpu") with the GB/s
they reach (bytes = x read + indices read + (counts and) sums written once), that rate as a fraction of the
machine's measured streaming bandwidth (a 256 MiB tensor copy, same threads), and the naive one-hot version.
Timing: one warm-up call, then --reps timed calls (the statistics: at least STATS_MIN_REPS); the median is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# OMP_WAIT_POLICY=PASSIVE is set by benchmarks/__init__.py, before torch or faiss load an OpenMP runtime.

import torch  # noqa: E402

import pqgan_kernels  # noqa: E402
from pqgan_kernels import native_backend, reference  # noqa: E402

from .naive_quantizer import naive_ema_stats, pq_assign_naive  # noqa: E402

# name=S,d,K,N: the #15 table. F8 = PQGAN-F8, VQ d256 = taming VQGAN's codebook, VQ d8 = LlamaGen's.
SHAPES = {"f8": (64, 2, 512, 8192), "f16": (64, 2, 128, 8192), "s16d16": (16, 16, 512, 8192),
          "s8d32": (8, 32, 256, 8192), "vq-d256": (1, 256, 16384, 2048), "vq-d8": (1, 8, 16384, 8192)}


def timed(fn, reps: int) -> tuple[float, float]:
    """(median ms, min ms) of reps calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def sgemm_gflops(reps: int = 5) -> float:
    """torch.mm's best fp32 rate (GFLOP/s) on 2048^3 with the current threads: the machine's measured FMA rate."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    best = min(timed(lambda: torch.mm(a, b, out=out), 1)[1] for _ in range(reps))
    return 2 * n ** 3 / (best * 1e-3) / 1e9


def assign_path(x: torch.Tensor, cb: torch.Tensor) -> str:
    """Which kernel the "cpu" backend runs for an fp32 l2 assignment: "sgemm", "grid", "expanded" or "direct"."""
    d, K = cb.shape[2], cb.shape[1]
    if native_backend.uses_gemm(d, K, native_backend.fused_scoring(x, cb)):
        return "sgemm"
    if torch.ops.pqgan_native.cpu_isa() == "generic":
        return "direct"
    if native_backend.uses_grid(x.shape[0], d):  # csrc/cpu/assign.cpp: grid tables, fp32 inputs
        return "grid"
    return "expanded" if d <= 4 else "direct"  # csrc/cpu/assign.cpp use_expanded, fp32 inputs


def limit_ms(path: str, N: int, S: int, d: int, K: int, gflops: float) -> float:
    """The arithmetic limit of one call at R = gflops (see the module docstring), in ms."""
    if path == "sgemm":
        return 2 * N * S * K * d / (gflops * 1e9) * 1e3
    lane_ops = d + 1 if path in ("expanded", "grid") else 2 * d + 1
    return N * S * K * lane_ops / (gflops / 2 * 1e9) * 1e3


def faiss_assign(faiss, x: torch.Tensor, cb: torch.Tensor):
    """A callable running faiss's search for the shape, or a string saying why faiss is skipped."""
    import numpy as np
    S, K, d = cb.shape
    xn = x.numpy()
    if S == 1:
        index = faiss.IndexFlatL2(d)
        index.add(cb[0].numpy())
        return lambda: index.search(xn, 1)
    if K & (K - 1):
        return "K not a power of two"
    pq = faiss.ProductQuantizer(S * d, S, int(np.log2(K)))
    faiss.copy_array_to_vector(cb.numpy().reshape(-1), pq.centroids)
    return lambda: pq.compute_codes(xn)


def fmt_ratio(other, ours):
    return f"{other / ours:6.2f}x" if isinstance(other, float) else f"{'-':>7}"


def bench_assign(args, faiss):
    compiled = torch.compile(pq_assign_naive, dynamic=False) if args.compile else None
    if compiled is not None:
        import torch._dynamo as dynamo
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(64, getattr(dynamo.config, knob)))
    print(f"\n{'shape':10s} {'S':>3s} {'d':>4s} {'K':>6s} {'N':>5s} | {'pqgan':>8s} {'faiss':>8s} {'compile':>8s} "
          f"{'naive':>8s} | {'x faiss':>7s} {'x compile':>9s} {'x naive':>7s} | limit   frac")
    for name, (S, d, K, N) in args.shapes:
        g = torch.Generator().manual_seed(0)
        x, cb = torch.randn(N, S * d, generator=g), torch.randn(S, K, d, generator=g)
        ours = timed(lambda: pqgan_kernels.pq_assign(x, cb, backend="cpu"), args.reps)
        row = {"pqgan": ours[0]}
        fa = faiss_assign(faiss, x, cb) if faiss is not None else "not installed"
        row["faiss"] = timed(fa, args.reps)[0] if callable(fa) else None
        if compiled is not None:
            compiled(x, cb)  # compile outside the timing
            row["compile"] = timed(lambda: compiled(x, cb), args.reps)[0]
        else:
            row["compile"] = None
        row["naive"] = timed(lambda: pq_assign_naive(x, cb), max(1, min(args.reps, 5)))[0]
        kind = assign_path(x, cb)
        limit = limit_ms(kind, N, S, d, K, args.sgemm_gflops)
        print(f"{name:10s} {S:3d} {d:4d} {K:6d} {N:5d} | {ours[0]:8.1f} "
              + " ".join(f"{row[k]:8.1f}" if row[k] is not None else f"{'-':>8s}" for k in ("faiss", "compile",
                                                                                         "naive"))
              + f" | {fmt_ratio(row['faiss'], ours[0])} {fmt_ratio(row['compile'], ours[0]):>9s} "
                f"{fmt_ratio(row['naive'], ours[0])} | {limit:5.1f} {limit / ours[0]:5.0%} {kind}"
              + (f"  (faiss: {fa})" if not callable(fa) else ""), flush=True)


# The statistics take well under a millisecond: the median of at least this many calls (five would be at the
# mercy of one slow call on a shared machine).
STATS_MIN_REPS = 50


def copy_gbs(reps: int = 5) -> float:
    """The machine's streaming bandwidth with the current threads: bytes read + written by a 256 MiB tensor copy."""
    src = torch.randn(64 << 20)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), 1)[1] for _ in range(reps))
    return 2 * src.numel() * 4 / (best * 1e-3) / 1e9


def bench_stats(args):
    reps = max(args.reps, STATS_MIN_REPS)
    bandwidth = copy_gbs()
    print(f"\nmemory bandwidth (256 MiB tensor copy, {args.threads} threads): {bandwidth:.1f} GB/s; GB/s below count x "
          f"and indices read once and (counts and) sums written once; 'bw' = that rate / the copy's; "
          f"times: median of {reps}")
    print(f"{'stats':10s} {'S':>3s} {'d':>4s} {'K':>6s} {'N':>5s} | {'ema ms':>8s} {'GB/s':>6s} {'bw':>4s} "
          f"{'naive':>8s} {'x naive':>7s} | {'grad ms':>8s} {'GB/s':>6s} {'bw':>4s} {'x naive':>7s}")
    for name, (S, d, K, N) in args.shapes:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(N, S * d, generator=g)
        idx = torch.randint(0, K, (N, S), generator=g)
        ema = timed(lambda: pqgan_kernels.pq_ema_stats(x, idx, K, backend="cpu"), reps)[0]
        grad = timed(lambda: pqgan_kernels.pq_codebook_grad(x, idx, K, backend="cpu"), reps)[0]
        naive = timed(lambda: naive_ema_stats(x, idx, K), max(1, min(args.reps, 3)))[0] \
            if N * S * K <= 1 << 28 else None
        naive_grad = timed(lambda: reference.pq_codebook_grad(x, idx, K), reps)[0]
        io = x.numel() * 4 + idx.numel() * 8
        ema_gbs = (io + S * K * (d + 1) * 4) / ema / 1e6
        grad_gbs = (io + S * K * d * 4) / grad / 1e6
        naive_s = f"{naive:8.1f}" if naive is not None else f"{'-':>8s}"
        print(f"{name:10s} {S:3d} {d:4d} {K:6d} {N:5d} | {ema:8.2f} {ema_gbs:6.1f} {ema_gbs / bandwidth:4.0%} "
              f"{naive_s} {fmt_ratio(naive, ema)} | {grad:8.2f} {grad_gbs:6.1f} {grad_gbs / bandwidth:4.0%} "
              f"{fmt_ratio(naive_grad, grad)} "
              f"(vs reference index_add {naive_grad:.2f} ms)", flush=True)


def parse_shape(spec: str) -> tuple[str, tuple[int, int, int, int]]:
    """'name=S,d,K,N' or a key of SHAPES."""
    if spec in SHAPES:
        return spec, SHAPES[spec]
    name, _, dims = spec.partition("=")
    S, d, K, N = map(int, dims.split(","))
    return name, (S, d, K, N)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", nargs="*", default=list(SHAPES), help="keys of SHAPES or name=S,d,K,N")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile(naive)")
    parser.add_argument("--no-stats", dest="stats", action="store_false", help="skip the EMA statistics / grad")
    parser.add_argument("--sgemm-gflops", type=float, default=None,
                        help="the fp32 rate R behind the limits (default: measured with torch.mm at start-up)")
    args = parser.parse_args()
    args.shapes = [parse_shape(s) for s in args.shapes]
    try:
        import faiss
    except ImportError:
        faiss = None
    torch.set_num_threads(args.threads)
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    if pqgan_kernels.backend_info()["cpu"] != "available":  # also loads the native backend
        raise SystemExit(f"backend cpu unavailable: {pqgan_kernels.backend_info()['cpu']}")
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} cpu_isa={torch.ops.pqgan_native.cpu_isa()} torch_capability={cap} "
          f"faiss={getattr(faiss, '__version__', None)}")
    if args.sgemm_gflops is None:
        args.sgemm_gflops = sgemm_gflops()
    print(f"limits at R = {args.sgemm_gflops:.0f} GFLOP/s (torch.mm fp32, {args.threads} threads; "
          f"{args.sgemm_gflops / 2:.0f} G lane-FMA/s); times: median of {args.reps} (ms)")
    bench_assign(args, faiss)
    if args.stats:
        bench_stats(args)


if __name__ == "__main__":
    main()
