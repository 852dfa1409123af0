#!/usr/bin/env python
"""Speed and memory of product-quantisation assign / training step / EMA update: pqgan vs naive PyTorch,
torch.compile and the peer libraries (faiss, vector-quantize-pytorch, flash-kmeans).

    python -m benchmarks.bench_pq                       # the default set for this machine (CPU: a few minutes)
    python -m benchmarks.bench_pq --quick               # smoke run, tiny sizes
    python -m benchmarks.bench_pq --configs f8,vq --n 8192 --backends naive,cpu,faiss --repeats 10 \
        --json results/x.json --plot results/x.png

Prints which backends and peers run here (and why the others don't), then one table row per (config, contender)
that ran, one summary line per config, and short notes. Contenders: see ``contenders.py``; configs: see
``configs.py``. Every contender runs in this process on the same inputs; index agreement is against the fp32
oracle ``reference.pq_assign``. The profiler's native log lines are filtered out (``--verbose`` keeps them).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import sys
import time
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402

import pqgan_kernels  # noqa: E402
from pqgan_kernels import reference  # noqa: E402

from . import timing  # noqa: E402
from .configs import CONFIGS, parse_configs  # noqa: E402
from .contenders import MEASUREMENTS, Case, build_contenders  # noqa: E402
from .naive_quantizer import pq_assign_naive  # noqa: E402

SCHEMA = "pqgan-bench/2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="default",
                   help=f"comma list of {', '.join(CONFIGS)}; 'default' (GPU: all; CPU: those with a CPU size) "
                        "or 'all'")
    p.add_argument("--n", type=int, default=None, help="rows N for every config (default: per config and device)")
    p.add_argument("--backends", default="default",
                   help="comma list of contenders to run: naive, torch.compile (or compile), reference, cpu, cuda, "
                        "triton, triton-fast, vector-quantize-pytorch (or vq-pytorch), flash-kmeans, faiss; "
                        "'default' = all but the slow oracle 'reference'; 'all'")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats: a smoke run")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5 CPU, 20 GPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of x (codebooks stay fp32)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--measure", default="forward,train,ema", help="comma list of forward, train, ema")
    p.add_argument("--compile", choices=("all", "first", "none"), default=None,
                   help="torch.compile contender on all configs, the first only (--quick default), or none")
    p.add_argument("--budget-s", type=float, default=None,
                   help="per-call time budget of the contenders that build (N,S,K) distances (naive, "
                        "vector-quantize-pytorch): they run on fewer rows beyond it (default 0.25 s CPU, 1 s GPU)")
    p.add_argument("--max-call-s", type=float, default=None,
                   help="skip a measurement whose first call takes longer (default 5 s)")
    p.add_argument("--max-mem-gb", type=float, default=None,
                   help="memory limit per call: (N,S,K) contenders run on fewer rows, others are skipped beyond "
                        "it (default 3 CPU, 85%% of free GPU)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU FP32 instruction rate (T/s) for the floor")
    p.add_argument("--peak-gbs", type=float, default=None, help="GPU DRAM bandwidth (GB/s) for the floor")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true",
                   help="per-measurement log lines, and the profiler's native log lines (filtered by default)")
    p.add_argument("--json", type=Path, default=None, help="write every number + machine info here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG (time per config and contender, log scale)")
    args = p.parse_args(argv)
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    gpu = args.device == "cuda"
    args.repeats = args.repeats or (3 if args.quick else (20 if gpu else 5))
    args.compile = args.compile or ("first" if args.quick else "all")
    args.max_call_s = args.max_call_s or 5.0
    args.budget_s = args.budget_s or (1.0 if gpu else 0.25)
    args.measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    bad = [m for m in args.measure if m not in MEASUREMENTS]
    if bad:
        p.error(f"unknown --measure {bad}; choose from {MEASUREMENTS}")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    try:
        args.config_list = parse_configs(args.configs, args.device)
    except ValueError as err:
        p.error(str(err))
    return args


ALIASES = {"compile": "torch.compile", "vq-pytorch": "vector-quantize-pytorch", "vqtorch": "vector-quantize-pytorch"}
NOT_BY_DEFAULT = {"pqgan:reference": "the fp32 oracle (slow; --backends reference)"}


def select_contenders(args):
    """(contenders to run, {name: why not run by default} for the ones left out by 'default')."""
    wanted = None
    if args.backends and args.backends not in ("all", "default"):
        wanted = [ALIASES.get(w.strip(), w.strip()) for w in args.backends.split(",") if w.strip()]
    explicit = {w.replace("pqgan:", "") for w in wanted or []}
    everyone = build_contenders(args.device, args.compile, explicit)
    if wanted is None:
        if args.backends == "all":
            return everyone, {}
        return [c for c in everyone if c.name not in NOT_BY_DEFAULT], dict(NOT_BY_DEFAULT)
    names = {c.name: c for c in everyone}
    names.update({c.name.replace("pqgan:", ""): c for c in everyone})
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown} in --backends; choose from {sorted(names)}")
    picked = {id(names[w]) for w in wanted}
    return [c for c in everyone if id(c) in picked], {}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """One self-overwriting status line on a terminal; elsewhere one line per finished config."""

    def __init__(self, total: int, verbose: bool):
        self.total, self.done, self.verbose = total, 0, verbose
        self.tty = sys.stderr.isatty() and not verbose

    def step(self, what: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K[{self.done}/{self.total}] {what}  ({time.perf_counter() - START:.0f} s)")
            sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1

    def config_done(self, label: str, n_ran: int) -> None:
        if not self.tty:
            log(f"[{self.done}/{self.total}] {label}: {n_ran} contenders ran ({time.perf_counter() - START:.0f} s)")

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def memory_limit(args) -> float:
    if args.max_mem_gb is not None:
        return args.max_mem_gb * 2 ** 30
    if args.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return 0.85 * free
    return 3.0 * 2 ** 30


ORACLE_ELEMENTS = {"cpu": 1 << 26, "cuda": 1 << 36}  # (rows, S, K, d) work of the agreement oracle


def make_case(cfg, args, first: bool) -> Case:
    """Fresh random inputs; the oracle's indices for the first R rows (R*S*K*d <= ORACLE_ELEMENTS: the oracle is
    slow on a CPU); EMA input indices from the fastest assignment available (``pq_assign`` "auto", or the naive
    expansion in row chunks when "auto" would be the slow oracle)."""
    cfg = cfg.sized(args.device, args.quick, args.n)
    N = cfg.N
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(N, cfg.D, generator=g).to(DTYPES[args.dtype]).to(args.device)
    codebooks = torch.randn(cfg.S, cfg.K, cfg.d, generator=g).to(args.device)
    rows = max(1, min(N, ORACLE_ELEMENTS[args.device] // (cfg.S * cfg.K * cfg.d)))
    _, oracle = reference.pq_assign(x[:rows], codebooks)
    if pqgan_kernels.resolved_backend(x, codebooks) != "reference":
        _, indices = pqgan_kernels.pq_assign(x, codebooks)
    else:
        chunk = max(1, (1 << 24) // (cfg.S * cfg.K))
        indices = torch.cat([pq_assign_naive(x[i:i + chunk], codebooks)[1] for i in range(0, N, chunk)])
    return Case(cfg, N, x, codebooks, indices, oracle, args.device, first)


def run_measurement(contender, what, case, args, limit):
    """One measurement of one contender: a dict with status "ok" (times, memory, ...), "n/a" (the contender has
    no such measurement; reason) or "skipped" (too big, too slow, failed; reason)."""
    est = contender.est_bytes(case, what)
    if est is not None and est > limit:
        return {"status": "skipped", "reason": f"estimated peak {est / 2 ** 30:.1f} GiB > limit "
                                               f"{limit / 2 ** 30:.1f} GiB (--max-mem-gb)"}
    est_s = contender.est_seconds(case, what)
    if est_s is not None and est_s > args.max_call_s:
        return {"status": "skipped", "reason": f"estimated {est_s:.0f} s per call > limit {args.max_call_s:g} s "
                                               "(--max-call-s)"}
    try:
        fn = getattr(contender, what)(case)
    except Exception as err:  # noqa: BLE001 - a broken contender is reported, never fatal
        return {"status": "skipped", "reason": f"set-up failed: {type(err).__name__}: {str(err)[:200]}"}
    if isinstance(fn, str):
        return {"status": "n/a", "reason": fn}
    out = {"status": "ok"}
    try:
        t, result = timing.measure(fn, case.device, args.repeats, warmup=1, max_call_s=args.max_call_s)
        out.update(t.as_dict())
        if what == "forward":
            rows = min(case.oracle.shape[0], case.N)
            indices = result[1][:rows].to(case.oracle.device).long()
            out["agreement"] = (indices == case.oracle[:rows]).double().mean().item()
            out["agreement_rows"] = rows
        result = None  # free the outputs before the memory probe
        if not args.no_memory:
            peak, method = timing.peak_extra_bytes(fn, case.device, contender.memory_method)
            out["peak_extra_bytes"], out["memory_method"] = peak, method
    except timing.TooSlow as err:
        return {"status": "skipped", "reason": "one call took longer than --max-call-s",
                "single_call_ms": err.seconds * 1e3}
    except torch.OutOfMemoryError:
        return {"status": "skipped", "reason": "out of memory"}
    except Exception as err:  # noqa: BLE001
        return {"status": "skipped", "reason": f"failed: {type(err).__name__}: {str(err)[:200]}"}
    finally:
        del fn
        free_memory(case.device)
    return out


def run(args, contenders, reasons) -> dict:
    """Every available contender on every config: the report dict (see ``SCHEMA``; ``results``: one row per
    (config, contender) that ran at least one measurement; ``not_run``: the others, with reasons)."""
    available = [c for c in contenders if reasons[c.name] is None]
    peaks = timing.gpu_peaks(args.peak_tflops, args.peak_gbs) if args.device == "cuda" else None
    limit = memory_limit(args)
    results, not_run, sized = [], [], {}
    progress = Progress(len(args.config_list) * len(available), args.verbose)
    for i, full_cfg in enumerate(args.config_list):
        case = make_case(full_cfg, args, first=(i == 0))
        cfg = case.cfg
        sized[cfg.name] = cfg
        if args.verbose:
            log(f"== {cfg.name}: N={case.N} S={cfg.S} d={cfg.d} K={cfg.K}")
        rows = []
        for c in available:
            n = c.rows_for(case, args.measure, limit, args.budget_s)
            sub = case.head(n)
            row = {"config": cfg.name, "N": n, "config_N": case.N, "S": cfg.S, "d": cfg.d, "K": cfg.K,
                   "D": cfg.D, "contender": c.name, "kind": c.kind, "measurements": {}}
            for what in MEASUREMENTS:
                progress.step(f"{cfg.label}: {c.name} {what}")
                if what not in args.measure:
                    m = {"status": "n/a", "reason": "not requested (--measure)"}
                else:
                    m = run_measurement(c, what, sub, args, limit)
                row["measurements"][what] = m
                if args.verbose:
                    log(f"   {c.name:24s} {what:8s} N={n:<6d}" + (f"{m['median_ms']:10.3f} ms" if m["status"] == "ok"
                                                                  else f"{m['status']}: {m['reason']}")
                        + f"   [{time.perf_counter() - START:.1f} s]")
            progress.advance()
            compile_s = getattr(c, "compile_s", {}).get(cfg.name)
            if compile_s is not None:
                row["compile_s"] = compile_s
            fwd = row["measurements"]["forward"]
            if peaks and fwd["status"] == "ok":
                floor = timing.floor_seconds(n, cfg.S, cfg.d, cfg.K, case.x.element_size(), peaks)
                fwd["floor_fraction"] = floor / (fwd["median_ms"] / 1e3) if floor else None
            if any(m["status"] == "ok" for m in row["measurements"].values()):
                rows.append(row)
            else:
                not_run.append(row)
        add_speedups(rows)
        results.extend(rows)
        progress.config_done(cfg.label, len(rows))
        del case
        free_memory(args.device)
    progress.close()
    machine = timing.machine_info(args.device)
    machine["pqgan_backends"] = pqgan_kernels.backend_info()
    machine["git_commit"] = git_commit()
    return {
        "schema": SCHEMA,
        "machine": machine,
        "settings": {
            "device": args.device, "dtype": args.dtype, "codebook_dtype": "float32", "repeats": args.repeats,
            "quick": args.quick, "compile": args.compile, "max_call_s": args.max_call_s, "budget_s": args.budget_s,
            "max_mem_bytes": limit, "measure": args.measure, "seed": args.seed,
            "timer": "triton.testing.do_bench / CUDA events" if args.device == "cuda" else
                     "time.perf_counter, 1 warm-up call",
            "memory_methods": timing.MEMORY_METHODS,
            "floor_model": None if not peaks else {
                **peaks, "model": "max((2d+1) FP32 instructions per (row, subspace, code) / FP32 instruction "
                                  "rate, bytes(read x + write quantized + int64 indices + codebooks) / DRAM bw)"},
            "agreement": "fraction of (row, subspace) indices equal to reference.pq_assign (fp32) on the same "
                         "inputs (first agreement_rows rows: the oracle is slow on a CPU)",
            "speedups": "ratios of time per row (median ms / N): a contender measured on fewer rows (N < "
                        "config_N) is compared per row",
            "value_checks": "on (library default)",
        },
        "configs": {c.name: {"N": c.N, "S": c.S, "d": c.d, "K": c.K, "label": c.label, "note": c.note}
                    for c in sized.values()},
        "contenders": contender_info(contenders, reasons),
        "results": results,
        "not_run": not_run,
    }


def git_commit() -> str | None:
    """HEAD of the checkout the benchmark ran from (None outside git), "+dirty" with uncommitted changes."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _per_row(row: dict, what: str) -> float | None:
    m = row["measurements"][what]
    return m["median_ms"] / row["N"] if m["status"] == "ok" else None


