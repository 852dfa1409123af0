"""Benchmarks of the PQ kernels and layer: a package, run from the repository root with ``python -m``.

    python -m benchmarks.bench_pq [...]            # the benchmark proper (``make bench``): pqgan vs naive, peers
    python -m benchmarks.bench_native_cpu [...]    # backend "cpu" against faiss / torch.compile / naive, one process
    python -m benchmarks.readme_table REPORT.json  # the README's performance table from a bench_pq report

Modules of the benchmark proper: bench_pq.py (driver), configs.py, contenders.py, naive_quantizer.py (the naive
baseline: ``pq_assign_naive`` and ``NaiveProductQuantizer``), timing.py, readme_table.py, bench_native_cpu.py.
Kept apart, in their own sub-packages: ``benchmarks.study`` (the PQ-vs-VQ training study) and ``benchmarks.demos``
(the latent-diffusion demo). Imports between these modules are package-relative: nothing edits ``sys.path``.
"""
