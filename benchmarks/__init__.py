"""Benchmarks of the PQ kernels and layer: a package, run from the repository root with ``python -m``.

    python -m benchmarks.bench_pq [...]            # the benchmark proper (``make bench``): pqgan vs naive, peers
    python -m benchmarks.bench_native_cpu [...]    # backend "cpu" against faiss / torch.compile / naive, one process
    python -m benchmarks.readme_table REPORT.json  # the README's performance table from a bench_pq report

Modules of the benchmark proper: bench_pq.py (driver), configs.py, contenders.py, naive_quantizer.py (the naive
baseline: ``pq_assign_naive`` and ``NaiveProductQuantizer``), timing.py, readme_table.py, bench_native_cpu.py.
Kept apart, in their own sub-packages: ``benchmarks.study`` (the PQ-vs-VQ training study) and ``benchmarks.demos``
(the latent-diffusion demo). Imports between these modules are package-relative: nothing edits ``sys.path``.
"""
import os

# faiss-cpu ships its own libgomp: with two OpenMP runtimes in one process, each one's idle workers spin for a
# while after every parallel region and take the cores the other needs (measured: pqgan 7x and faiss 1.5-3x
# slower at 2 threads). Passive waiting, set before either runtime starts, gives every contender the same footing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
