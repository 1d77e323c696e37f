"""What BiCo's remaining work costs at its widths (issue 21.2): the pieces of one Procrustes solve
and of one statistics update, each timed alone on one thread, so the profile's solve and
statistics phases can be read against them. A d x d cross-covariance with a spectrum falling
over 8 decades (as MiniLM's FFN signals do, most of it under the 1e-3 cutoff): its float64 Gram,
the Gram's eigendecomposition (torch's LAPACK, what `solvers.procrustes` runs), its eigenvalues
alone, LAPACK's partial solver for the directions above the cutoff (scipy's `subset_by_value`,
the alternative that computes fewer eigenvectors, beside scipy's full solve as its control),
and a float32 eigendecomposition; and the float32 XᵀY of one calibration batch (16 x 64 tokens)
with its achieved GFLOP/s. With --real, also what naive float32 solves would do on the real
MiniLM-L6 -> L3 BBC fit (draw 0, scale 1): the fit with every eigendecomposition of 1000 rows
or more done in float32 (the Gram squares σ: float32 resolves σ only down to about 3.5e-4 of
the largest, near the 1e-3 cutoff; no float64 refinement tried), beside today's, its solve
seconds, τ_B's largest gap (relative to τ_B's largest entry) and test accuracy; and the
float64 fit's eigendecompositions (how many, their seconds), its first wide Gram solved again
alone by torch, by its eigenvalues alone and by scipy's LAPACK (OpenBLAS beside torch's MKL).

    OMP_NUM_THREADS=1 python benchmarks/bench_solve_floor.py [--width 1536] [--repeats 3] [--real]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

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


@contextmanager
def patched_eigh(float32: bool = False, min_rows: int = 1000):
    """torch.linalg.eigh recording (rows, seconds, the matrix if float64 of `min_rows` rows or
    more) of every call in the list it yields; with float32, those wide ones solved in float32."""
    real, calls = torch.linalg.eigh, []

    def eigh(a, *args, **kw):
        wide = a.dtype == torch.float64 and a.shape[-1] >= min_rows
        t0 = time.perf_counter()
        if float32 and wide:
            lam, u = real(a.float(), *args, **kw)
            lam, u = lam.double(), u.double()
        else:
            lam, u = real(a, *args, **kw)
        calls.append((a.shape[-1], time.perf_counter() - t0, a.clone() if wide else None))
        return lam, u

    torch.linalg.eigh = eigh
    try:
        yield calls
    finally:
        torch.linalg.eigh = real


def real_pair(runs: str, repeats: int) -> list[dict]:
    """Today's fit and one with float32 eigendecompositions, on MiniLM-L6 -> L3 BBC; the
    eigendecompositions of today's fit (how many, their seconds) and its first wide Gram solved
    again alone by torch (the solve's), by its eigenvalues alone and by scipy's LAPACK."""
    from bench_profile import real_split, tau_gap  # bench_profile puts scripts/ on the path

    from tasklift.data import calibration_split
    from tasklift.transfer import Transfer

    a_ft = f"{runs}/minilm-l6_bbc_news_ft"
    train, test = real_split("bbc_news", a_ft, "0.2")
    calib, val, _ = calibration_split(train, calib=128, val=200, seed=0)
    fits, calls = {}, {}
    for name in ("float64 solves", "float32 eigendecompositions"):
        t = Transfer("minilm-l6", a_ft, "minilm-l3", max_length=64, device="cpu", scales=[1.0])
        with patched_eigh(float32=name.startswith("float32")) as calls[name]:
            t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
        fits[name] = t
    ref = fits["float64 solves"].task_vector_
    out = [{"step": f"MiniLM-L6 -> L3 fit, {name}", "seconds": round(t.timings_["solve"], 2),
            "τ_B gap": f"{tau_gap(t.task_vector_, ref):.1e}",
            "test accuracy": round(t.score(test.X, test.y), 4)}
           for name, t in fits.items()]  # fmt: skip
    done = calls["float64 solves"]
    wide = [c for c in done if c[2] is not None]
    gram = wide[0][2]
    for label, part in (
        (f"{len(wide)} of {wide[0][0]} rows", wide),
        (f"{len(done) - len(wide)} narrower", [c for c in done if c[2] is None]),
    ):
        out.append(
            {
                "step": f"  its eigendecompositions, {label}",
                "seconds": round(sum(c[1] for c in part), 2),
            }
        )
    out += [
        {"step": f"  its first {len(gram)}-wide Gram again: eigh, torch (the solve's)",
         "seconds": round(best(lambda: torch.linalg.eigh(gram), repeats), 4)},
        {"step": "  the same, eigenvalues alone",
         "seconds": round(best(lambda: torch.linalg.eigvalsh(gram), repeats), 4)},
        {"step": "  the same, scipy's LAPACK (driver evd)",
         "seconds": round(best(lambda: scipy.linalg.eigh(gram.numpy(), driver="evd"), repeats), 4)},
    ]  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", action="store_true", help="also float32 solves on the real pair")
    ap.add_argument("--runs", default="runs/real", help="where the fine-tuned A is")
    args = ap.parse_args()
    d, r = args.width, args.repeats
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    xy = (u * torch.logspace(0, -8, d, dtype=torch.float64)) @ v.T
    gram = xy @ xy.T
    lam = torch.linalg.eigvalsh(gram)
    floor = CUTOFF**2 * float(lam[-1])  # σ > cutoff · σ_max
    kept = int((lam > floor).sum())
    x, y = (torch.randn(TOKENS, d, generator=g) for _ in range(2))
    rows = [
        ("Gram xy xyᵀ, float64", best(lambda: xy @ xy.T, r)),
        ("eigh of the Gram, float64 (the solve's)", best(lambda: torch.linalg.eigh(gram), r)),
        ("eigenvalues alone, float64", best(lambda: torch.linalg.eigvalsh(gram), r)),
        ("eigh of the Gram, float64, scipy (the control for the next row)",
         best(lambda: scipy.linalg.eigh(gram.numpy()), r)),
        (f"eigenpairs above the cutoff only (scipy subset_by_value, {kept} of {d})",
         best(lambda: scipy.linalg.eigh(gram.numpy(), subset_by_value=(floor, np.inf)), r)),
        ("eigh of the Gram, float32", best(lambda: torch.linalg.eigh(gram.float()), r)),
        (f"XᵀY of one batch ({TOKENS} tokens), float32", best(lambda: x.T @ y, r)),
    ]  # fmt: skip
    flops = 2 * TOKENS * d * d / rows[-1][1] / 1e9
    out = [{"step": name, "seconds": round(s, 4)} for name, s in rows]
    out[-1]["GFLOP/s"] = round(flops, 1)
    out += real_pair(args.runs, r) if args.real else []
    notes = (
        f"d = {d}, threads = {torch.get_num_threads()}, best of {r}; the cross-covariance's "
        "singular values fall from 1 to 1e-8 (float64), so the 1e-3 cutoff keeps part of them. "
        "Real-pair rows (--real): 'seconds' is the fit's solve phase; 'τ_B gap' is max |τ_B − "
        "τ_B(float64 solves)| / max |τ_B(float64 solves)|; the indented rows: the float64 fit's "
        "eigendecompositions (summed seconds) and its first wide Gram timed alone. "
        f"torch's LAPACK: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}."
    )
    title = f"The pieces of a {d}-wide solve and of a statistics update"
    cols = ["step", "seconds", "GFLOP/s", "τ_B gap", "test accuracy"]
    write("solve_floor", out, cols, title=title, notes=notes)


if __name__ == "__main__":
    main()
