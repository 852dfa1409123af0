#!/usr/bin/env python
"""The README's performance table and summary lines from a ``bench_pq.py --json`` report.

    python -m benchmarks.readme_table build/bench.json      # after `make bench`; paste into README.md

One row per config: our fastest backend's forward, each peer's, torch.compile's and naive's (with the rows a
contender ran on when fewer than the config's N), our train step and EMA update with their speed-up over naive (per
row), and the forward peak memory naive -> ours; then the benchmark's summary lines.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .bench_pq import _per_row, summary_lines


def _ms(v: float) -> str:
    return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"


def _x(v: float | None) -> str:
    return "" if not v else f" ({v:.2g}×)" if v < 10 else f" ({v:.0f}×)"


def _fwd(row: dict | None) -> str:
    if row is None or row["measurements"]["forward"]["status"] != "ok":
        return "–"
    text = _ms(row["measurements"]["forward"]["median_ms"])
    return text + (f" ({row['N']} rows)" if row["N"] < row["config_N"] else "")


def _mib(row: dict | None) -> str:
    b = row["measurements"]["forward"].get("peak_extra_bytes") if row else None
    return "–" if b is None else f"{b / 2 ** 20:.1f}"


def readme_table(report: dict) -> str:
    results = report["results"]
    kinds = {n: c["kind"] for n, c in report["contenders"].items()}
    peers = [n for n in report["contenders"] if kinds[n] == "peer" and any(r["contender"] == n for r in results)]
    head = ["config (N)", "**ours** fwd", *[f"{p} fwd" for p in peers], "torch.compile fwd", "naive fwd",
            "ours train step (× naive)", "ours EMA (× naive)", "fwd peak MiB naive → ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cfg in report["configs"].items():
        rows = {r["contender"]: r for r in results if r["config"] == name}
        ours = [r for r in rows.values() if kinds[r["contender"]] == "ours" and _per_row(r, "forward")]
        if not ours:
            continue
        best = min(ours, key=lambda r: _per_row(r, "forward"))
        t, e = best["measurements"]["train"], best["measurements"]["ema"]
        naive = rows.get("naive")
        cells = [f"{cfg.get('label', name)} ({cfg['N']})", f"**{best['contender']} {_fwd(best)}**",
                 *[_fwd(rows.get(p)) for p in peers], _fwd(rows.get("torch.compile")), _fwd(naive),
                 _ms(t["median_ms"]) + _x(t.get("speedup_vs_naive")) if t["status"] == "ok" else "–",
                 _ms(e["median_ms"]) + _x(e.get("speedup_vs_naive")) if e["status"] == "ok" else "–",
                 f"{_mib(naive)} → {_mib(best)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.readme_table REPORT.json")
    path = Path(argv[0])
    if not path.is_file():
        raise SystemExit(f"no such report: {path}")
    report = json.loads(path.read_text())
    if report.get("schema") != "pqgan-bench/2":
        raise SystemExit(f"{path}: schema {report.get('schema')!r}, expected 'pqgan-bench/2' (rerun bench_pq.py)")
    m = report["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu_model']}, {m['torch_threads']} threads"
    load = m.get("load_average")
    print(f"{m['date_utc'][:10]}, {where}, torch {m['torch']}, commit {m.get('git_commit')}"
          + (f", load average {load[0]:.1f} on {m['cpu_count']} CPUs" if load else ""))
    print()
    print(readme_table(report))
    print()
    print("\n".join(summary_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
