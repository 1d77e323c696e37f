"""Multi-task serving: N task matrices on one base pass vs N fine-tuned models one after another.

Both sides get the same texts in the same batches. The N tasks are the fine-tuned model's task
matrix at one middle layer (the cost of serving does not depend on W's values), so N fine-tuned
models cost N passes of the fine-tuned model. Goal (issue 13): throughput >= 0.8 N x that of
the N models, and a single task matrix at layer i faster than its fine-tuned model by ~L / i.

    python benchmarks/bench_multitask.py [--finetuned runs/real/minilm-l6_bbc_news_ft] [--layer 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import measure, write

from tasklift.data import load_dataset
from tasklift.inference import MultiTaskModel
from tasklift.loading import load_model
from tasklift.models import encode, num_layers
from tasklift.probe import FineTuned
from tasklift.taskmatrix import TaskMatrix


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="minilm-l6")
    ap.add_argument("--finetuned", default="runs/real/minilm-l6_bbc_news_ft")
    ap.add_argument("--data", default="bbc_news")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--n", type=int, default=512, help="inputs served")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--tasks", default="1,2,4,8")
    args = ap.parse_args()
    if not Path(args.finetuned).is_dir():
        raise SystemExit(f"no fine-tuned model at {args.finetuned}: run reports/run_real.sh")
    torch.manual_seed(0)
    texts = load_dataset(args.data).X
    fit_on, served = texts[:400], texts[400 : 400 + args.n]
    base, tok = load_model(args.base, device="cpu")
    kw = dict(batch_size=args.batch_size, max_length=args.max_length, device="cpu")
    tm = TaskMatrix(base, args.finetuned, layer=args.layer, **kw).fit(fit_on)
    ft = FineTuned(args.finetuned, **kw).fit()
    model = ft.finetuned_model_
    batches = [
        encode(served[i : i + args.batch_size], tok, max_length=args.max_length)
        for i in range(0, len(served), args.batch_size)
    ]

    def run_finetuned(n: int):
        with torch.inference_mode():
            for batch in batches:
                for _ in range(n):  # N fine-tuned models, one after the other
                    model(**batch)

    def run_tasks(serve: MultiTaskModel):
        with torch.inference_mode():
            for batch in batches:
                serve(**batch)

    rows = []
    for n in [int(v) for v in args.tasks.split(",")]:
        serve = MultiTaskModel({f"task{k}": tm.model() for k in range(n)})
        run_tasks(serve)  # warm-up
        _, t_tm, _ = measure(run_tasks, serve, repeat=3)
        _, t_ft, _ = measure(run_finetuned, n, repeat=3)
        rows.append(
            {
                "tasks N": n,
                "task matrices (ex/s)": len(served) / t_tm,
                "N fine-tuned (ex/s)": len(served) / t_ft,
                "speed-up": t_ft / t_tm,
                "goal 0.8 N": 0.8 * n,
                "met": t_ft / t_tm >= 0.8 * n,
            }
        )
        print(rows[-1], flush=True)
    L = num_layers(base)
    notes = (
        f"Base {args.base} ({L} layers), fine-tuned {args.finetuned}; every task reads layer "
        f"{args.layer} (the pass stops there; L / i = {L / args.layer:.2f}). {len(served)} "
        f"{args.data} texts, batch {args.batch_size}, {args.max_length} tokens, CPU, best of 3. "
        "N fine-tuned models = N passes of the fine-tuned model (same size as each of them)."
    )
    cols = [
        "tasks N",
        "task matrices (ex/s)",
        "N fine-tuned (ex/s)",
        "speed-up",
        "goal 0.8 N",
        "met",
    ]
    write("multitask", rows, cols, title="Multi-task serving from one base pass", notes=notes)


if __name__ == "__main__":
    main()
