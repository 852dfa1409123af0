"""The benchmark script runs end to end (``--quick``, CPU, subprocess) and writes a well-formed JSON report; the
benchmark's naive quantiser has the product's semantics. No timing assertions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import timing
from benchmarks.naive_quantizer import NaiveProductQuantizer, naive_ema_update, pq_assign_naive
from kernel_checks import random_case
from pqgan_kernels import reference

ROOT = Path(__file__).resolve().parents[1]


MEASUREMENTS = ("forward", "train", "ema")
TIMING_KEYS = ("median_ms", "p20_ms", "p80_ms", "min_ms", "max_ms", "samples_ms", "timer")


def test_bench_quick_json(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU run even on a GPU machine
    # Two configs (d=2: the small-d kernels; d=16: the dot kernels); torch.compile off and one thread to stay
    # fast on a shared 2-core machine; a tiny --budget-s makes the (N,S,K) contenders run on fewer rows (16 of 64).
    cmd = [sys.executable, "-m", "benchmarks.bench_pq", "--quick", "--configs", "f16,mid", "--compile", "none",
           "--backends", "all", "--budget-s", "0.0005", "--threads", "1", "--json", str(out), "--plot", str(png)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the profiler's native log lines are filtered out
    for noise in ("profiler_start", "profiler_stop", "Memory block of unknown size", "gpuGetDeviceCount"):
        assert noise not in proc.stdout + proc.stderr, noise

    report = json.loads(out.read_text())
    assert report["schema"] == "pqgan-bench/2"
    machine = report["machine"]
    for key in ("cpu_model", "torch", "triton", "torch_cuda", "date_utc", "device"):
        assert key in machine
    assert machine["device"] == "cpu"
    assert set(report["configs"]) == {"f16", "mid"}
    assert report["settings"]["memory_methods"]
    contenders = report["contenders"]
    for name in ("naive", "torch.compile", "pqgan:reference", "vector-quantize-pytorch", "flash-kmeans", "faiss"):
        assert name in contenders
    for name, info in contenders.items():
        assert info["available"] == (info["reason"] is None), name
        assert info["kind"] in ("baseline", "ours", "peer"), name
    assert contenders["naive"]["available"] and contenders["pqgan:reference"]["available"]
    assert not contenders["flash-kmeans"]["available"]  # GPU only

    # stdout: the header says what runs here, then one markdown table, one summary line per config
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("pqgan backends run here: ") and "pqgan:reference" in lines[1]
    assert any(line.startswith("  not here: flash-kmeans: GPU only") for line in lines)
    table_lines = [line for line in lines if line.startswith("|")]
    assert table_lines and table_lines[1].startswith("|---")
    assert sum(1 for line in table_lines if line.startswith("|---")) == 1
    assert len(table_lines) == 2 + len(report["results"])
    for name, cfg in report["configs"].items():
        assert sum(line.startswith(f"{cfg['label']} (N={cfg['N']}): ") for line in lines) == 1, name

    # every available contender has one row per config: in results (something ran) or not_run; no others
    rows = {(r["config"], r["contender"]): r for r in report["results"]}
    skipped = {(r["config"], r["contender"]) for r in report["not_run"]}
    available = {n for n, info in contenders.items() if info["available"]}
    assert set(rows) | skipped == {(c, n) for c in report["configs"] for n in available}
    assert not set(rows) & skipped
    for (config, name), row in rows.items():
        cfg = report["configs"][config]
        assert (row["config_N"], row["S"], row["d"], row["K"]) == (cfg["N"], cfg["S"], cfg["d"], cfg["K"])
        assert 1 <= row["N"] <= row["config_N"]
        assert set(row["measurements"]) == set(MEASUREMENTS)
        assert any(m["status"] == "ok" for m in row["measurements"].values())
        for what, m in row["measurements"].items():
            assert m["status"] in ("ok", "skipped", "n/a"), (config, name, what)
            if m["status"] != "ok":
                assert isinstance(m["reason"], str) and m["reason"], (config, name, what)
                continue
            for key in TIMING_KEYS:
                assert key in m, (config, name, what, key)
            assert 0 < m["min_ms"] <= m["median_ms"] <= m["max_ms"]
            assert m["speedup_vs_naive"] > 0
            assert m["peak_extra_bytes"] is None or m["peak_extra_bytes"] >= 0
            if what == "forward":
                assert 0.0 <= m["agreement"] <= 1.0
                assert m["speedup_vs_best_peer"] > 0 and contenders[m["best_peer"]]["kind"] == "peer"
    for config in report["configs"]:
        # the baseline and the oracle backend always produce numbers, and the oracle agrees with itself
        for what in MEASUREMENTS:
            assert rows[(config, "naive")]["measurements"][what]["status"] == "ok"
            assert rows[(config, "pqgan:reference")]["measurements"][what]["status"] == "ok"
        assert rows[(config, "pqgan:reference")]["measurements"]["forward"]["agreement"] == 1.0
        # the budget shrank the (N,S,K) contenders, marked N* in the table; ours ran on every row
        naive = rows[(config, "naive")]
        assert naive["N"] < naive["config_N"]
        assert rows[(config, "pqgan:cpu")]["N"] == rows[(config, "pqgan:cpu")]["config_N"]
        assert any("| naive " in line and f" {naive['N']}* " in line for line in table_lines)
    assert png.stat().st_size > 1000

    # the README table: one row per config, our backend's forward in bold, then the summary lines
    readme = subprocess.run([sys.executable, "-m", "benchmarks.readme_table", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert readme.returncode == 0, readme.stderr[-3000:]
    rows = [line for line in readme.stdout.splitlines() if line.startswith("| ") and "**pqgan:" in line]
    assert len(rows) == len(report["configs"])
    assert sum(line.endswith(", exact") or "oracle" in line for line in readme.stdout.splitlines()) == 2


def test_native_log_filter_drops_noise_keeps_warnings(capfd):
    with timing.NativeLogFilter() as native:
        os.write(2, b"USDT:2026-11-29 04:24:07 1:1 SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"[W1129 CPUAllocator.cpp:245] Memory block of unknown size was allocated before the "
                    b"profiling started, profiler results will not include the deallocation event\n")
        os.write(2, b"a real warning from a library\n")
        print("python stderr still works", file=sys.stderr)
    err = capfd.readouterr().err
    assert native.suppressed == 2
    assert "a real warning from a library" in err and "python stderr still works" in err
    assert "profiler_start" not in err and "Memory block" not in err


def test_naive_baseline_agrees_with_oracle_away_from_ties():
    x, cb = random_case(200, 8, 4, 64, dtype=torch.float64)
    assert torch.equal(pq_assign_naive(x, cb)[1], reference.pq_assign(x, cb)[1])
    q, idx = pq_assign_naive(x.float(), cb)                  # quantized in x's dtype
    assert q.dtype == torch.float32 and torch.equal(q, reference.pq_lookup(cb, idx).float())


def test_naive_ema_matches_reference():
    x, cb = random_case(200, 4, 3, 16, seed=1)
    _, idx = reference.pq_assign(x, cb)
    ours = [cb.clone(), torch.rand(4, 16) + 0.5, torch.randn(4, 16, 3)]
    ref = [t.clone() for t in ours]
    naive_ema_update(x, idx, *ours, 0.9, 1e-5)
    reference.pq_ema_update(x, idx, *ref, 0.9, 1e-5)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_naive_quantizer_semantics():
    # integer inputs: the |x|^2 - 2x.c + |c|^2 expansion is exact, so indices equal the oracle's (ties included)
    x, cb = random_case(100, 4, 2, 8, integer=True, seed=2)
    layer = NaiveProductQuantizer(8, 4, 8).train()
    layer.codebooks.copy_(cb)
    layer.embed_sum.copy_(cb)
    z = x.clone().requires_grad_(True)
    out, idx, loss, perplexity = layer(z)
    q_ref, idx_ref = reference.pq_assign(x, cb)
    assert torch.equal(idx, idx_ref) and torch.equal(out.detach(), q_ref)
    torch.testing.assert_close(loss, 0.25 * (x - q_ref).square().mean())
    assert perplexity.shape == (4,) and bool((perplexity >= 1).all())
    out.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
    cs, es = torch.ones(4, 8), cb.clone()
    cb_ref = cb.clone()
    reference.pq_ema_update(x, idx_ref, cb_ref, cs, es, 0.99, 1e-5)
    torch.testing.assert_close(layer.codebooks, cb_ref)


def test_floor_model_and_summary():
    peaks = {"fp32_inst_per_s": 1e12, "bytes_per_s": 1e12}
    # compute-bound: 1000 rows x 4 subspaces x 256 codes x (2*2+1) instructions
    assert abs(timing.floor_seconds(1000, 4, 2, 256, 4, peaks) - 1000 * 4 * 256 * 5 / 1e12) < 1e-15
    # memory-bound (K=1): read x + write quantized (4 bytes each) + int64 indices + codebooks
    expected = (2 * 1000 * 4 * 2 * 4 + 8 * 1000 * 4 + 4 * 4 * 1 * 2) / 1e12
    assert abs(timing.floor_seconds(1000, 4, 2, 1, 4, peaks) - expected) < 1e-15
    assert timing.floor_seconds(10, 1, 1, 1, 4, {"fp32_inst_per_s": None, "bytes_per_s": 1.0}) is None
    t = timing._summary([5.0, 1.0, 3.0, 2.0, 4.0], "x")
    assert (t.median_ms, t.min_ms, t.max_ms) == (3.0, 1.0, 5.0) and 1.0 <= t.p20_ms <= t.p80_ms <= 5.0
