"""Where `Transfer.fit`'s time goes on the real pairs of reports/transfer_real, beside its floor,
side by side in one run (issue 21.1): `timings_` of a BiCo fit under each setting of `SETTINGS`
(the settings before 2026-12-03, today's defaults, today's defaults with float64 statistics,
which shows float32's error on τ_B, and with the Fibonacci scale search), and the floor: one
forward-backward of A and of B over the calibration set plus one forward of B over the validation
set per scale the search evaluated. Also whether each setting's scale and test accuracy equal the
others', per draw.

    OMP_NUM_THREADS=1 python benchmarks/bench_profile.py [--pair minilm-l6:minilm-l3] \
        [--data bbc_news] [--draws 1] [--repeats 1] [--settings before,defaults] [--name profile]
    OMP_NUM_THREADS=1 python benchmarks/bench_profile.py --pair minilm-l6:mpnet --token word \
        --settings before,defaults --name profile_mpnet   # --finetune: also time B fine-tuned

Needs A_ft of reports/run_real.sh: runs/real/<A>_<data>_ft (`tasklift finetune`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, write

from tasklift.data import calibration_split, take
from tasklift.finetune import finetune
from tasklift.loading import load_model
from tasklift.models import encode
from tasklift.report import markdown_table
from tasklift.taskvector import dense
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS
from tasklift.transfer.scales import best_scale, search_scales

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from transfer_real import real_split  # noqa: E402  (the real pairs' split, as their table's)

#: Transfer arguments per named setting ({}: the library's defaults)
SETTINGS = {
    "before": dict(scale_search="grid", **PREVIOUS_DEFAULTS),
    "defaults": {},
    "defaults+float64": dict(stats_dtype="float64"),
    "defaults+fibonacci": dict(scale_search="fibonacci"),
}

PHASES = ("load", "setup", "labels", "head", "calibrate", "statistics", "solve", "transport",
          "post", "scale search")  # fmt: skip


def passes(model, proc, X, y, *, backward: bool, batch_size: int, max_length: int) -> float:
    """Seconds of one pass over (X, y) in batches: forward and loss, and backward if asked."""
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        for i in range(0, len(X), batch_size):
            idx = np.arange(i, min(i + batch_size, len(X)))
            batch = encode(take(X, idx), proc, max_length=max_length)
            loss = model(**batch, labels=torch.as_tensor(y[idx])).loss
            if backward:
                loss.backward()
                model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def floor(a_ft: str, b: str, calib, val, classes: int, max_length: int, evals: int) -> dict:
    """Seconds of a forward-backward of A and of B over `calib` and of `evals` forwards of B
    over `val`, each timed ("val forwards B"; their mean: "val forward B"), so the floor of a
    search sums as many passes as it ran, not one pass's noise times their count (A_ft stands
    in for A under A_ft's head: the same architecture)."""
    kw = dict(batch_size=16, max_length=max_length)
    out = {}
    for name, src in (("A", a_ft), ("B", b)):
        model, proc = load_model(src, head=True, num_labels=classes, dtype="fp32")
        out[f"fwd-bwd {name}"] = passes(model, proc, calib.X, calib.y, backward=True, **kw)
        if name == "B":
            out["val forwards B"] = [
                passes(model.eval(), proc, val.X, val.y, backward=False, **kw) for _ in range(evals)
            ]
            out["val forward B"] = float(np.mean(out["val forwards B"]))
    return out


def finetune_seconds(a_ft: str, b: str, train, classes: int) -> tuple[float, dict]:
    """Seconds to fully fine-tune B on `train` by A_ft's recorded recipe (its
    tasklift_finetune.json: epochs, learning rate, batch size, token limit, seed), in memory."""
    recipe = json.loads((Path(a_ft) / "tasklift_finetune.json").read_text())["recipe"]
    keep = {k: recipe[k] for k in ("epochs", "lr", "batch_size", "max_length", "seed")}
    start = time.perf_counter()
    model, proc = load_model(b, head=True, num_labels=classes, dtype="fp32")
    finetune(model, train.X, train.y, proc, **keep)
    return time.perf_counter() - start, keep