def add_speedups(rows: list[dict]) -> None:
    """Per measurement, from times per row: speedup_vs_naive = naive / contender (>1: faster than naive); for the
    forward also speedup_vs_compile and speedup_vs_best_peer (the fastest peer library's forward on this config;
    its name in best_peer)."""
    def base(name):
        return next((r for r in rows if r["contender"] == name), None)
    naive, compiled = base("naive"), base("torch.compile")
    peers = [(t, r["contender"]) for r in rows if r["kind"] == "peer" and (t := _per_row(r, "forward"))]
    best = min(peers) if peers else None
    for row in rows:
        for what, m in row["measurements"].items():
            own = _per_row(row, what)
            if own is None:
                continue
            t_naive = _per_row(naive, what) if naive else None
            if t_naive:
                m["speedup_vs_naive"] = t_naive / own
            if what != "forward":
                continue
            t_compile = _per_row(compiled, what) if compiled else None
            if t_compile:
                m["speedup_vs_compile"] = t_compile / own
            if best:
                m["speedup_vs_best_peer"], m["best_peer"] = best[0] / own, best[1]


# --- output ------------------------------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _x(v: float | None) -> str:
    if not v:
        return ""
    return f"{v:.2g}x" if v < 10 else f"{v:.0f}x"


def _aligned(rows: list[list[str]]) -> list[str]:
    """Markdown table lines with padded columns (readable as text; the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def format_table(report: dict) -> str:
    gpu = report["settings"]["device"] == "cuda"
    head = ["config", "contender", "N", "fwd ms", "x naive", "x compile", "x peer", "train ms", "x naive",
            "EMA ms", "x naive", "peak MiB", "agree"] + (["floor %"] if gpu else [])
    table = [head]
    for r in report["results"]:
        f, t, e = (r["measurements"][w] for w in MEASUREMENTS)

        def ms(m):
            return _ms(m["median_ms"]) if m["status"] == "ok" else "-"

        peaks = [m.get("peak_extra_bytes") for m in (f, t)]
        peak = "/".join("-" if b is None else f"{b / 2 ** 20:.0f}" if b >= 10 * 2 ** 20 else f"{b / 2 ** 20:.1f}"
                        for b in peaks)
        cells = [report["configs"][r["config"]].get("label") or f"{r['config']} S{r['S']} d{r['d']} K{r['K']}",
                 r["contender"], f"{r['N']}*" if r["N"] < r["config_N"] else str(r["N"]),
                 ms(f), _x(f.get("speedup_vs_naive")), _x(f.get("speedup_vs_compile")),
                 _x(f.get("speedup_vs_best_peer")), ms(t), _x(t.get("speedup_vs_naive")), ms(e),
                 _x(e.get("speedup_vs_naive")), peak, f"{f['agreement']:.4f}" if "agreement" in f else ""]
        if gpu:
            frac = f.get("floor_fraction")
            cells.append(f"{100 * frac:.1f}" if frac else "")
        table.append(cells)
    return "\n".join(_aligned(table))


def _faster(ratio: float, other: str) -> str:
    return f"{ratio:.2g}x faster than {other}" if ratio >= 1 else f"{1 / ratio:.2g}x slower than {other}"


def summary_lines(report: dict) -> list[str]:
    """One line per config: our fastest backend's forward against the best peer, torch.compile and naive."""
    lines = []
    for name, cfg in report["configs"].items():
        rows = [r for r in report["results"] if r["config"] == name]
        ours = [(_per_row(r, "forward"), r) for r in rows if r["kind"] == "ours" and _per_row(r, "forward")]
        label = f"{cfg.get('label', name)} (N={cfg['N']})"
        if not ours:
            lines.append(f"{label}: no pqgan backend ran")
            continue
        _, row = min(ours, key=lambda tr: tr[0])
        f = row["measurements"]["forward"]
        parts = []
        if "speedup_vs_best_peer" in f:
            parts.append(_faster(f["speedup_vs_best_peer"], f["best_peer"]))
        if "speedup_vs_compile" in f:
            parts.append(_faster(f["speedup_vs_compile"], "torch.compile"))
        if "speedup_vs_naive" in f:
            parts.append(_faster(f["speedup_vs_naive"], "naive"))
        agree = f.get("agreement")
        parts.append("exact" if agree == 1.0 else f"agrees with the oracle on {agree:.4%} of indices"
                     if agree is not None else "agreement not checked")
        lines.append(f"{label}: {row['contender']} " + ", ".join(parts))
    return lines


