"""Decoder LMs on real models (issues 19, 20): LoRA skills of a model A moved to a model B with
BiCo and the baselines, beside B + nothing and B fine-tuned the same way (llm_tasks.py: the
tasks). Pairs: Qwen2.5-Coder-0.5B -> 1.5B (one tokenizer, 24x896 -> 28x1536), SmolLM2-135M ->
Qwen-0.5B (another family and tokenizer: word pairing), and Qwen-0.5B onto itself (the sanity
check: τ_B must equal τ_A, so B + τ_B is A_ft).

Resumable: every step writes runs/llm/<task>/<step>.json (or a cached adapter folder) and is
skipped when that exists; each step runs in its own process, so its peak RSS is its own.

    python reports/llm/run_llm.py all --draws 3            # everything missing, in order
    python reports/llm/run_llm.py transfer bbc q05 q15 --method bico --draw 0
    python reports/llm/run_llm.py report                   # reports/llm/report.md + results.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from llm_tasks import LORA, TASKS

RUNS = Path("runs/llm")
HERE = Path(__file__).parent
MODELS = {"q05": "qwen2.5-coder-0.5b", "q15": "qwen2.5-coder-1.5b", "smol": "smollm2-135m"}
# (task, A, B, methods, draws or None for --draws, Transfer settings of the pair): the order
# `all` runs them in; across tokenizers the tokens are paired by the words they spell
PLAN = [
    ("bbc", "q05", "q05", ("bico",), 1, {}),
    ("bbc", "q05", "q15", ("bico", "activation", "gradient"), None, {}),
    ("imdb", "q05", "q15", ("bico", "activation"), 1, {}),  # the adapters' second task (20.5)
    ("bbc", "smol", "q05", ("bico", "activation", "gradient"), None, {"token": "word"}),
    ("persona", "q05", "q15", ("bico", "activation", "gradient"), None, {}),
]
# tie_break: the cutoff every committed run used (tasklift's default until 2026-12-03); --tie-break
# names another
TRANSFER = dict(scales=(0.5, 1.0, 1.5, 2.0), batch_size=4, max_stats_gb=9.0,
                stats_dtype="float32", tie_break=1e-6)  # fmt: skip
CALIB = 32  # calibration rows per draw, from the training split
MANY = ("bbc", "imdb")  # the adapters `many` moves together


def _done(task: str, name: str) -> dict | None:
    path = RUNS / task / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write(task: str, name: str, result: dict) -> None:
    from tasklift.io import write_text

    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    write_text(RUNS / task / f"{name}.json", json.dumps(result, indent=1) + "\n")
    print(f"{task}/{name}: {json.dumps(result)[:300]}")


def finetune(task: str, model: str) -> None:
    """A LoRA of `model` on the task's training split (A's skill, or B's upper bound)."""
    from tasklift.lora import lora_finetune_cached

    t, d = TASKS[task], TASKS[task].data()
    out = RUNS / task / f"lora_{model}"
    info = lora_finetune_cached(MODELS[model], d["train"]["prompts"], d["train"]["targets"], out,
                                progress=True, max_length=t.max_length, **LORA)  # fmt: skip
    _write(task, f"finetune_{model}", info)


def evaluate(task: str, which: str) -> None:
    """The task's score of a model (q05, q15, smol) or of its LoRA fine-tune (q05_ft, ...)."""
    from peft import PeftModel

    from tasklift.models import load_model

    name = which.removesuffix("_ft")
    t0 = time.time()
    model, tok = load_model(MODELS[name], lm=True, device="cpu")
    if which.endswith("_ft"):  # merged in place: the dense A_ft
        model = PeftModel.from_pretrained(model, RUNS / task / f"lora_{name}").merge_and_unload()
    result = TASKS[task].score(model, tok, TASKS[task].data(), RUNS / task)
    _write(task, f"eval_{which}", {"model": which, **result, "seconds": time.time() - t0})


