"""The Triton kernels compile for a Hopper GPU (sm_90), checked without one.

The CPU suite runs the kernels in Triton's interpreter, which executes them as Python and so accepts code the
compiler rejects (a loop-carried variable that changes shape, say). Here a subprocess without the interpreter
lowers each kernel variant down to a cubin for sm_90: ``triton.compile`` with a ``GPUTarget`` needs no GPU, only
Triton's NVIDIA backend and its bundled ptxas.

    python tests/test_triton_compile.py     # the same check by hand: one line per variant
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALARS = {"coef": "fp32", "decay": "fp32", "one_minus_decay": "fp32", "eps": "fp32", "k_eps": "fp32"}
INDEX_POINTERS = ("idx_ptr", "approx_ptr")


def _signature(kernel, io_dtype: str) -> dict:
    """Triton signature of a kernel: indices int64, x and quantized ``io_dtype``, other buffers fp32, ints i32."""
    types = {}
    for p in kernel.params:
        if p.is_constexpr:
            types[p.name] = "constexpr"
        elif p.name in INDEX_POINTERS:
            types[p.name] = "*i64"
        elif p.name in ("x_ptr", "q_ptr"):
            types[p.name] = f"*{io_dtype}"
        elif p.name.endswith("_ptr"):
            types[p.name] = "*fp32"
        else:
            types[p.name] = SCALARS.get(p.name, "i32")
    return types


def _variants():
    """(name, kernel, io dtype, constexprs, compile options): each kernel's code paths (l2/cosine, one d chunk or
    a loop over chunks, every search precision, with and without counts / the approximate index)."""
    from pqgan_kernels import triton_assign, triton_ema, triton_scatter
    small = {"IS_INTERP": False, "BM": 64, "BK": 32}
    dot = {"RECHECK_R": 4, "IS_INTERP": False, "BM": 64, "BK": 64}
    out = [("small l2 d=2", triton_assign._assign_small_kernel, "fp32", dict(small, d=2, COSINE=False),
            {"enable_fp_fusion": False}),
           ("small cosine d=8 bf16", triton_assign._assign_small_kernel, "bf16", dict(small, d=8, COSINE=True),
            {"enable_fp_fusion": False})]
    for precision, d, bd, cosine, approx in [("ieee", 16, 16, False, True), ("tf32", 16, 16, True, False),
                                             ("bf16", 200, 32, False, False), ("tf32x3", 200, 32, True, True)]:
        out.append((f"dot {precision} d={d} cosine={cosine} approx={approx}", triton_assign._assign_dot_kernel,
                    "fp32", dict(dot, d=d, BD=bd, COSINE=cosine, PRECISION=precision, WRITE_APPROX=approx), {}))
    for counts in (False, True):
        out.append((f"scatter d=200 counts={counts}", triton_scatter._scatter_kernel, "fp32",
                    {"d": 200, "BD": 128, "WITH_COUNTS": counts, "BM": 32}, {}))
    out.append(("ema apply d=200", triton_ema._ema_apply_kernel, "fp32", {"d": 200, "BD": 128, "BK": 32}, {}))
    return out


def compile_all() -> None:
    """Compile every variant for sm_90 (raises on the first that fails), printing one line each."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("cuda", 90, 32)
    for name, kernel, io_dtype, constexprs, options in _variants():
        source = ASTSource(fn=kernel, signature=_signature(kernel, io_dtype), constexprs=constexprs)
        compiled = triton.compile(source, target=target, options=options)
        print(f"{name}: {len(compiled.asm['cubin'])} bytes of cubin", flush=True)


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    from triton.backends import backends
    if "nvidia" not in backends:
        pytest.skip("triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("bytes of cubin") == len(_variants())


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    compile_all()
