"""What BiCo's remaining work costs at its widths (issue 21.2): the pieces of one Procrustes solve
and of one statistics update, each timed alone on one thread, so the profile's solve and
statistics phases can be read against them. A d x d cross-covariance with a spectrum falling
over 8 decades (as MiniLM's FFN signals do, most of it under the 1e-3 cutoff): its float64 Gram,
the Gram's eigendecomposition (torch's LAPACK, what `solvers.procrustes` runs), its eigenvalues
alone, LAPACK's partial solver for the directions above the cutoff (scipy's `subset_by_value`,
the alternative that computes fewer eigenvectors), and a float32 eigendecomposition; and the
float32 XᵀY of one calibration batch (16 x 64 tokens) with its achieved GFLOP/s.

    OMP_NUM_THREADS=1 python benchmarks/bench_solve_floor.py [--width 1536] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch
from _common import write

#: tokens of one calibration batch (16 inputs x 64 tokens) and the cutoff (`methods.TIE_BREAK`)
TOKENS, CUTOFF = 1024, 1e-3


def best(fn, repeats: int) -> float:
    """The fastest of `repeats` runs of fn(), in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    d, r = args.width, args.repeats
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    xy = (u * torch.logspace(0, -8, d, dtype=torch.float64)) @ v.T
    gram = xy @ xy.T
    floor = CUTOFF**2 * float(torch.linalg.eigvalsh(gram)[-1])  # σ > cutoff · σ_max
    kept = int((torch.linalg.eigvalsh(gram) > floor).sum())
    x, y = (torch.randn(TOKENS, d, generator=g) for _ in range(2))
    rows = [
        ("Gram xy xyᵀ, float64", best(lambda: xy @ xy.T, r)),
        ("eigh of the Gram, float64 (the solve's)", best(lambda: torch.linalg.eigh(gram), r)),
        ("eigenvalues alone, float64", best(lambda: torch.linalg.eigvalsh(gram), r)),
        (f"eigenpairs above the cutoff only (scipy subset_by_value, {kept} of {d})",
         best(lambda: scipy.linalg.eigh(gram.numpy(), subset_by_value=(floor, np.inf)), r)),
        ("eigh of the Gram, float32", best(lambda: torch.linalg.eigh(gram.float()), r)),
        (f"XᵀY of one batch ({TOKENS} tokens), float32", best(lambda: x.T @ y, r)),
    ]  # fmt: skip
    flops = 2 * TOKENS * d * d / rows[-1][1] / 1e9
    out = [{"step": name, "seconds": round(s, 4)} for name, s in rows]
    out[-1]["GFLOP/s"] = round(flops, 1)
    notes = (
        f"d = {d}, threads = {torch.get_num_threads()}, best of {r}; the cross-covariance's "
        "singular values fall from 1 to 1e-8 (float64), so the 1e-3 cutoff keeps part of them."
    )
    title = f"The pieces of a {d}-wide solve and of a statistics update"
    write("solve_floor", out, ["step", "seconds", "GFLOP/s"], title=title, notes=notes)


if __name__ == "__main__":
    main()
