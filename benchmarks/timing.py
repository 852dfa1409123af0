"""Timers, peak-memory probes and machine facts for the benchmark.

Timing
    CPU:  ``time.perf_counter`` around each call, after ``warmup`` untimed calls; ``repeats`` samples.
    GPU:  ``triton.testing.do_bench`` (L2 flushed between calls) when triton is importable, else CUDA events
          around each call after warm-up. Both report the median and the 20th/80th percentiles.
Peak extra memory (bytes above what was allocated before the call, outputs included)
    GPU:  ``torch.cuda.max_memory_allocated`` delta.
    CPU:  torch's own allocation events (``torch.profiler`` with ``profile_memory=True``): running total of every
          CPU allocation and free during one call, peak. It sees every tensor torch allocates; it does NOT see
          memory allocated outside torch (numpy, faiss): for those contenders ``tracemalloc`` is used instead,
          which sees numpy buffers but not a library's internal C++ buffers.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


class TooSlow(Exception):
    """Raised by ``measure`` when the warm-up call exceeded the per-call limit; ``seconds``: that call's time."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    samples_ms: list[float] = field(default_factory=list)
    timer: str = ""

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms, "min_ms": self.min_ms,
                "max_ms": self.max_ms, "n_samples": len(self.samples_ms), "samples_ms": self.samples_ms[:100],
                "timer": self.timer}


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(samples_ms: list[float], timer: str) -> Timing:
    s = sorted(samples_ms)
    return Timing(statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8), s[0], s[-1], samples_ms, timer)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1,
            max_call_s: Optional[float] = None) -> tuple[Timing, object]:
    """(median and spread of ``fn()``'s wall time, the first call's result). Raises ``TooSlow`` when the first
    (warm-up) call exceeds max_call_s."""
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    first = time.perf_counter() - t0
    if max_call_s is not None and first > max_call_s:
        raise TooSlow(f"one call took {first:.1f} s (limit {max_call_s:g} s per call; raise --max-call-s)", first)
    for _ in range(max(0, warmup - 1)):
        fn()
    sync(device)
    if device == "cuda":
        t0 = time.perf_counter()  # a warm call, to size do_bench's time budget (the first may have compiled)
        fn()
        sync(device)
        return _measure_cuda(fn, repeats, time.perf_counter() - t0), result
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _summary(samples, "time.perf_counter"), result


def _measure_cuda(fn: Callable[[], object], repeats: int, call_s: float) -> Timing:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        # do_bench runs as many calls as fit in `rep` ms: ask for enough time to get >= repeats samples (>= 5 for
        # slow contenders). return_mode="all" (triton >= 3.0) returns every sample; else fall back to quantiles.
        call_ms = call_s * 1e3
        rep_ms = min(max(100.0, repeats * call_ms), max(10_000.0, 5 * call_ms))  # >= 5 samples, <= ~10 s
        try:
            samples = list(do_bench(fn, warmup=25, rep=rep_ms, return_mode="all"))
            return _summary(samples, "triton.testing.do_bench")
        except TypeError:
            p20, p50, p80 = do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
            return Timing(p50, p20, p80, p20, p80, [], "triton.testing.do_bench")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda events")


# --- memory ------------------------------------------------------------------------------------------------------

MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated delta",
    "torch-profiler": "peak of torch's CPU allocation events during one call (torch.profiler, profile_memory=True)",
    "tracemalloc": "tracemalloc peak (numpy buffers; not the library's internal C++ buffers)",
}


