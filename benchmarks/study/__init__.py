"""The PQ-vs-VQ training study (``python -m benchmarks.study.study_pq_vs_vq``); results in docs/results.md."""