def contender_info(contenders, reasons) -> dict:
    return {c.name: {"description": c.description, "kind": c.kind, "available": reasons[c.name] is None,
                     "reason": reasons[c.name]} for c in contenders}


def header_lines(machine: dict, dtype: str, contenders: dict, left_out: dict) -> list[str]:
    """What runs here: the machine, our backends and the peers, and why the others don't."""
    m = machine
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu_model']}, {m['torch_threads']} torch threads"
    lines = [f"PQ benchmark on {where}; torch {m['torch']}, {dtype}, {m['date_utc'][:10]}"]
    for kind, title in (("ours", "pqgan backends"), ("peer", "peers")):
        names = {n: c for n, c in contenders.items() if c["kind"] == kind}
        if not names and kind == "peer":
            continue
        ran = [n for n, c in names.items() if c["available"]]
        lines.append(f"{title} run here: {', '.join(ran) or 'none'}")
        why_not: dict[str, list[str]] = {}
        for n, c in names.items():
            if not c["available"]:
                reason = re.sub(r"^backend '\w+' not available: ", "", c["reason"])
                why_not.setdefault(reason, []).append(n)
        lines += [f"  not here: {', '.join(ns)}: {reason}" for reason, ns in why_not.items()]
    for n, why in left_out.items():
        lines.append(f"  not run by default: {n}: {why}")
    for n, c in contenders.items():
        if c["kind"] == "baseline" and not c["available"]:
            lines.append(f"  not run: {n}: {c['reason']}")
    return lines


