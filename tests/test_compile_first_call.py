"""torch.compile(layer, fullgraph=True) as the FIRST call of a fresh process (no eager call loaded a backend first),
in train and eval mode, for backends auto/cpu/triton and with k-means init: each case runs in its own subprocess."""
import subprocess
import sys
import textwrap

import pytest

import pqgan_kernels

SCRIPT = textwrap.dedent("""
    import os, sys
    backend, mode, kmeans = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    if backend == "triton" and not __import__("torch").cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from pqgan import ProductQuantizer
    torch.manual_seed(0)
    layer = ProductQuantizer(dim=32, num_subspaces=4, codebook_size=16, backend=backend, kmeans_init=kmeans)
    layer.train(mode == "train")
    eager = ProductQuantizer(dim=32, num_subspaces=4, codebook_size=16, backend="reference", kmeans_init=kmeans)
    eager.load_state_dict(layer.state_dict())
    eager.train(mode == "train")
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(2, 32, 4, 4)
    for _ in range(2):  # the second call sees initialised codebooks (a recompile, not a graph break)
        torch.manual_seed(1)  # k-means++ seeding draws random numbers: the same ones for both layers
        out = compiled(x)
        torch.manual_seed(1)
        ref = eager(x)
        assert torch.equal(out.indices, ref.indices), "compiled and eager layers chose different codes"
        assert torch.allclose(layer.codebooks, eager.codebooks, atol=1e-5)
    assert bool(layer.initted)
    print("OK")
""")

CASES = [("auto", "train", "0"), ("auto", "eval", "0"), ("cpu", "train", "0"), ("cpu", "train", "1"),
         ("auto", "train", "1"), ("triton", "train", "0"), ("triton", "eval", "0")]


@pytest.mark.parametrize("backend,mode,kmeans", CASES)
def test_compile_fullgraph_as_first_call(backend, mode, kmeans):
    if backend == "cpu" and pqgan_kernels.backend_info()["cpu"] != "available":
        pytest.skip("cpu backend not built")
    if backend == "triton":
        pytest.importorskip("triton")  # without a GPU the subprocess runs it in the interpreter
    run = subprocess.run([sys.executable, "-c", SCRIPT, backend, mode, kmeans], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]
