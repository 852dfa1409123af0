#!/usr/bin/env python
"""Side-by-side speed and memory of product-quantisation assign / training step / EMA update vs naive PyTorch.

    python benchmarks/bench_pq.py                       # default sizes for this machine (CPU: ~2 min)
    python benchmarks/bench_pq.py --quick               # smoke run, tiny sizes
    python benchmarks/bench_pq.py --configs f8,vq --n 8192 --backends naive,cpu,faiss --repeats 10 \
        --json results/x.json --plot results/x.png

Prints one markdown table (rows: config x contender), then notes: what each skipped cell's reason is, how time
and memory were measured. Contenders: see ``contenders.py``; configs: see ``configs.py``. Every contender runs in
this process on the same inputs; index agreement is against the fp32 oracle ``reference.pq_assign``.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import pqgan_kernels  # noqa: E402
from pqgan_kernels import reference  # noqa: E402

import timing  # noqa: E402
from configs import CONFIGS, parse_configs  # noqa: E402
from contenders import MEASUREMENTS, Case, build_contenders  # noqa: E402

SCHEMA = "pqgan-bench/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="all", help=f"comma list of {', '.join(CONFIGS)} (default all)")
    p.add_argument("--n", type=int, default=None, help="rows N for every config (default: per config and device)")
    p.add_argument("--backends", default="all",
                   help="comma list of contenders to run: naive, torch.compile (or compile), reference, cpu, cuda, "
                        "triton, triton-fast, vector-quantize-pytorch (or vq-pytorch), flash-kmeans, faiss")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats: a smoke run")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5 CPU, 20 GPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of x (codebooks stay fp32)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--measure", default="forward,train,ema", help="comma list of forward, train, ema")
    p.add_argument("--compile", choices=("all", "first", "none"), default=None,
                   help="torch.compile contender on all configs, the first only (--quick default), or none")
    p.add_argument("--max-call-s", type=float, default=None,
                   help="skip a measurement whose first call takes longer (default 3 s CPU, 5 s GPU)")
    p.add_argument("--max-mem-gb", type=float, default=None,
                   help="skip a contender whose estimated peak exceeds this (default 2 CPU, 85%% of free GPU)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU FP32 instruction rate (T/s) for the floor")
    p.add_argument("--peak-gbs", type=float, default=None, help="GPU DRAM bandwidth (GB/s) for the floor")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every number + machine info here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG (time per config and contender, log scale)")
    args = p.parse_args(argv)
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    gpu = args.device == "cuda"
    args.repeats = args.repeats or (3 if args.quick else (20 if gpu else 5))
    args.compile = args.compile or ("first" if args.quick else "all")
    args.max_call_s = args.max_call_s or (5.0 if gpu else 3.0)
    args.measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    bad = [m for m in args.measure if m not in MEASUREMENTS]
    if bad:
        p.error(f"unknown --measure {bad}; choose from {MEASUREMENTS}")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    try:
        args.config_list = parse_configs(args.configs)
    except ValueError as err:
        p.error(str(err))
    return args


ALIASES = {"compile": "torch.compile", "vq-pytorch": "vector-quantize-pytorch", "vqtorch": "vector-quantize-pytorch"}


def select_contenders(args):
    wanted = None
    if args.backends and args.backends != "all":
        wanted = [ALIASES.get(w.strip(), w.strip()) for w in args.backends.split(",") if w.strip()]
    explicit = {w.replace("pqgan:", "") for w in wanted or []}
    everyone = build_contenders(args.device, args.compile, explicit)
    if wanted is None:
        return everyone
    names = {c.name: c for c in everyone}
    names.update({c.name.replace("pqgan:", ""): c for c in everyone})
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {sorted(names)}")
    picked = {id(names[w]) for w in wanted}
    return [c for c in everyone if id(c) in picked]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    return 2.0 * 2 ** 30


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
        indices = torch.cat([reference.pq_assign_naive(x[i:i + chunk], codebooks)[1] for i in range(0, N, chunk)])
    return Case(cfg, N, x, codebooks, indices, oracle, args.device, first)


def run_measurement(contender, what, case, args, limit):
    """One measurement of one contender: a dict with status "ok" (times, memory, ...) or "skipped" (reason)."""
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
        return {"status": "skipped", "reason": fn}
    out = {"status": "ok"}
    try:
        t, result = timing.measure(fn, case.device, args.repeats, warmup=1, max_call_s=args.max_call_s)
        out.update(t.as_dict())
        if what == "forward":
            rows = case.oracle.shape[0]
            indices = result[1][:rows].to(case.oracle.device).long()
            out["agreement"] = (indices == case.oracle).double().mean().item()
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


def run(args) -> dict:
    contenders = select_contenders(args)
    reasons = {c.name: c.unavailable(args.device) for c in contenders}
    peaks = timing.gpu_peaks(args.peak_tflops, args.peak_gbs) if args.device == "cuda" else None
    limit = memory_limit(args)
    results = []
    for i, full_cfg in enumerate(args.config_list):
        case = make_case(full_cfg, args, first=(i == 0))
        cfg = case.cfg
        log(f"== {cfg.name}: N={case.N} S={cfg.S} d={cfg.d} K={cfg.K}")
        rows = []
        for c in contenders:
            row = {"config": cfg.name, "N": case.N, "S": cfg.S, "d": cfg.d, "K": cfg.K, "D": cfg.D,
                   "contender": c.name, "measurements": {}}
            for what in MEASUREMENTS:
                if reasons[c.name]:
                    m = {"status": "skipped", "reason": reasons[c.name]}
                elif what not in args.measure:
                    m = {"status": "skipped", "reason": "not requested (--measure)"}
                else:
                    m = run_measurement(c, what, case, args, limit)
                row["measurements"][what] = m
                log(f"   {c.name:24s} {what:8s} " + (f"{m['median_ms']:10.3f} ms" if m["status"] == "ok"
                                                     else f"skipped: {m['reason']}")
                    + f"   [{time.perf_counter() - START:.1f} s]")
            compile_s = getattr(c, "compile_s", {}).get(cfg.name)
            if compile_s is not None:
                row["compile_s"] = compile_s
            fwd = row["measurements"]["forward"]
            if peaks and fwd["status"] == "ok":
                floor = timing.floor_seconds(case.N, cfg.S, cfg.d, cfg.K, case.x.element_size(), peaks)
                fwd["floor_fraction"] = floor / (fwd["median_ms"] / 1e3) if floor else None
            rows.append(row)
        add_speedups(rows)
        results.extend(rows)
        del case
        free_memory(args.device)
    machine = timing.machine_info(args.device)
    machine["pqgan_backends"] = pqgan_kernels.backend_info()
    machine["git_commit"] = git_commit()
    return {
        "schema": SCHEMA,
        "machine": machine,
        "settings": {
            "device": args.device, "dtype": args.dtype, "codebook_dtype": "float32", "repeats": args.repeats,
            "quick": args.quick, "compile": args.compile, "max_call_s": args.max_call_s,
            "max_mem_bytes": limit, "measure": args.measure, "seed": args.seed,
            "timer": "triton.testing.do_bench / CUDA events" if args.device == "cuda" else
                     "time.perf_counter, 1 warm-up call",
            "memory_methods": timing.MEMORY_METHODS,
            "floor_model": None if not peaks else {
                **peaks, "model": "max((2d+1) FP32 instructions per (row, subspace, code) / FP32 instruction "
                                  "rate, bytes(read x + write quantized + int64 indices + codebooks) / DRAM bw)"},
            "agreement": "fraction of (row, subspace) indices equal to reference.pq_assign (fp32) on the same "
                         "inputs (first agreement_rows rows: the oracle is slow on a CPU)",
            "value_checks": "on (library default)",
        },
        "configs": {c.name: {"N": c.N, "S": c.S, "d": c.d, "K": c.K, "note": c.note}
                    for c in (c.sized(args.device, args.quick, args.n) for c in args.config_list)},
        "contenders": {c.name: {"description": c.description, "available": reasons[c.name] is None,
                                "reason": reasons[c.name]} for c in contenders},
        "results": results,
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


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_naive = naive median / contender median, per measurement, where both ran."""
    naive = next((r for r in rows if r["contender"] == "naive"), None)
    for row in rows:
        for what, m in row["measurements"].items():
            base = naive["measurements"][what] if naive else None
            if m["status"] == "ok" and base and base["status"] == "ok":
                m["speedup_vs_naive"] = base["median_ms"] / m["median_ms"]


