"""(b) Fit time and peak memory: tasklift's streamed solver vs numpy.linalg.lstsq and sklearn Ridge.

The streamed solver sees the rows batch by batch (generated on the fly, as extraction would
produce them), so its memory is O(d²) whatever N is; the in-memory solvers need all of X and Y.
Peak memory is what tracemalloc sees numpy allocate, the data included.

    python benchmarks/bench_solver.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import measure, write
from sklearn.linear_model import Ridge

from tasklift.maps import LeastSquaresMap, RidgeMap
from tasklift.stats import GramStats

BATCH = 2048


def batches(n: int, d: int, seed: int = 0):
    """One planted regression problem, produced in batches (Y is d-wide, like a task matrix)."""
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(seed + 1).normal(size=(d, d)) / np.sqrt(d)
    for start in range(0, n, BATCH):
        X = rng.normal(size=(min(BATCH, n - start), d))
        yield X, X @ W + 0.1 * rng.normal(size=X.shape)


def streamed(n, d, alpha):
    stats = GramStats()
    for X, Y in batches(n, d):
        stats.update(X, Y)
    m = RidgeMap(alpha=alpha) if alpha else LeastSquaresMap()
    return m.fit_stats(stats).coef_.T


def in_memory(n, d):
    X, Y = (np.concatenate(p) for p in zip(*batches(n, d), strict=True))
    return X, Y


def numpy_lstsq(n, d, alpha):
    X, Y = in_memory(n, d)
    return np.linalg.lstsq(X, Y, rcond=None)[0]


def sklearn_ridge(n, d, alpha):
    X, Y = in_memory(n, d)
    lam = alpha * np.einsum("ij,ij->", X, X) / d  # tasklift's relative alpha, made absolute
    return Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(X, Y).coef_.T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    args = ap.parse_args()
    ns = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    ds = [384] if args.quick else [384, 768, 1024]
    rows = []
    for d in ds:
        for n in ns:
            W_s, t_s, m_s = measure(streamed, n, d, 0.0)
            W_n, t_n, m_n = measure(numpy_lstsq, n, d, 0.0)
            W_r, t_r, m_r = measure(streamed, n, d, 1e-3)
            W_k, t_k, m_k = measure(sklearn_ridge, n, d, 1e-3)
            rows.append(
                {
                    "N": n,
                    "d": d,
                    "tasklift lstsq s": round(t_s, 3),
                    "numpy lstsq s": round(t_n, 3),
                    "speed-up vs numpy": round(t_n / t_s, 2),
                    "tasklift ridge s": round(t_r, 3),
                    "sklearn Ridge s": round(t_k, 3),
                    "speed-up vs sklearn": round(t_k / t_r, 2),
                    "tasklift peak MB": round(m_s / 2**20, 1),
                    "numpy peak MB": round(m_n / 2**20, 1),
                    "sklearn peak MB": round(m_k / 2**20, 1),
                    "max abs dW vs numpy": float(np.abs(W_s - W_n).max()),
                    "max abs dW vs sklearn": float(np.abs(W_r - W_k).max()),
                }
            )
            print(rows[-1], flush=True)
    write(
        "solver",
        rows,
        list(rows[0]),
        title="Streamed solver vs in-memory solvers",
        notes="Time to fit W (d×d) from N rows, data generation included for all; peak = "
        "numpy memory traced by tracemalloc. tasklift's peak stays O(d²) as N grows.",
    )


if __name__ == "__main__":
    main()