def peak_extra_bytes(fn: Callable[[], object], device: str, method: str = "torch") -> tuple[Optional[int], str]:
    """(peak bytes allocated during one ``fn()`` above the level before it, method key), or (None, reason)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "cuda"
    if method == "tracemalloc":
        tracemalloc.start()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak, "tracemalloc"
    return _cpu_profiler_peak(fn)


def _cpu_profiler_peak(fn: Callable[[], object]) -> tuple[Optional[int], str]:
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError as err:  # private API: absent in some torch versions
        return None, f"torch profiler memory events unavailable ({err})"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError as err:
        return None, f"torch profiler memory events unavailable ({err})"
    events = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak, "torch-profiler"


# --- native log noise ---------------------------------------------------------------------------------------------

# Lines that torch's C++ side (kineto profiler, CPU allocator) writes straight to file descriptor 2 on every memory
# probe: informational, not warnings about the run.
NATIVE_NOISE = re.compile(r"profiler_start|profiler_stop|gpuGetDeviceCount failed|"
                          r"Memory block of unknown size was allocated before the profiling started")


class NativeLogFilter:
    """Context manager: routes file descriptor 2 (where C++ libraries log) through a filter that drops the lines
    matching ``NATIVE_NOISE`` and passes every other line through. Python's ``sys.stderr`` keeps writing to the
    original stream directly (progress lines, warnings). ``suppressed``: the number of dropped lines."""

    def __init__(self, pattern: re.Pattern = NATIVE_NOISE):
        self.pattern, self.suppressed = pattern, 0
        self._thread = None

    def __enter__(self) -> "NativeLogFilter":
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._old_stderr = sys.stderr
        sys.stderr = open(os.dup(self._saved), "w", buffering=1, encoding="utf-8", errors="replace")
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_fd: int) -> None:
        with open(read_fd, "rb") as pipe:
            for raw in pipe:
                if self.pattern.search(raw.decode("utf-8", "replace")):
                    self.suppressed += 1
                else:
                    os.write(self._saved, raw)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)      # closes the pipe's last write end held by this process: the pump sees EOF
        self._thread.join(timeout=2)  # (a child process still holding it just leaves the daemon thread behind)
        sys.stderr.close()
        sys.stderr = self._old_stderr
        os.close(self._saved)


# --- machine -----------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - any import problem means "not there"
        return None


def machine_info(device: str) -> dict:
    """CPU/GPU model, core and thread counts, library versions, date."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "device": device,
        "gpu": None,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "sms": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2 ** 30, 1),
                       "capability": f"{props.major}.{props.minor}"}
    return info


# --- roofline ----------------------------------------------------------------------------------------------------

# name fragment -> (FP32 lanes per SM, boost clock GHz, DRAM bandwidth GB/s); used when the driver doesn't say.
_GPU_TABLE = {"H200": (128, 1.98, 4800), "H100": (128, 1.98, 3350), "A100": (64, 1.41, 2039),
              "L40": (128, 2.49, 864), "4090": (128, 2.52, 1008)}


def gpu_peaks(peak_tinst: Optional[float] = None, peak_gbs: Optional[float] = None) -> dict:
    """FP32 instruction rate (FMA counted once, 1/s) and DRAM bandwidth (bytes/s) of GPU 0, with their sources."""
    props = torch.cuda.get_device_properties(0)
    lanes, clock_ghz, table_bw = next((v for k, v in _GPU_TABLE.items() if k in props.name.upper()),
                                      (128, None, None))
    clock_khz = getattr(props, "clock_rate", None)
    clock = clock_khz * 1e3 if clock_khz else (clock_ghz * 1e9 if clock_ghz else None)
    inst = peak_tinst * 1e12 if peak_tinst else (props.multi_processor_count * lanes * clock if clock else None)
    mem_clock, bus = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if peak_gbs:
        bw = peak_gbs * 1e9
    elif mem_clock and bus:
        bw = 2 * mem_clock * 1e3 * bus / 8
    else:
        bw = table_bw * 1e9 if table_bw else None
    return {"fp32_inst_per_s": inst, "bytes_per_s": bw}


def floor_seconds(N: int, S: int, d: int, K: int, x_bytes: int, peaks: dict) -> Optional[float]:
    """Lower bound on one fused assign+lookup: max(arithmetic, memory) time.

    arithmetic: (2d + 1) FP32 instructions per (row, subspace, code): d subtractions, d FMAs, one compare;
    memory: read x + write quantized (N*S*d elements each) + write int64 indices + read codebooks once.
    """
    if not peaks.get("fp32_inst_per_s") or not peaks.get("bytes_per_s"):
        return None
    arith = N * S * K * (2 * d + 1) / peaks["fp32_inst_per_s"]
    memory = (2 * N * S * d * x_bytes + 8 * N * S + 4 * S * K * d) / peaks["bytes_per_s"]
    return max(arith, memory)