def only(task: str, a: str, modules: str) -> Path:
    """A's adapter restricted to some modules (e.g. v_proj,o_proj, which RoPE does not rotate):
    a diagnostic of which part of the move fails."""
    from tasklift.lora import read_adapter, write_adapter

    keep = modules.split(",")
    out = RUNS / task / f"lora_{a}_{'_'.join(k.split('_')[0] for k in keep)}"
    if not out.exists():
        tv, config = read_adapter(RUNS / task / f"lora_{a}")
        kept = {k: v for k, v in tv.deltas.items() if k.rsplit(".", 2)[-2] in keep}
        write_adapter(out, type(tv)(kept), config, MODELS[a])
    return out


def transfer(
    task: str,
    a: str,
    b: str,
    method: str,
    draw: int,
    modules: str = "",
    scales: str = "",
    tie_break: str = "",
    center: bool = False,
) -> None:
    """One transfer A_ft -> B: A_ft as its adapter (τ_A as factors), calibration rows drawn
    from the training split by `draw`; B + τ_B scored, and saved as a PEFT LoRA of B. `scales`
    (e.g. "2,2.5,3,4") replaces the grid of τ_B's scales searched on validation; `tie_break`
    (e.g. "1e-3") the cutoff below which a map's direction counts as undetermined; `center`
    centred cross-covariances (issue 21.6)."""
    from tasklift.transfer import Transfer

    t, d = TASKS[task], TASKS[task].data()
    idx = np.random.default_rng(draw).choice(len(d["train"]["prompts"]), CALIB, replace=False)
    X = [d["train"]["prompts"][i] for i in idx]
    y = [d["train"]["targets"][i] for i in idx]
    t0 = time.time()
    adapter = only(task, a, modules) if modules else RUNS / task / f"lora_{a}"
    pair = next(p[5] for p in PLAN if p[:3] == (task, a, b)) if not modules else {}
    grid = {"scales": tuple(map(float, scales.split(",")))} if scales else {}
    grid |= {"tie_break": float(tie_break)} if tie_break else {}
    grid |= {"center": True} if center else {}
    tr = Transfer(MODELS[a], adapter, MODELS[b], method=method, choices=d["choices"],
                  max_length=t.max_length, progress=True, **{**TRANSFER, **grid},
                  **pair)  # fmt: skip
    tr.fit(X, y, X_val=d["val"]["prompts"], y_val=d["val"]["targets"])
    fit_s = time.time() - t0
    result = t.score(tr.model_, tr.processor_, d, RUNS / task)
    tag = f"{a}_{b}_{method}_{draw}" + (f"_{modules.replace(',', '_')}" if modules else "")
    tag += f"_scales_{scales.replace(',', '_')}" if scales else ""
    tag += f"_tb_{tie_break}" if tie_break else ""
    tag += "_centred" if center else ""
    moved = RUNS / task / f"adapter_{tag}"
    refactorised = tr.save_adapter(moved, overwrite=True)  # a PEFT LoRA folder for B
    _write(task, f"transfer_{tag}", {
        "a": a, "b": b, "method": method, "draw": draw, "modules": modules or "all adapted",
        "scales": list(tr.scales), "tie_break": tr.tie_break, "open": tr.open_directions_,
        "center": tr.center,
        **result, "scale": tr.scale_, "val_scores": tr.val_scores_,
        "moved": f"{tr.moved_params_}/{tr.source_params_}", "fit_seconds": round(fit_s, 1),
        "seconds": round(time.time() - t0, 1),
        "adapter_mb": round(sum(f.stat().st_size for f in moved.iterdir()) / 2**20, 2),
        "refactorised": refactorised,
    })  # fmt: skip


