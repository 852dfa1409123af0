"""Agreement with the oracle on the offset data family, per backend and Triton search precision (not a test).

    python tests/offset_agreement.py        # CPU: Triton runs in its interpreter

Prints, per shape and offset family, the fraction of clear rows (fp64 gap above the suite's tolerance) and of all
rows whose index equals the fp64 oracle's, for reference, cpu and the Triton kernel in each mode/precision.
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # a script beside the tests, not a module

import pqgan_kernels  # noqa: E402
from pqgan_kernels import triton_assign  # noqa: E402
from test_kernel_suite import make_case, oracle_rows  # noqa: E402

FAMILIES = ["offset-10-1", "offset-1000-1", "offset-100-0.001", "offset-1000-0.01"]
SHAPES = [(512, 1, 16, 512), (256, 1, 32, 1024), (128, 2, 128, 256)]


def agreement(x, cb, idx):
    """(fraction of clear rows equal to the fp64 oracle, fraction of clear rows, fraction of all rows equal)."""
    _, best_idx, _, _, clear = oracle_rows(x, cb)
    same = idx.cpu() == best_idx
    return same[clear].double().mean().item(), clear.double().mean().item(), same.double().mean().item()


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = {"reference": lambda x, c: pqgan_kernels.pq_assign(x, c, backend="reference")}
    if pqgan_kernels.backend_info()["cpu"] == "available" and device == "cpu":
        runs["cpu"] = lambda x, c: pqgan_kernels.pq_assign(x, c, backend="cpu")
    for mode, precision in [("exact", "tf32"), ("fast", "tf32"), ("fast", "bf16"), ("fast", "tf32x3")]:
        name = "triton-exact" if mode == "exact" else f"triton-fast-{precision}"
        runs[name] = lambda x, c, m=mode, p=precision: triton_assign.assign(x, c, mode=m, precision=p)
    for N, S, d, K in SHAPES:
        for family in FAMILIES:
            x, cb = make_case(family, N, S, d, K, seed=1)
            x, cb = x.to(device), cb.to(device)
            cells = []
            for name, run in runs.items():
                clear_ok, clear, all_ok = agreement(x, cb, run(x, cb)[1])
                cells.append(f"{name} {clear_ok:.4f}/{all_ok:.4f}")
            print(f"N={N} S={S} d={d} K={K} {family} (clear rows {clear:.3f}): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
