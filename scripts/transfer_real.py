"""BiCo and its baselines on real pretrained pairs, over several calibration draws (issue 11).

    python scripts/transfer_real.py run --pair minilm-l6:minilm-l3 --data bbc_news
    python scripts/transfer_real.py report runs/transfer_real -o reports/transfer_real

A = the first model, B = the second; A_ft and B_ft are the fine-tuned models of reports/run_real.sh
(same 1,000 training examples, seed 0). Each draw takes its own seeded 128 calibration and 200
validation inputs from what remains of the train split; the probe is trained on those same 328
labelled inputs. Writes <out>/<A>_to_<B>_<data>.json with every draw's rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tasklift.data import align_labels, calibration_split, load_dataset, split, subsample
from tasklift.experiments import transfer_table
from tasklift.io import write_text
from tasklift.loading import label_names
from tasklift.report import markdown_table, plot_bars, write_json
from tasklift.transfer.methods import PREVIOUS_DEFAULTS

METHODS = "bico,activation,gradient,gradfix,gradfix-mean,permutation,naive"
#: BiCo's settings by name: those before 2026-12-03 (every committed table) or today's defaults
SETTINGS = {"previous": dict(PREVIOUS_DEFAULTS), "defaults": {}}


def real_split(data: str, a_ft: str, test_size: str):
    """(train, test) exactly as reports/run_real.sh split them for fine-tuning: labels matched to
    A_ft's by name, seed 0, train capped at 1,000."""
    ds = align_labels(load_dataset(data), label_names(a_ft), model=a_ft)
    size = float(test_size) if float(test_size) < 1 else int(test_size)
    train, test = split(ds, test_size=size, seed=0)
    return subsample(train, fraction=min(1.0, 1000 / len(train)), seed=0), test


def run(args) -> None:
    a, b = args.pair.split(":")
    a_ft, b_ft = f"{args.runs}/{a}_{args.data}_ft", f"{args.runs}/{b}_{args.data}_ft"
    train, test = real_split(args.data, a_ft, args.test_size)
    draws = []
    for draw in range(args.draws):
        calib, val, held = calibration_split(train, calib=128, val=200, seed=draw)
        t0 = time.time()
        rows = transfer_table(
            a, a_ft, b, calib, val, test, train=held, methods=args.methods.split(","),
            target_finetuned=b_ft if draw == 0 else None, max_length=args.max_length,
            token=args.token, center=args.center, device="cpu", **SETTINGS[args.settings],
            scales=[float(v) for v in args.scales.split(",")],
        )  # fmt: skip
        draws.append({"draw": draw, "seconds": round(time.time() - t0, 1), "rows": rows})
        print(json.dumps(draws[-1]), flush=True)
    out = args.output / f"{a}_to_{b}_{args.data}{'_' + args.tag if args.tag else ''}.json"
    settings = {
        **vars(args),
        "output": str(args.output),
        "n_train": len(train),
        "n_test": len(test),
    }
    settings.pop("func")
    write_text(out, json.dumps({"settings": settings, "draws": draws}, indent=1, default=float))
    print(f"wrote {out}")


def _summary(path: Path) -> list[dict]:
    """One row per method: accuracy mean ± sd over draws, the share of the gap from B with the
    carried head to B fine-tuned that it closes, and seconds."""
    run = json.loads(path.read_text())
    a, b = run["settings"]["pair"].split(":")
    refs = {
        r["method"]: r["accuracy"] for r in run["draws"][0]["rows"] if "fine-tuned" in r["method"]
    }
    accs, secs = {}, {}
    for d in run["draws"]:
        for r in d["rows"]:
            if r["method"] not in refs and r.get("accuracy") is not None:
                accs.setdefault(r["method"], []).append(r["accuracy"])
                if "seconds" in r:
                    secs.setdefault(r["method"], []).append(r["seconds"])
    head, top = np.mean(accs["B + carried head"]), refs.get("B fine-tuned", np.nan)
    tag = run["settings"].get("tag")
    if tag:  # a variant of a pair run elsewhere: only its methods, marked, no references again
        accs = {f"{m} [{tag}]": accs[m] for m in run["settings"]["methods"].split(",") if m in accs}
        secs = {f"{m} [{tag}]": secs[m] for m in run["settings"]["methods"].split(",") if m in secs}
        refs = {}
    rows = []
    for method, acc in accs.items():
        rows.append({
            "pair": f"{a} -> {b}", "task": run["settings"]["data"], "method": method,
            "accuracy": f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1) if len(acc) > 1 else 0:.3f}",
            "gap closed": f"{100 * (np.mean(acc) - head) / (top - head):.0f}%" if top > head else "",  # noqa: E501
            "seconds": float(np.mean(secs[method])) if method in secs else None,
            "draws": len(acc), "_mean": float(np.mean(acc)),
        })  # fmt: skip
    for name, acc in refs.items():
        rows.append({"pair": f"{a} -> {b}", "task": run["settings"]["data"], "method": name,
                     "accuracy": f"{acc:.3f}", "_mean": acc})  # fmt: skip
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    settings = list(dict.fromkeys((r["pair"], r["task"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    at = {(r["pair"], r["task"], r["method"]): r["_mean"] for r in rows}
    plot_bars(
        [f"{p.replace('minilm-l', 'L')} / {t}" for p, t in settings],
        {m: [at.get((*s, m), np.nan) for s in settings] for m in methods},
        path,
        title="Task-vector transfer on real pretrained pairs (mean over draws)",
    )


def report(args) -> None:
    rows = [r for p in sorted(args.runs.glob("*_to_*.json")) for r in _summary(p)]
    args.output.mkdir(parents=True, exist_ok=True)
    _plot(rows, args.output / "transfer_real.png")
    cols = ["pair", "task", "method", "accuracy", "gap closed", "seconds", "draws"]
    table = markdown_table(rows, cols)
    write_json(
        args.output / "results.json", [{k: v for k, v in r.items() if k[0] != "_"} for r in rows]
    )
    write_text(args.output / "table.md", table + "\n")
    print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(required=True)
    p = sub.add_parser("run")
    p.add_argument("--pair", required=True, help="A:B, e.g. minilm-l6:minilm-l3")
    p.add_argument("--data", required=True)
    p.add_argument("--runs", default="runs/real", help="where the fine-tuned models are")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--token", default="all")
    p.add_argument("--center", action="store_true", help="centred covariances")
    p.add_argument("--settings", choices=sorted(SETTINGS), default="previous",
                   help="BiCo's cutoff and statistics: before 2026-12-03 or today's")  # fmt: skip
    p.add_argument("--tag", default="", help="names a variant's file and marks its rows")
    p.add_argument("--scales", default="0,0.5,1,1.5,2", help="task-vector scales tried on val")
    p.add_argument("--test-size", default="0.2")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("-o", "--output", type=Path, default=Path("runs/transfer_real"))
    p.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("runs", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=report)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
