"""Cost table: task matrix vs linear probe vs LoRA (peft) vs full fine-tuning on one real task.

MiniLM-L6 (packaged) on Rotten Tomatoes, the demo's split: 2,000 training snippets, 2,000 test.
Each method runs in its own fresh process so its peak resident memory is its own. FLOPs are
counted by torch's FlopCounterMode over the whole procedure (matmuls; numpy/sklearn solver
FLOPs are added analytically). The task matrix transfers an EXISTING fine-tuned model
(`tasklift demo` makes it): its cost excludes that fine-tuning, which is the point of transfer.

    python benchmarks/cost_table.py            # writes reports/cost_table.md + results/cost.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("task matrix", "linear probe", "LoRA r=8 (peft)", "full fine-tuning")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(method: str, finetuned: str, n_train: int, n_test: int) -> dict:
    """Run one method in this process; return its costs and test accuracy."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tasklift.data import load_dataset, split, subsample
    from tasklift.finetune import finetune
    from tasklift.loading import demo_model, load_model
    from tasklift.models import hidden_size, num_layers
    from tasklift.probe import FineTuned, LinearProbe
    from tasklift.taskmatrix import TaskMatrix

    ds = load_dataset("rotten_tomatoes")
    rest, test = split(ds, test_size=n_test, seed=0)
    train = subsample(rest, fraction=min(1.0, n_train / len(rest)), seed=0)
    base_dir = demo_model()
    base, tok = load_model(base_dir, dtype="fp32")
    loaded = _rss_mb()
    counter = FlopCounterMode(display=False)
    t0 = time.perf_counter()
    extra_flops = 0
    with counter:
        if method == "task matrix":
            est = TaskMatrix(base, finetuned, layer="auto", max_length=64, processor=tok).fit(
                train.X
            )
            d, layers = hidden_size(base), num_layers(base) + 1
            extra_flops = layers * (4 * len(train) * d * d + 10 * d**3)  # XᵀX, XᵀY, eigh
            params = est.maps_[est.layer_].coef_.size
        elif method == "linear probe":
            est = LinearProbe(base, max_length=64, processor=tok).fit(train.X, train.y)
            lr = est.classifier_[-1]
            params = lr.coef_.size + lr.intercept_.size
            extra_flops = int(lr.n_iter_.max()) * 4 * len(train) * hidden_size(base)
        else:
            model, _ = load_model(base_dir, head=True, num_labels=2, dtype="fp32")
            lr = 1e-4
            if method.startswith("LoRA"):
                from peft import LoraConfig, get_peft_model

                cfg = LoraConfig(
                    task_type="SEQ_CLS",
                    r=8,
                    lora_alpha=16,
                    lora_dropout=0.0,
                    target_modules=["query", "value"],
                )
                model, lr = get_peft_model(model, cfg), 2e-3
            params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            finetune(model, train.X, train.y, tok, epochs=1, lr=lr, batch_size=16, max_length=64)
            if method.startswith("LoRA"):
                model = model.merge_and_unload()
            est = FineTuned(model, max_length=64, processor=tok).fit()
    seconds = time.perf_counter() - t0
    acc = est.score(test.X, test.y)
    return {
        "method": method,
        "trained_params": int(params),
        "GFLOPs": round((counter.get_total_flops() + extra_flops) / 1e9, 1),
        "seconds": round(seconds, 1),
        "peak RSS MB": round(_rss_mb()),
        "RSS after load MB": round(loaded),
        "test accuracy": round(acc, 4),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=METHODS)
    ap.add_argument("--finetuned", default=str(ROOT / "runs/demo/finetuned"))
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=2000)
    args = ap.parse_args()
    if args.method:  # child: one method, result as the last line
        print(json.dumps(run(args.method, args.finetuned, args.n_train, args.n_test)))
        return
    if not Path(args.finetuned).is_dir():
        raise SystemExit(f"no fine-tuned model at {args.finetuned}: run `tasklift demo` first")
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import write

    rows = []
    for m in METHODS:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--method",
                m,
                "--finetuned",
                args.finetuned,
                "--n-train",
                str(args.n_train),
                "--n-test",
                str(args.n_test),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    full = next(r for r in rows if r["method"] == "full fine-tuning")
    for r in rows:
        r["time vs full FT"] = round(r["seconds"] / full["seconds"], 3)
        r["FLOPs vs full FT"] = round(r["GFLOPs"] / full["GFLOPs"], 3)
    notes = (
        f"MiniLM-L6 (22.7M params) on Rotten Tomatoes: {args.n_train} training snippets, "
        f"{args.n_test} test snippets, CPU ({rows[0]['threads']} threads), fp32. The task "
        "matrix is fitted from the demo's already fine-tuned model (no labels used); its cost "
        "excludes that fine-tuning, which it transfers rather than repeats. Full fine-tuning and "
        "LoRA: 1 epoch, batch 16, AdamW (lr 1e-4 full, 2e-3 LoRA). Peak RSS includes Python + "
        "torch "
        "(see 'RSS after load')."
    )
    write("cost", rows, list(rows[0]), title="Cost table", notes=notes)
    from tasklift.io import write_text

    md = (ROOT / "benchmarks/results/cost.md").read_text()
    write_text(
        ROOT / "reports/cost_table.md",
        md + "\nReproduce: `tasklift demo && python benchmarks/cost_table.py`\n",
    )


if __name__ == "__main__":
    main()
