"""Where `Transfer.fit`'s time goes on a decoder pair, beside its floor (issue 21.1): BiCo moving
the bbc LoRA of Qwen2.5-Coder-0.5B to the 1.5B as reports/llm/run_llm.py moves it (its tasks,
adapter, 32 calibration rows of draw D, validation set, scale grid, batch size), under each
setting of `SETTINGS`, then the floor in the same process: one forward-backward of A and of B
over the calibration rows with the same next-token loss, plus one verbaliser pass of B over the
validation set per scale the search evaluated, each pass timed. Peak RSS after each fit
(ru_maxrss: the process's high-water mark so far, models included). --finetune: also time B's
LoRA fine-tune by reports/llm's recipe (llm_tasks.LORA) on the task's training split, in memory.

    OMP_NUM_THREADS=2 python benchmarks/bench_profile_llm.py [--settings defaults] [--draw 0]
        [--finetune]

Needs the adapter of reports/llm (runs/llm/bbc/lora_q05: `run_llm.py finetune bbc q05`).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, write

from tasklift.loading import load_model
from tasklift.lora import lora_finetune
from tasklift.report import markdown_table
from tasklift.transfer import Transfer
from tasklift.transfer.lm import lm_encode, lm_loss, lm_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reports" / "llm"))
from llm_tasks import LORA, TASKS  # noqa: E402
from run_llm import CALIB, MODELS, RUNS, TRANSFER  # noqa: E402

#: Transfer arguments per named setting on top of run_llm's grid and batch size: reports/llm's
#: own (cutoff 1e-6, float32 statistics), or the library's defaults
SETTINGS = {"before": {k: TRANSFER[k] for k in ("tie_break", "stats_dtype")}, "defaults": {}}
PHASES = ("load", "setup", "labels", "calibrate", "statistics", "solve", "transport", "post",
          "scale search")  # fmt: skip


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def floor(
    a: str, b: str, X, y, val: dict, choices, max_length: int, batch_size: int, evals: int
) -> dict:
    """Seconds of a forward-backward of A and of B over (X, y) by the next-token loss on y, and
    of `evals` verbaliser passes of B over the validation prompts, each timed ("val forwards B";
    their mean: "val forward B"), so a search's floor sums the passes it ran."""
    out = {}
    for name, src in (("A", a), ("B", b)):
        model, tok = load_model(src, lm=True, dtype="fp32")
        start = time.perf_counter()
        for i in range(0, len(X), batch_size):
            lm_loss(model, lm_encode(X[i : i + batch_size], y[i : i + batch_size], tok,
                                     max_length=max_length)).backward()  # fmt: skip
            model.zero_grad(set_to_none=True)
        out[f"fwd-bwd {name}"] = time.perf_counter() - start
        if name == "B":
            out["val forwards B"] = [
                _val_pass(model.eval(), tok, val, choices, max_length, batch_size)
                for _ in range(evals)
            ]
            out["val forward B"] = float(np.mean(out["val forwards B"]))
        del model
    return out


def _val_pass(model, tok, val: dict, choices, max_length: int, batch_size: int) -> float:
    """Seconds of one verbaliser pass of `model` over the validation prompts."""
    start = time.perf_counter()
    with torch.inference_mode():
        lm_score(model, val["prompts"], val["targets"], tok, choices=choices,
                 max_length=max_length, batch_size=batch_size)  # fmt: skip
    return time.perf_counter() - start