def many(method: str) -> None:
    """Issue 20.5: the bbc and imdb adapters of Qwen-0.5B moved to the 1.5B with ONE
    calibration on generic text (32 IMDB reviews, the LM loss on the whole text: maps that
    depend on no task), each written as a PEFT LoRA of B at scale 1 and scored on its task."""
    from peft import PeftModel

    from tasklift.data import load_dataset
    from tasklift.models import load_model
    from tasklift.transfer import Transfer

    src = RUNS / "many" / "in"
    src.mkdir(parents=True, exist_ok=True)
    for task in MANY:  # one folder name per adapter: out/<name>
        if not (src / task).exists():
            (src / task).symlink_to((RUNS / task / "lora_q05").resolve())
    reviews = load_dataset("imdb").X
    rows = np.random.default_rng(0).choice(len(reviews), CALIB, replace=False)
    texts = [" ".join(reviews[i].split())[:600] for i in rows]
    t0 = time.time()
    tr = Transfer(MODELS["q05"], None, MODELS["q15"], method=method, max_length=128,
                  progress=True, **TRANSFER)  # fmt: skip
    out = RUNS / "many" / method
    records = tr.move_adapters([src / t for t in MANY], [""] * len(texts), texts,
                               out=out, overwrite=True, map_cache=False)  # fmt: skip
    move_s = time.time() - t0
    for task in MANY:  # beside the task's other moved adapters, for peft_check.py
        link = RUNS / task / f"adapter_many_{method}"
        if not link.is_symlink():  # a dangling link is kept: it points at out/<task>
            link.symlink_to((out / task).resolve())
    scores = {}
    for task in MANY:
        model, tok = load_model(MODELS["q15"], lm=True, device="cpu")
        model = PeftModel.from_pretrained(model, out / task).merge_and_unload()
        scores[task] = TASKS[task].score(model, tok, TASKS[task].data(), RUNS / task)
        del model
    _write("many", f"many_{method}", {"method": method, "calibration": "32 IMDB reviews, LM loss",
           "move_seconds": round(move_s, 1), "adapters": records, "scores": scores})  # fmt: skip


def _steps(draws: int) -> list[list[str]]:
    """Every step of PLAN, most informative first (on this CPU a transfer to the 1.5B takes
    ~20 min): per pair A's fine-tune, the scores of A, A_ft and B and the first draw of BiCo
    and activation-only (after bbc's: their plain-PEFT check and the task matrices; after
    the cross-family pair: imdb's task matrices); then gradient-only; the adapters moved
    together; B's fine-tunes (the slowest); then the other draws."""
    first, second, fine, rest = [], [], [], []
    for task, a, b, methods, n, _ in PLAN:
        first += [["finetune", task, a], ["eval", task, a], ["eval", task, f"{a}_ft"]]
        first += [["eval", task, b]]
        first += [["transfer", task, a, b, m, "0"] for m in methods if m != "gradient"]
        second += [["transfer", task, a, b, m, "0"] for m in methods if m == "gradient"]
        fine += [["finetune", task, b], ["eval", task, f"{b}_ft"]]
        rest += [["transfer", task, a, b, m, str(k)] for k in range(1, n or draws) for m in methods]
        if b == "q15" and task != "persona":  # plain PEFT on B equals tasklift's B + τ_B?
            first += [["peft", task, "adapter_q05_q15_[ba]*_0"]]
        if task == "bbc" and b == "q15":
            first += [["tm", "tm", "bbc"]]
        if task == "bbc" and b == "q15":
            first += [["finetune", "imdb", "q05"], ["tm", "tm", "imdb"]]
        if task == "bbc" and a == "smol":
            first += [["eval", "imdb", m] for m in ("q05", "q05_ft", "q15")]
            first += [["many", "many", "bico"]]
            first += [["peft", t, "adapter_many_bico"] for t in MANY]
    second += [["many", "many", "activation"]]
    second += [["peft", t, "adapter_many_activation"] for t in MANY]
    second += [["peft", "persona", "adapter_q05_q15_[ba]*"]]  # draw 0 kept no folder
    fine.sort(key=lambda s: s[1] == "imdb")  # issue 19's upper bounds before issue 20's second task
    unique = []
    for s in first + second + fine + rest:
        unique += [s] if s not in unique else []
    return unique


def _name(step: list[str]) -> str:
    if step[0] == "transfer":
        return "transfer_" + "_".join(step[2:])
    return f"{step[0]}_{step[2]}"  # finetune_q05, eval_q15_ft, many_bico


def export_test(task: str) -> None:
    """The test split as JSON, for peft_check.py (which scores without importing tasklift)."""
    from tasklift.io import write_text

    d = TASKS[task].data()
    test = {**d["test"], "choices": d["choices"], "max_length": TASKS[task].max_length}
    write_text(RUNS / task / "test_split.json", json.dumps(test, indent=1) + "\n")