def note_lines(report: dict) -> list[str]:
    s, m = report["settings"], report["machine"]
    out = [f"Notes: median of {s['repeats']} timed calls ({s['timer']}); every number in --json.",
           "- x naive / x compile / x peer: their time per row / this row's (>1: this row is faster); "
           "x peer: vs the fastest peer library on that config.",
           f"- N*: measured on fewer rows than the config's N: its (N,S,K) distances exceed the per-call budget "
           f"({s['budget_s']:g} s, {s['max_mem_bytes'] / 2 ** 30:.0f} GiB); compared per row.",
           "- fwd = assign + lookup; train = layer forward + loss backward + EMA codebook update; EMA = the update "
           "alone, from given indices."]
    mem = sorted({r["measurements"][w].get("memory_method") for r in report["results"] for w in MEASUREMENTS}
                 - {None})
    if mem:
        out.append("- peak MiB: extra memory of one forward / one train step: "
                   + "; ".join(f"{k}: {timing.MEMORY_METHODS[k]}" for k in mem) + ".")
    rows = {}
    for r in report["results"]:
        rows[r["config"]] = max(rows.get(r["config"], 0), r["measurements"]["forward"].get("agreement_rows") or 0)
    out.append("- agree: indices equal to the fp32 oracle reference.pq_assign, on the first rows ("
               + ", ".join(f"{k} {v}" for k, v in rows.items() if v) + ").")
    if s.get("floor_model"):
        out.append(f"- floor %: {s['floor_model']['model']}.")
    compiled = {r["config"]: r["compile_s"] for r in report["results"] if "compile_s" in r}
    if compiled:
        out.append("- torch.compile compile time (first call), s: "
                   + ", ".join(f"{k} {v:.1f}" for k, v in compiled.items()))
    # '-' cells and rows that did not run: each reason once, with where it applied
    grouped: dict[tuple[str, str], list[str]] = {}
    for r in report["results"] + report.get("not_run", []):
        for what, meas in r["measurements"].items():
            if meas["status"] != "ok" and meas.get("reason") != "not requested (--measure)":
                grouped.setdefault((r["contender"], meas["reason"]), []).append(f"{r['config']} {what}")
    all_configs = set(report["configs"])
    for (name, reason), where in grouped.items():
        configs = sorted({w.split()[0] for w in where}, key=list(report["configs"]).index)
        whats = sorted({w.split()[1] for w in where}, key=MEASUREMENTS.index)
        scope = "" if set(configs) == all_configs else f" [{', '.join(configs)}]"
        out.append(f"- {name} {'/'.join(whats)}: {reason}{scope}")
    load = m.get("load_average")
    if load and m.get("cpu_count") and load[0] > m["cpu_count"]:
        out.append(f"- load average {load[0]:.1f} on {m['cpu_count']} CPUs during the run: other processes "
                   "competed for the cores, so CPU times are inflated and noisy.")
    return out


