"""pqgan_kernels: fused product-quantisation kernels (reference, Triton, CUDA, CPU C++) behind one dispatch point.

    >>> import torch, pqgan_kernels
    >>> x, codebooks = torch.randn(1024, 128), torch.randn(64, 512, 2)      # S=64 subspaces of d=2, K=512
    >>> quantized, indices = pqgan_kernels.pq_assign(x, codebooks)         # (1024, 128), (1024, 64)
    >>> pqgan_kernels.available_backends()                                  # e.g. ['reference', 'cpu']

See ``reference.py`` for the exact semantics every backend follows and ``dispatch.py`` for how one is chosen.

The map (paths from the repository root; ``d`` = sub-dimension, ``D`` = S*d). Shared by every op: public wrapper,
``torch.library`` registration (``pqgan::<op>``), fake and autograd in ``ops.py``; input checks in ``validate.py``;
backend choice in ``dispatch.py``; backend registration in ``triton_backend.py`` (Triton) and ``native_backend.py``
("cpu", "cuda": the ``pqgan_native::*`` ops; their schemas and the module ``_C`` in csrc/ops.cpp, argument checks in
csrc/checks.h, per op one file per backend: csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu, the CUDA element-wise loop in
csrc/cuda/grid_stride.cuh). Tests shared by all backends: tests/test_kernel_suite.py (one backend-parametrised suite,
checks in tests/kernel_checks.py), tests/test_ops.py (registration, opcheck, autograd, validation),
tests/test_dispatch.py; backend-specific: tests/test_triton.py, tests/test_triton_compile.py (every Triton kernel
compiles for sm_90, no GPU needed), tests/test_cpu_kernels.py,
tests/test_cpu_assign_gemm.py, tests/test_cpu_grid.py, tests/test_cuda_kernels.py (GPU); the oracle: tests/test_reference.py; this map:
tests/test_kernel_map.py.

    pq_assign         oracle     reference.pq_assign
                      triton     triton_assign.py: ``_assign_small_kernel`` (d <= SMALL_D_MAX), ``_assign_dot_kernel``
                                 (tl.dot + exact re-check within the bound of ``bound.py``); launcher ``assign``
                      cpu        csrc/cpu/assign.cpp ``pq_assign_cpu`` (launcher, OpenMP tiles, op ``cpu_isa``) over
                                 the micro-kernels of csrc/cpu/assign_kernel.h, compiled per ISA in
                                 assign_{generic,avx2,avx512}.cpp (declared in assign_tiles.h; l2, fp32, d <= 4:
                                 ``assign_small_d_expanded``, expanded formula + exact re-check within the bound of
                                 ``bound.py``); l2 where
                                 ``native_backend.uses_gemm(d, K)``: ``native_backend.assign_gemm`` ->
                                 ``pqgan_native::pq_assign_gemm`` in csrc/cpu/assign_gemm.cpp (scores by ``gemm_scan``
                                 of csrc/cpu/assign_gemm_kernel.h in the AVX2/AVX-512 copies, declared in
                                 assign_gemm_scan.h, else BLAS; exact re-check within the bound of ``bound.py``);
                                 l2, fp32, d <= 2 where ``native_backend.uses_grid(N, d)``: the cell-grid search,
                                 ``assign_grid_impl`` in assign.cpp, tables by csrc/cpu/assign_grid.cpp (declared in
                                 assign_grid_build.h), query ``assign_tile_grid`` of csrc/cpu/assign_grid_kernel.h in
                                 the AVX2/AVX-512 copies (declared in assign_grid.h; certified, see assign_grid.cpp);
                                 Python side ``native_backend.cpu_assign``; ISA choice csrc/cpu/isa.cpp ``isa``
                      cuda       csrc/cuda/assign.cu ``assign_kernel`` + ``lookup_kernel``, launcher ``pq_assign_cuda``
                      cpu, cuda  shared set-up (compute-dtype codebooks, outputs): csrc/assign_setup.h
    pq_codebook_grad  oracle     reference.pq_codebook_grad (also the backward of pq_assign, ops.py)
                      triton     triton_scatter.py ``_scatter_kernel`` (WITH_COUNTS=False), launcher ``codebook_grad``
                      cpu        csrc/cpu/scatter.cpp ``scatter_cpu_impl``, launcher ``scatter_cpu``
                      cuda       csrc/cuda/scatter.cu ``scatter_kernel``, launcher ``scatter_cuda``
                      cpu, cuda  the op itself (checks, outputs): csrc/scatter_ops.h ``codebook_grad_op``
    pq_ema_stats      oracle     reference.pq_ema_stats
                      triton     triton_scatter.py ``_scatter_kernel`` (WITH_COUNTS=True), launcher ``ema_stats``
                      cpu        csrc/cpu/scatter.cpp ``scatter_cpu_impl``, launcher ``scatter_cpu``
                      cuda       csrc/cuda/scatter.cu ``scatter_kernel``, launcher ``scatter_cuda``
                      cpu, cuda  the op itself (checks, outputs): csrc/scatter_ops.h ``ema_stats_op``
    pq_ema_update     oracle     reference.pq_ema_update = pq_ema_stats + ``ema_apply.pq_ema_apply_`` (the formula)
                      triton     triton_ema.py ``ema_update``: triton_scatter.py ``ema_stats`` + ``_ema_apply_kernel``
                      cpu, cuda  their pq_ema_stats, then ``ema_apply.pq_ema_apply_`` (ops.py, no native kernel)
    pq_lookup         oracle     reference.pq_lookup; every backend: the same gather (ops.py), no kernel
"""
from . import reference
from .dispatch import (BACKENDS, available_backends, backend_info, get_backend, register_backend,
                       resolve_backend, set_default_backend)
from .ops import (pq_assign, pq_codebook_grad, pq_ema_stats, pq_ema_update, pq_lookup, resolved_backend)
from .ema_apply import pq_ema_apply_
from .validate import set_value_checks

__all__ = [
    "BACKENDS", "available_backends", "backend_info", "get_backend", "pq_assign", "pq_codebook_grad",
    "pq_ema_apply_", "pq_ema_stats", "pq_ema_update", "pq_lookup", "reference", "register_backend",
    "resolve_backend", "resolved_backend", "set_default_backend", "set_value_checks",
]
