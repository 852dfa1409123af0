"""CPU timing of the native kernel (backend "cpu") against faiss-cpu's ProductQuantizer.compute_codes.

    python benchmarks/bench_native_cpu.py [--n 8192] [--reps 7] [--threads T] [S,d,K ...]

Prints min and median wall time (ms) per contender, fp32, N rows. faiss is skipped when not installed or K is not a
power of two. Default shapes: PQGAN-F8 (64,2,512), (16,16,512), (8,32,256).
"""
import argparse
import statistics
import time

import numpy as np
import torch

import pqgan_kernels


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shapes", nargs="*", default=["64,2,512", "16,16,512", "8,32,256"])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    try:
        import faiss
    except ImportError:
        faiss = None
    if args.threads:
        torch.set_num_threads(args.threads)
        if faiss is not None:
            faiss.omp_set_num_threads(args.threads)
    print(f"N={args.n} threads={torch.get_num_threads()} backends={pqgan_kernels.available_backends()}")
    for shape in args.shapes:
        S, d, K = map(int, shape.split(","))
        g = torch.Generator().manual_seed(0)
        x, cb = torch.randn(args.n, S * d, generator=g), torch.randn(S, K, d, generator=g)
        native = timed(lambda: torch.ops.pqgan_native.pq_assign(x, cb, False), args.reps)
        line = f"S={S:3d} d={d:3d} K={K:5d}  native {native[0]:8.1f} min {native[1]:8.1f} med"
        if faiss is not None and K & (K - 1) == 0:
            pq = faiss.ProductQuantizer(S * d, S, int(np.log2(K)))
            faiss.copy_array_to_vector(cb.numpy().reshape(-1), pq.centroids)
            xn = x.numpy()
            ref = timed(lambda: pq.compute_codes(xn), args.reps)
            line += f" | faiss {ref[0]:8.1f} min {ref[1]:8.1f} med"
            _, idx = torch.ops.pqgan_native.pq_assign(x, cb, False)
            agree = (torch.from_numpy(pq.compute_codes(xn).astype(np.int64)) == idx).double().mean().item() \
                if K == 256 else float("nan")
            if K == 256:
                line += f" (codes agree {agree:.4%})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