def finetune_seconds(b: str, train: dict, max_length: int) -> float:
    """Seconds to load B and LoRA-fine-tune it on `train` by reports/llm's recipe (LORA)."""
    start = time.perf_counter()
    model, tok = load_model(b, lm=True, dtype="fp32")
    lora_finetune(model, train["prompts"], train["targets"], tok, max_length=max_length, **LORA)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="bbc")
    ap.add_argument("--pair", default="q05:q15", help=f"A:B of {', '.join(MODELS)}")
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--settings", default="defaults", help="of SETTINGS, comma-separated")
    ap.add_argument("--name", default="profile_qwen", help="results file: results/NAME.{json,md}")
    ap.add_argument("--finetune", action="store_true", help="also time B's LoRA fine-tune")
    args = ap.parse_args()
    a, b = args.pair.split(":")
    t, d = TASKS[args.task], TASKS[args.task].data()
    idx = np.random.default_rng(args.draw).choice(len(d["train"]["prompts"]), CALIB, replace=False)
    X = [d["train"]["prompts"][i] for i in idx]
    y = [d["train"]["targets"][i] for i in idx]
    grid = {k: TRANSFER[k] for k in ("scales", "batch_size", "max_stats_gb")}
    runs = []
    for name in args.settings.split(","):
        t0 = time.perf_counter()
        tr = Transfer(MODELS[a], RUNS / args.task / f"lora_{a}", MODELS[b], method="bico",
                      choices=d["choices"], max_length=t.max_length,
                      **{**grid, **SETTINGS[name]})  # fmt: skip
        tr.fit(X, y, X_val=d["val"]["prompts"], y_val=d["val"]["targets"])
        wall = time.perf_counter() - t0
        runs.append({"pair": f"{MODELS[a]} -> {MODELS[b]}", "task": args.task,
                     "draw": args.draw, "setting": name, "evaluations": len(tr.val_scores_),
                     "scale": tr.scale_, "fit s": round(wall, 1),
                     "peak RSS GB": round(_rss_gb(), 1),
                     "timings": tr.timings_, "val_scores": tr.val_scores_,
                     "settings": {**grid, "tie_break": tr.tie_break, "stats_dtype": tr.stats_dtype,
                                  "scale_search": tr.scale_search}})  # fmt: skip
        print(name, round(wall, 1), tr.scale_, tr.val_scores_, tr.timings_, flush=True)
        del tr
    evals = max(r["evaluations"] for r in runs)
    base = floor(MODELS[a], MODELS[b], X, y, d["val"], d["choices"], t.max_length,
                 grid["batch_size"], evals)  # fmt: skip
    print(base, flush=True)
    ft = finetune_seconds(MODELS[b], d["train"], t.max_length) if args.finetune else None
    print("fine-tune B", ft, flush=True)
    recipe = {**LORA, "max_length": t.max_length, "rows": len(d["train"]["prompts"])}
    for r in runs:
        fl = base["fwd-bwd A"] + base["fwd-bwd B"] + sum(base["val forwards B"][: r["evaluations"]])
        r.update({"floor s": round(fl, 1), "fit / floor": round(r["fit s"] / fl, 2), "floor": base})
        if ft:
            r.update({"fine-tune B s": round(ft, 1), "fit / fine-tune B": round(r["fit s"] / ft, 2),
                      "fine-tune recipe": recipe})  # fmt: skip
        r.update({p: f"{r['timings'][p]:.1f} ({100 * r['timings'][p] / r['fit s']:.0f}%)"
                  for p in PHASES if p in r["timings"]})  # fmt: skip
    cols = ["pair", "draw", "setting", "evaluations", "scale", "fit s", "floor s", "fit / floor",
            "peak RSS GB"] + (["fine-tune B s", "fit / fine-tune B"] if ft else [])  # fmt: skip
    passes = ", ".join(f"{v:.1f}" for v in base["val forwards B"])
    notes = (
        f"BiCo, reports/llm's {args.task} LoRA of A moved to B, {CALIB} calibration rows (draw "
        f"{args.draw}), {len(d['val']['prompts'])} validation prompts, {t.max_length} tokens, "
        f"scales {grid['scales']}, batch {grid['batch_size']}, CPU threads "
        f"{machine()['threads']}. Floor: one forward-backward of A and of B over the calibration "
        "rows (next-token loss on the targets), plus one verbaliser pass of B over the "
        f"validation prompts per scale evaluated, each timed: fwd-bwd A {base['fwd-bwd A']:.1f} "
        f"s, fwd-bwd B {base['fwd-bwd B']:.1f} s, val forwards B {passes} s; seconds are "
        "context, the ratios are the result. Peak RSS: the process's high-water mark after the "
        "fit."
        + (
            f" 'fine-tune B': loading B and LoRA-fine-tuning it in the same run by reports/llm's "
            f"recipe {recipe} (rows: training rows; max_length: tokens)."
            if ft
            else ""
        )
        + "\n\nPhases of `Transfer.fit` (`timings_`): seconds (share).\n\n"
        + markdown_table(runs, ["setting", "fit s", *PHASES])
    )
    write(args.name, runs, cols, title="Where Transfer.fit's time goes on a decoder pair",
          notes=notes)  # fmt: skip


if __name__ == "__main__":
    main()
