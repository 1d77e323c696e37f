"""How the cutoff below which a direction counts as undetermined (`tie_break`; 1e-6 of the
largest singular value until 2026-12-03, 1e-3 since, chosen from these results) trades
round-off robustness against what is carried, on the real pairs (BBC News).

    tasklift finetune minilm-l3 bbc_news --test-size 0.2 --train-limit 1000 --max-length 64 \
        -o runs/real/minilm-l3_bbc_news_ft --quiet
    python reports/cutoff/run.py [--draws 0,1,2]     # writes reports/cutoff/results.{json,md}
    tasklift finetune minilm-l6 bbc_news ... -o runs/real/minilm-l6_bbc_news_ft --quiet
    python reports/cutoff/run.py --pair minilm-l6:minilm-l3 --cutoffs 1e-6,1e-3 --draws 0,1,2
    python reports/cutoff/run.py --report                # results.md from results.json

Side by side in one process, draws of scripts/transfer_real.py (128 calibration, 200 validation
inputs), BiCo at each cutoff with float64 and float32 statistics: test accuracy, the scale
chosen, the share of the maps' directions left open, and how far τ_B moves between the two
statistics precisions (a perturbation of about 1e-7 of the statistics: what a different BLAS,
summation order or number of processes does to them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tasklift.data import calibration_split
from tasklift.io import write_text
from tasklift.report import markdown_table
from tasklift.taskvector import dense
from tasklift.transfer import Transfer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from transfer_real import real_split  # noqa: E402

OUT = Path(__file__).parent
CUTOFFS = "1e-6,1e-5,1e-4,1e-3"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", default="0", help="comma-separated calibration draws")
    ap.add_argument("--pair", default="minilm-l3:minilm-l6", help="A:B (A_ft in runs/real)")
    ap.add_argument("--cutoffs", default=CUTOFFS, help="comma-separated tie_break values")
    ap.add_argument("--token", default="all", help="word: pairs across tokenizers (MPNet)")
    ap.add_argument("--report", action="store_true", help="only rewrite results.md")
    args = ap.parse_args()
    path = OUT / "results.json"
    if args.report:
        report(json.loads(path.read_text()))
        return
    a, b = args.pair.split(":")
    a_ft = f"runs/real/{a}_bbc_news_ft"
    train, test = real_split("bbc_news", a_ft, "0.2")
    rows = json.loads(path.read_text()) if path.is_file() else []
    for draw in map(int, args.draws.split(",")):
        calib, val, _ = calibration_split(train, calib=128, val=200, seed=draw)
        for cut in map(float, args.cutoffs.split(",")):
            if any(r["pair"] == f"{a} -> {b}" and r["draw"] == draw and r["tie_break"] == cut
                   for r in rows):  # fmt: skip
                continue  # resumable
            taus, got = {}, {}
            for dtype in ("float64", "float32"):
                t0 = time.time()
                t = Transfer(a, a_ft, b, method="bico", max_length=64, token=args.token,
                             tie_break=cut, stats_dtype=dtype, device="cpu",
                             progress=False)  # fmt: skip
                t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
                taus[dtype] = {k: dense(v) for k, v in t.task_vector_.deltas.items()}
                got[dtype] = (t.scale_, round(t.score(test.X, test.y), 4), t.open_directions_,
                              round(time.time() - t0, 1))  # fmt: skip
            tau, other = taus["float64"], taus["float32"]
            top = max(float(v.abs().max()) for v in tau.values())
            gap = max(float((other[k] - v).abs().max()) for k, v in tau.items())
            (scale, acc, (shut, of), secs), (scale32, acc32, _, _) = got["float64"], got["float32"]
            rows.append({"pair": f"{a} -> {b}", "draw": draw, "tie_break": cut, "scale": scale,
                         "test accuracy": acc,
                         "f32 stats: scale": scale32, "f32 stats: test accuracy": acc32,
                         "open directions": f"{shut} / {of}",
                         "τ_B moved by f32 stats (of its max)": f"{gap / top:.2e}",
                         "seconds (f64)": secs})  # fmt: skip
            print(rows[-1], flush=True)
            write_text(path, json.dumps(rows, indent=1) + "\n")
    report(rows)


def summary(rows: list[dict]) -> list[dict]:
    """Per pair and cutoff over the draws: test accuracy (mean ± sd) and the largest move."""
    out = []
    for key in sorted({(r["pair"], r["tie_break"]) for r in rows}):
        got = [r for r in rows if (r["pair"], r["tie_break"]) == key]
        acc = np.array([r["test accuracy"] for r in got])
        moved = [float(r["τ_B moved by f32 stats (of its max)"]) for r in got]
        opened = [int(r["open directions"].split(" / ")[0]) for r in got]
        of = int(got[0]["open directions"].split(" / ")[1])
        out.append({"pair": key[0], "tie_break": key[1], "draws": len(got),
                    "test accuracy": f"{acc.mean():.4f} ± {acc.std(ddof=1):.4f}"
                    if len(got) > 1 else f"{acc[0]:.4f}",
                    "τ_B moved by f32 stats, largest (of its max)": f"{max(moved):.1e}",
                    "τ_B moved, each draw": ", ".join(f"{m:.1e}" for m in moved),
                    "open directions": f"{100 * np.mean(opened) / of:.1f}%"})  # fmt: skip
    return out


def report(rows: list[dict]) -> None:
    """results.json and results.md (the summary, then every row)."""
    rows.sort(key=lambda r: (r["pair"], r["draw"], r["tie_break"]))
    write_text(OUT / "results.json", json.dumps(rows, indent=1) + "\n")
    table = summary(rows)
    text = (markdown_table(table, list(table[0])) + "\n\nEvery draw:\n\n"
            + markdown_table(rows, list(rows[0])) + "\n")  # fmt: skip
    write_text(OUT / "results.md", text)
    print(text)


if __name__ == "__main__":
    main()