def _peft_done(task: str, pattern: str) -> bool:
    """Every adapter folder matching `pattern` is in peft_check.json."""
    path = RUNS / task / "peft_check.json"
    scored = json.loads(path.read_text()) if path.is_file() else {}
    folders = [f.name for f in (RUNS / task).glob(pattern)]
    return bool(folders) and all(f in scored for f in folders)


def seed_from_results() -> None:
    """Step results a fresh checkout lacks (runs/ is not committed) from the committed
    reports/llm/results.json, marked as restored; adapter folders are not in it, so a
    fine-tune whose folder is missing runs again."""
    from tasklift.io import write_text

    path = HERE / "results.json"
    for key, result in (json.loads(path.read_text()) if path.is_file() else {}).items():
        step = RUNS / f"{key}.json"
        if not step.is_file():
            if isinstance(result, dict):  # a list (persona's plain answers) is kept as it is
                note = result.get("restored") or "restored from reports/llm/results.json"
                result = {**result, "restored": note}
            write_text(step, json.dumps(result, indent=1) + "\n")


def run_all(draws: int) -> None:
    """Every missing step, each in its own process (heavy ones one at a time); a step that
    fails is reported and retried once after the others."""
    from tasklift.assets import prepare

    seed_from_results()
    for task in {p[0] for p in PLAN}:
        export_test(task)
    failed = []
    for attempt in range(2):
        for step in failed if attempt else _steps(draws):
            if step[0] == "tm":  # run_tm.py: task matrices on the 0.5B and its adapters
                done = (HERE / f"taskmatrix_{step[2]}" / "results.json").is_file()
                argv = [str(HERE / "run_tm.py"), step[2]]
            elif step[0] == "peft":  # peft_check.py: moved adapters on B by plain PEFT
                done = _peft_done(step[1], step[2])
                argv = [
                    str(HERE / "peft_check.py"),
                    str(RUNS / step[1]),
                    str(prepare(MODELS["q15"])),
                    step[2],
                ]
            elif step[0] == "finetune":  # the adapter folder itself is what later steps read
                done = (RUNS / step[1] / f"lora_{step[2]}" / "adapter_config.json").is_file()
                done = done or (step[2] == "q15" and _done(step[1], "eval_q15_ft") is not None)
                argv = [__file__, *step]
            else:
                done = _done(step[1], _name(step)) is not None
                if step[0] == "transfer":
                    argv = [__file__, *step[:4], "--method", step[4], "--draw", step[5]]
                else:
                    argv = [
                        __file__,
                        *(["many", "--method", step[2]] if step[0] == "many" else step),
                    ]
            if done:
                continue
            print("running", " ".join(argv[1:]), flush=True)
            if subprocess.run([sys.executable, *argv]).returncode and not attempt:
                failed.append(step)
                print("failed (retried at the end):", " ".join(step), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["finetune", "eval", "transfer", "many", "all", "report"])
    ap.add_argument("task", nargs="?", choices=list(TASKS), default="bbc")
    ap.add_argument("model", nargs="?", default="q05", help="finetune/eval: q05, q15, smol (+_ft)")
    ap.add_argument("target", nargs="?", default="q15", help="transfer: B")
    ap.add_argument("--method", default="bico")
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--modules", default="", help="transfer: only these adapted modules")
    ap.add_argument("--scales", default="", help="transfer: another scale grid, e.g. 2,2.5,3,4")
    ap.add_argument("--tie-break", default="", help="transfer: another cutoff, e.g. 1e-3")
    ap.add_argument("--center", action="store_true", help="transfer: centred covariances")
    args = ap.parse_args()
    if args.step == "finetune":
        finetune(args.task, args.model)
    elif args.step == "eval":
        evaluate(args.task, args.model)
    elif args.step == "transfer":
        transfer(args.task, args.model, args.target, args.method, args.draw, args.modules,
                 args.scales, args.tie_break, args.center)  # fmt: skip
    elif args.step == "many":
        many(args.method)
    elif args.step == "all":
        run_all(args.draws)
    else:
        from report_llm import report  # noqa: PLC0415  (beside this script)

        report(RUNS, HERE)


if __name__ == "__main__":
    main()