# --- output ------------------------------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def format_table(report: dict) -> tuple[str, list[str]]:
    reasons: list[str] = []

    def skip(reason: str) -> str:
        if reason not in reasons:
            reasons.append(reason)
        return f"skip[{reasons.index(reason) + 1}]"

    def time_cell(m):
        if m["status"] != "ok":
            once = f" ({_ms(m['single_call_ms'])} once)" if "single_call_ms" in m else ""
            return skip(m["reason"]) + once
        return f"{_ms(m['median_ms'])} ({_ms(m['p20_ms'])}–{_ms(m['p80_ms'])})"

    def speed_cell(m):
        return f"{m['speedup_vs_naive']:.3g}x" if m.get("speedup_vs_naive") else ""

    def mem_cell(m):
        b = m.get("peak_extra_bytes")
        return "" if b is None else f"{b / 2 ** 20:.1f}"

    gpu = report["settings"]["device"] == "cuda"
    head = ["config", "N", "contender", "forward ms", "vs naive", "train step ms", "vs naive", "EMA ms",
            "vs naive", "fwd peak MiB", "train peak MiB", "agree"] + (["floor %"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        f, t, e = (r["measurements"][w] for w in MEASUREMENTS)
        # skip reasons common to a whole row appear once, in the forward cell
        row_reason = f["status"] != "ok" and t.get("reason") == f.get("reason") == e.get("reason")
        cells = [f"{r['config']} (S={r['S']} d={r['d']} K={r['K']})", str(r["N"]), r["contender"], time_cell(f), speed_cell(f),
                 "" if row_reason else time_cell(t), speed_cell(t), "" if row_reason else time_cell(e),
                 speed_cell(e), mem_cell(f), mem_cell(t),
                 f"{f['agreement']:.4f}" if "agreement" in f else ""]
        if gpu:
            frac = f.get("floor_fraction")
            cells.append(f"{100 * frac:.1f}" if frac else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"skip[{i + 1}]: {reason}" for i, reason in enumerate(reasons)]
    return "\n".join(lines), notes


def print_report(report: dict) -> None:
    s, m = report["settings"], report["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu_model']} (torch threads: {m['torch_threads']})"
    table, skip_notes = format_table(report)
    print(f"PQ benchmark on {where}: dtype {s['dtype']}, median (p20–p80) of {s['repeats']} timed calls")
    print()
    print(table)
    print()
    mem = {r["measurements"][w].get("memory_method") for r in report["results"] for w in MEASUREMENTS} - {None}
    print("Notes:")
    print(f"- time: {s['timer']}; 'vs naive' = naive median / contender median (>1 is faster).")
    print("- train step = layer forward + (loss + stand-in decoder loss).backward() + EMA codebook update; "
          "EMA = the codebook update alone, from given nearest-codeword indices.")
    for key in sorted(mem):
        print(f"- peak MiB [{key}]: {timing.MEMORY_METHODS[key]}; extra over the level before the call, "
              "outputs included.")
    rows = {}
    for r in report["results"]:
        rows[r["config"]] = rows.get(r["config"]) or r["measurements"]["forward"].get("agreement_rows")
    print(f"- agree: {s['agreement']}; rows checked: "
          + ", ".join(f"{k} {v}" for k, v in rows.items() if v) + ".")
    if s.get("floor_model"):
        print(f"- floor %: {s['floor_model']['model']}.")
    compiled = {r["config"]: r["compile_s"] for r in report["results"] if "compile_s" in r}
    if compiled:
        print("- torch.compile first-call (compile) time, s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in compiled.items()))
    load = m.get("load_average")
    if load and m.get("cpu_count") and load[0] > m["cpu_count"]:
        print(f"- machine load average {load[0]:.1f} on {m['cpu_count']} CPUs during the run: other processes "
              "competed for the cores, so CPU times are inflated and noisy.")
    for line in skip_notes:
        print(f"- {line}")


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(report["configs"])
    contenders = list(report["contenders"])
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
                    ys.append(m["median_ms"])
            if xs:
                ax.bar(xs, ys, width=width, label=name, color=f"C{j % 10}")  # same colour in every panel
        ax.set_yscale("log")
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels([f"{c}\nN={report['configs'][c]['N']}" for c in configs], fontsize=8)
        ax.set_ylabel("median ms (log)")
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
    report = run(args)
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