def tau_gap(tv, ref) -> float:
    """max |τ − ref| over ref's deltas, relative to ref's largest entry."""
    top = max(float(dense(d).abs().max()) for d in ref.deltas.values())
    gaps = (dense(tv.deltas[k]) - dense(d) for k, d in ref.deltas.items())
    return max(float(g.abs().max()) for g in gaps) / top


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="minilm-l6:minilm-l3", help="A:B, comma-separated pairs")
    ap.add_argument("--data", default="bbc_news")
    ap.add_argument("--runs", default="runs/real", help="where the fine-tuned A are")
    ap.add_argument("--token", default="all", help="'word' for pairs across tokenizers")
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="of SETTINGS, comma-separated")
    ap.add_argument("--name", default="profile", help="results file: results/NAME.{json,md}")
    ap.add_argument("--finetune", action="store_true", help="also time fine-tuning B (per pair)")
    ap.add_argument("--repeats", type=int, default=1, help="fits, floor, fine-tune each run "
                    "this often, the fastest counted (a shared CPU's noise adds)")  # fmt: skip
    args = ap.parse_args()
    names = args.settings.split(",")
    if not {"before", "defaults"} <= set(names) <= set(SETTINGS):
        ap.error(f"--settings: 'before' and 'defaults', and any of {', '.join(SETTINGS)}")
    chosen = {k: SETTINGS[k] for k in names}
    runs = []
    for pair in args.pair.split(","):
        a, b = pair.split(":")
        a_ft = f"{args.runs}/{a}_{args.data}_ft"
        train, test = real_split(args.data, a_ft, "0.2")
        ft_s, recipe = (None, None)
        if args.finetune:  # B fine-tuned as A_ft was: what BiCo saves
            for _ in range(args.repeats):
                secs, recipe = finetune_seconds(a_ft, b, train, len(np.unique(train.y)))
                ft_s = min(secs, ft_s or secs)
                print("fine-tune B", round(secs, 1), recipe, flush=True)
        for draw in range(args.draws):
            calib, val, _ = calibration_split(train, calib=128, val=200, seed=draw)
            fits, walls, bases = {}, {name: [] for name in chosen}, []
            for _ in range(args.repeats):  # every fit, then the floor, repeated: min of each
                for name, kw in chosen.items():
                    t0 = time.perf_counter()
                    t = Transfer(a, a_ft, b, method="bico", token=args.token,
                                 max_length=args.max_length, device="cpu", **kw)  # fmt: skip
                    t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
                    walls[name].append(time.perf_counter() - t0)
                    if walls[name][-1] == min(walls[name]):  # its phases are the fastest's
                        fits[name] = (walls[name][-1], t, t.score(test.X, test.y))
                    print(name, round(walls[name][-1], 1), t.scale_, t.val_scores_, flush=True)
                grid = fits["before"][1]
                evals = max(len(t.val_scores_) for _, t, _ in fits.values())
                bases.append(floor(a_ft, b, calib, val, len(grid.classes_), args.max_length, evals))
                print(bases[-1], flush=True)
            base = {k: np.min([f[k] for f in bases], axis=0).tolist() for k in bases[0]}
            on5 = search_scales([0, 0.5, 1, 1.5, 2], grid.val_scores_.__getitem__)
            ref = fits["defaults"][1].task_vector_
            for name, (wall, t, acc) in fits.items():
                k = len(t.val_scores_)
                fl = base["fwd-bwd A"] + base["fwd-bwd B"] + sum(base["val forwards B"][:k])
                runs.append({
                    "pair": f"{a} -> {b}", "draw": draw, "setting": name, "evaluations": k,
                    "scale": t.scale_, "test accuracy": round(acc, 4), "fit s": round(wall, 1),
                    "floor s": round(fl, 1), "fit / floor": round(wall / fl, 2),
                    "τ_B vs defaults": f"{tau_gap(t.task_vector_, ref):.1e}",
                    "fit / fine-tune B": "" if ft_s is None else round(wall / ft_s, 2),
                    "fine-tune B s": "" if ft_s is None else round(ft_s, 1),
                    "fine-tune recipe": recipe,
                    "fit s, every repeat": [round(w, 1) for w in walls[name]],
                    "floors, every repeat": bases,
                    "timings": t.timings_, "floor": base, "val_scores": t.val_scores_,
                    "settings": {**kw, "tie_break": t.tie_break, "stats_dtype": t.stats_dtype,
                                 "scale_search": t.scale_search},
                })  # fmt: skip
            runs.append({
                "pair": f"{a} -> {b}", "draw": draw,
                "setting": "before, fibonacci on 0,0.5,1,1.5,2",
                "evaluations": len(on5), "scale": best_scale(on5),
                "test accuracy": round(grid.score(test.X, test.y, scale=best_scale(on5)), 4),
                "grid's scale on 0,0.5,1,1.5,2": best_scale(
                    {s: grid.val_scores_[s] for s in (0.0, 0.5, 1.0, 1.5, 2.0)}),
            })  # fmt: skip
    shares = [
        {**r, **{p: f"{r['timings'][p]:.1f} ({100 * r['timings'][p] / r['fit s']:.0f}%)"
                 for p in PHASES if p in r["timings"]}}
        for r in runs if "timings" in r
    ]  # fmt: skip
    cols = ["pair", "draw", "setting", "evaluations", "scale", "test accuracy", "fit s",
            "floor s", "fit / floor", "τ_B vs defaults", "fine-tune B s", "fit / fine-tune B",
            "grid's scale on 0,0.5,1,1.5,2"]  # fmt: skip
    notes = (
        f"BiCo, {args.data}, 128 calibration + 200 validation inputs, {args.max_length} tokens, "
        f"each fit, the floor and the fine-tune run {args.repeats}x (fits and floor alternated), "
        "the fastest counted (the floor: the fastest of each of its passes), "
        f"token={args.token!r}, CPU threads={machine()['threads']}. Settings: "
        + "; ".join(f"{k}: {v or 'the defaults'}" for k, v in chosen.items())
        + ". 'τ_B vs defaults': max |τ_B − τ_B(defaults)| / max |τ_B(defaults)|. "
        "Floor: one forward-backward (with parameter gradients) of A and of B "
        "over the calibration set, plus one forward of B over the validation set per scale "
        "evaluated (each of them timed), measured in the same run; seconds are context, the "
        "ratios are the result. "
        "'fit / fine-tune B' (with --finetune): the fit's seconds over those of fully "
        "fine-tuning B on the 1,000 training rows by A_ft's recorded recipe, in the same run. "
        "'before, fibonacci on 0,0.5,1,1.5,2': the search replayed on the 'before' fit's own "
        "validation scores of the report's 5-scale grid.\n\n"
        "Phases of `Transfer.fit` (`timings_`): seconds (share of the fit's wall time; the rest "
        "is outside every phase).\n\n"
        + markdown_table(shares, ["pair", "draw", "setting", "fit s", *PHASES])
    )
    write(args.name, runs, cols, title="Where Transfer.fit's time goes, beside its floor",
          notes=notes)  # fmt: skip


if __name__ == "__main__":
    main()
