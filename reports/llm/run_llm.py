"""Decoder LMs on real models (issue 19): a LoRA fine-tune of Qwen2.5-Coder-0.5B (A) answering
BBC News topics with code words B cannot guess, moved to Qwen2.5-Coder-1.5B (B) with BiCo and
the baselines, beside B + nothing and B fine-tuned the same way.

Resumable: every step writes runs/llm/<step>.json (or a cached model folder) and is skipped
when that exists; each transfer runs in its own process, so its peak RSS is its own.

    python reports/llm/run_llm.py all --draws 3        # everything missing, in order
    python reports/llm/run_llm.py transfer --method bico --draw 0
    python reports/llm/run_llm.py report               # reports/llm/report.md + results.json
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

RUNS = Path("runs/llm")
HERE = Path(__file__).parent
A, B = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
CODE = {"business": " river", "entertainment": " piano", "politics": " stone", "sports": " cloud",
        "tech": " apple"}  # fmt: skip
SIZES = dict(train=240, val=48, test=150, calib=32)
# attention only: the FFN's maps (4864 x 8960 per side) cost ~100 min of SVDs a transfer here
LORA = dict(r=8, alpha=16.0, lr=2e-4, epochs=2.0, batch_size=4, max_length=96, seed=0,
            modules=("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
TRANSFER = dict(scales=(0.5, 1.0, 1.5, 2.0), batch_size=4, max_length=96, max_stats_gb=9.0,
                stats_dtype="float32")  # fmt: skip
METHODS = ("bico", "activation", "gradient")


def prompt(text: str) -> str:
    """The task's prompt: the article's first 280 characters, then the question."""
    return f"Article: {' '.join(text.split())[:280]}\nCode word:"


def data() -> dict:
    """Seeded stratified splits of BBC News: LoRA training rows, validation, test."""
    from tasklift.data import load_dataset, split

    ds = load_dataset("bbc_news")
    rest, test = split(ds, test_size=SIZES["test"], seed=0)
    rest, val = split(rest, test_size=SIZES["val"], seed=0)
    train, _ = split(rest, test_size=len(rest) - SIZES["train"], seed=0)
    words = [CODE[c] for c in ds.classes]

    def rows(d):
        return {"prompts": [prompt(t) for t in d.X], "labels": [int(y) for y in d.y]}

    return {"choices": words, "classes": list(ds.classes), "train": rows(train),
            "val": rows(val), "test": rows(test)}  # fmt: skip


def _done(name: str) -> dict | None:
    path = RUNS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write(name: str, result: dict) -> None:
    from tasklift.io import write_text

    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    write_text(RUNS / f"{name}.json", json.dumps(result, indent=1) + "\n")
    print(f"{name}: {json.dumps(result)[:300]}")


def finetune(which: str) -> None:
    """LoRA of A (the transferred skill) or of B (the upper bound), then the merged dense model."""
    from tasklift.lora import lora_finetune_cached, merged

    base = A if which == "a" else B
    out, dense = RUNS / f"{which}_lora", RUNS / f"{which}_ft"
    d = data()
    targets = [d["choices"][y] for y in d["train"]["labels"]]
    info = lora_finetune_cached(base, d["train"]["prompts"], targets, out, progress=True, **LORA)
    if not dense.exists():
        model = merged(base, out, device="cpu")
        model.save_pretrained(dense)
        from tasklift.models import load_model

        load_model(base, lm=True)[1].save_pretrained(dense)
    _write(f"finetune_{which}", info)


def evaluate(which: str) -> None:
    """Verbaliser accuracy of a model on the test split (A, A_ft, B or B_ft)."""
    from tasklift.models import load_model
    from tasklift.transfer.lm import verbalise

    src = {"a": A, "b": B, "a_ft": RUNS / "a_ft", "b_ft": RUNS / "b_ft"}[which]
    d = data()
    t0 = time.time()
    model, tok = load_model(src, lm=True, device="cpu")
    pred = verbalise(model, d["test"]["prompts"], d["choices"], tok, max_length=96, batch_size=8)
    acc = float((pred == np.array(d["test"]["labels"])).mean())
    _write(f"eval_{which}", {"model": str(src), "accuracy": acc, "seconds": time.time() - t0})


def only(modules: str) -> Path:
    """A's adapter restricted to some modules (e.g. v_proj,o_proj, which RoPE does not rotate):
    a diagnostic of which part of the move fails."""
    from tasklift.lora import read_adapter, write_adapter

    keep = modules.split(",")
    out = RUNS / f"a_lora_{'_'.join(k.split('_')[0] for k in keep)}"
    if not out.exists():
        tv, config = read_adapter(RUNS / "a_lora")
        kept = {k: v for k, v in tv.deltas.items() if k.rsplit(".", 2)[-2] in keep}
        write_adapter(out, type(tv)(kept), config, A)
    return out


def transfer(method: str, draw: int, modules: str = "") -> None:
    """One transfer A_ft -> B: calibration rows drawn from the training split by `draw`."""
    from tasklift.transfer import Transfer

    d = data()
    rng = np.random.default_rng(draw)
    idx = rng.choice(len(d["train"]["prompts"]), SIZES["calib"], replace=False)
    X = [d["train"]["prompts"][i] for i in idx]
    y = [d["train"]["labels"][i] for i in idx]
    t0 = time.time()
    adapter = only(modules) if modules else RUNS / "a_lora"  # A_ft as its adapter: τ as factors
    t = Transfer(A, adapter, B, method=method, choices=d["choices"], progress=True, **TRANSFER)
    t.fit(X, y, X_val=d["val"]["prompts"], y_val=d["val"]["labels"])
    fit_s = time.time() - t0
    acc = t.score(d["test"]["prompts"], d["test"]["labels"])
    tag = f"{method}_{draw}" + (f"_{modules.replace(',', '_')}" if modules else "")
    moved = RUNS / f"adapter_{tag}"
    refactorised = t.save_adapter(moved, overwrite=True)  # a PEFT LoRA folder for B
    _write(f"transfer_{tag}", {
        "method": method, "draw": draw, "modules": modules or "all adapted",
        "accuracy": acc, "scale": t.scale_,
        "val_scores": t.val_scores_, "moved": f"{t.moved_params_}/{t.source_params_}",
        "fit_seconds": round(fit_s, 1), "seconds": round(time.time() - t0, 1),
        "adapter_mb": round(sum(f.stat().st_size for f in moved.iterdir()) / 2**20, 2),
        "refactorised": refactorised,
    })  # fmt: skip


def run_all(draws: int) -> None:
    """Every missing step, each in its own process (heavy ones one at a time)."""
    steps = [("finetune", "a"), ("eval", "a"), ("eval", "b"), ("eval", "a_ft")]
    steps += [("transfer", m, str(k)) for k in range(draws) for m in METHODS]
    steps += [("finetune", "b"), ("eval", "b_ft")]
    for step in steps:
        name = {"finetune": f"finetune_{step[-1]}", "eval": f"eval_{step[-1]}"}.get(step[0])
        name = name or f"transfer_{step[1]}_{step[2]}"
        if _done(name):
            continue
        argv = [
            sys.executable,
            __file__,
            step[0],
            *(["--method", step[1], "--draw", step[2]] if step[0] == "transfer" else [step[1]]),
        ]
        print("running", " ".join(argv[2:]), flush=True)
        subprocess.run(argv, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["finetune", "eval", "transfer", "all", "report"])
    ap.add_argument("which", nargs="?", default="a")
    ap.add_argument("--method", default="bico")
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--modules", default="", help="transfer: only these adapted modules")
    args = ap.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    if args.step == "finetune":
        finetune(args.which)
    elif args.step == "eval":
        evaluate(args.which)
    elif args.step == "transfer":
        transfer(args.method, args.draw, args.modules)
    elif args.step == "all":
        run_all(args.draws)
    else:
        from report_llm import report  # noqa: PLC0415  (beside this script)

        report(RUNS, HERE)


if __name__ == "__main__":
    main()
