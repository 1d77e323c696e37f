"""Shared helpers for the benchmarks: timing, peak memory, and writing JSON + markdown."""

from __future__ import annotations

import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tasklift.io import write_text  # noqa: E402
from tasklift.report import markdown_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(fn, *args, repeat: int = 1):
    """Run fn(*args) `repeat` times; return (last result, best seconds, peak traced bytes)."""
    best, out = float("inf"), None
    tracemalloc.start()
    for _ in range(repeat):
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, best, peak


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the architecture: runs on an Intel
    and an AMD machine differ in more than their speed (float64 LAPACK, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write(name: str, rows: list[dict], columns: list[str], *, title: str, notes: str = "") -> None:
    """Write results/NAME.json and results/NAME.md and print the table."""
    table = markdown_table(rows, columns)
    write_text(
        RESULTS / f"{name}.json", json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n"
    )
    write_text(
        RESULTS / f"{name}.md", f"# {title}\n\n{notes}\n\n{table}\n\nMachine: `{machine()}`\n"
    )
    print(table)
