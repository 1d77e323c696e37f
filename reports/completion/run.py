"""What mapping undetermined directions to zero did to a real pair (MiniLM-L3 -> L6, BBC News).

    tasklift finetune minilm-l3 bbc_news --test-size 0.2 --train-limit 1000 --max-length 64 \
        -o runs/real/minilm-l3_bbc_news_ft --quiet
    python reports/completion/run.py            # writes reports/completion/results.{json,md}

Side by side in one process, draw 0 of scripts/transfer_real.py (128 calibration, 200 validation
inputs), BiCo: the current `solvers.procrustes` ("zero": directions no signal determines map to
zero) against the completion it replaced ("svd": such directions completed by the SVD, copied
below only to measure the change), each with float64 and float32 statistics. Reports test
accuracy, the scale chosen, how far τ_B moves between the two statistics precisions (round-off
sensitivity), and how many directions were open.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from tasklift import maps, solvers
from tasklift.data import calibration_split
from tasklift.io import write_text
from tasklift.report import markdown_table
from tasklift.taskvector import dense
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from transfer_real import real_split  # noqa: E402

OUT = Path(__file__).parent
A_FT = "runs/real/minilm-l3_bbc_news_ft"


def svd_completion(xy, tie=None, *, rtol=solvers.NULL_RTOL):
    """The replaced rule: open directions settled by the tie, the rest by any SVD completion."""
    if tie is None:
        u, s, vt = np.linalg.svd(xy, full_matrices=False)
        return u @ vt, int((s <= rtol * s[0]).sum())
    u, s, vt = np.linalg.svd(xy, full_matrices=True)
    k = min(xy.shape)
    r = int((s > rtol * s[0]).sum())
    if r == k:
        return u[:, :k] @ vt[:k], 0
    un, vn = u[:, r:], vt[r:].T
    q = svd_completion(un.T @ tie @ vn, rtol=rtol)[0]
    return u[:, :r] @ vt[:r] + un @ q @ vn.T, k - r


def main() -> None:
    train, test = real_split("bbc_news", A_FT, "0.2")
    calib, val, _ = calibration_split(train, calib=128, val=200, seed=0)
    current, opened, taus, rows = solvers.procrustes, [], {}, []

    def counting(fn):
        def solve(xy, tie=None, *, rtol):
            R, open_dims = fn(xy, tie, rtol=rtol)
            opened.append((open_dims, min(xy.shape)))
            return R, open_dims

        return solve

    for rule, fn in (("zero", current), ("svd", svd_completion)):
        for dtype in ("float64", "float32"):
            opened.clear()
            maps.procrustes = counting(fn)
            t0 = time.time()
            t = Transfer("minilm-l3", A_FT, "minilm-l6", method="bico", max_length=64,
                         tie_break=PREVIOUS_DEFAULTS["tie_break"],
                         stats_dtype=dtype, device="cpu", progress=False)  # fmt: skip
            t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
            taus[rule, dtype] = {k: dense(v) for k, v in t.task_vector_.deltas.items()}
            seconds = round(time.time() - t0, 1)
            shut, of = sum(o for o, _ in opened), sum(k for _, k in opened)
            rows.append({"rule": rule, "stats": dtype, "scale": t.scale_,
                         "test accuracy": round(t.score(test.X, test.y), 4),
                         "open directions": f"{shut} / {of}", "maps": len(opened),
                         "seconds": seconds})  # fmt: skip
            print(rows[-1], flush=True)
    maps.procrustes = current
    for row in rows:
        tau, other = taus[row["rule"], "float64"], taus[row["rule"], "float32"]
        top = max(float(v.abs().max()) for v in tau.values())
        gap = max(float((other[k] - v).abs().max()) for k, v in tau.items())
        row["τ_B moved by f32 stats (of its max)"] = f"{gap / top:.2e}"
    write_text(OUT / "results.json", json.dumps(rows, indent=1))
    write_text(OUT / "results.md", markdown_table(rows, list(rows[0])) + "\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