def print_report(report: dict) -> None:
    """Table, summary lines and notes (the header is printed before the run: ``header_lines``)."""
    print()
    print(format_table(report))
    print()
    print("\n".join(summary_lines(report)))
    print()
    print("\n".join(note_lines(report)))


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(report["configs"])
    contenders = [n for n in report["contenders"] if any(r["contender"] == n for r in report["results"])]
    fig, axes = plt.subplots(1, len(MEASUREMENTS), figsize=(6 * len(MEASUREMENTS), 4.5), squeeze=False)
    width = 0.8 / max(1, len(contenders))
    for ax, what in zip(axes[0], MEASUREMENTS):
        for j, name in enumerate(contenders):
            xs, ys = [], []
            for i, cfg in enumerate(configs):
                r = next((r for r in report["results"] if r["config"] == cfg and r["contender"] == name), None)
                m = r["measurements"][what] if r else None
                if m and m["status"] == "ok":
                    xs.append(i + (j - (len(contenders) - 1) / 2) * width)
                    ys.append(1e3 * m["median_ms"] / r["N"])  # per row: some contenders ran on fewer rows
            if xs:
                ax.bar(xs, ys, width=width, label=name, color=f"C{j % 10}")  # same colour in every panel
        ax.set_yscale("log")
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels([f"{c}\nN={report['configs'][c]['N']}" for c in configs], fontsize=8)
        ax.set_ylabel("median µs per row (log)")
        ax.set_title(what)
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=min(6, max(1, len(labels))), fontsize=8)
    m = report["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else m["cpu_model"]
    fig.suptitle(f"PQ assign / train step / EMA — {where}, {report['settings']['dtype']}", y=0.02, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found" on CPU
    contenders, left_out = select_contenders(args)
    reasons = {c.name: c.unavailable(args.device) for c in contenders}
    print("\n".join(header_lines(timing.machine_info(args.device), args.dtype, contender_info(contenders, reasons),
                                 left_out)), flush=True)
    if args.verbose:
        report = run(args, contenders, reasons)
    else:
        with timing.NativeLogFilter() as native:
            report = run(args, contenders, reasons)
        report["settings"]["native_log_lines_suppressed"] = native.suppressed
    report["left_out"] = left_out
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        log(f"wrote {args.json}")
    if args.plot:
        try:
            plot(report, args.plot)
            log(f"wrote {args.plot}")
        except ImportError as err:
            log(f"no plot: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
