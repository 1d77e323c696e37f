"""(c) Full layer sweep: one extraction pass for all L+1 layers vs L+1 separate per-layer fits.

Both produce a task matrix for every base layer of the same model pair on the same inputs;
the separate fits each run the base (stopping after their layer) and the fine-tuned model.

    python benchmarks/bench_sweep.py [--base DIR] [--finetuned runs/demo/finetuned] [--n 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import measure, write

from tasklift.data import load_dataset
from tasklift.loading import load_model
from tasklift.models import num_layers
from tasklift.taskmatrix import TaskMatrix


def main() -> None:
    from tasklift.loading import demo_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None, help="base folder (default: the packaged MiniLM)")
    ap.add_argument("--finetuned", default="runs/demo/finetuned", help="made by `tasklift demo`")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if not Path(args.finetuned).is_dir():
        raise SystemExit(f"no fine-tuned model at {args.finetuned}: run `tasklift demo` first")
    kw = dict(device=args.device, dtype=args.dtype, batch_size=32, max_length=64)
    base, _ = load_model(args.base or demo_model(), device=args.device, dtype=args.dtype)
    ft, _ = load_model(args.finetuned, head=True, device=args.device, dtype=args.dtype)
    base_dir = args.base or demo_model()
    X = load_dataset("rotten_tomatoes").X[: args.n]
    layers = num_layers(base) + 1

    def one_pass():
        return TaskMatrix(base_dir, args.finetuned, layer="auto", **kw).fit(X)

    def separate():
        return [TaskMatrix(base_dir, args.finetuned, layer=i, **kw).fit(X) for i in range(layers)]

    one, t_one, _ = measure(one_pass)
    sep, t_sep, _ = measure(separate)
    diff = max(
        float(np.abs(one.maps_[i].coef_ - s.maps_[i].coef_).max()) for i, s in enumerate(sep)
    )
    rows = [
        {
            "method": "tasklift: one pass, all layers (+5-fold CV stats)",
            "seconds": round(t_one, 2),
            "extraction passes": 2,
            "speed-up": round(t_sep / t_one, 2),
        },
        {
            "method": f"{layers} separate per-layer fits",
            "seconds": round(t_sep, 2),
            "extraction passes": 2 * layers,
            "speed-up": 1.0,
        },
    ]
    write(
        "sweep",
        rows,
        list(rows[0]),
        title="Layer sweep cost",
        notes=f"{args.n} Rotten Tomatoes snippets, MiniLM base ({layers} hidden states) and "
        "the demo's "
        f"fine-tuned model; max |W difference| between the two routes: {diff:.1e}.",
    )
    del base, ft


if __name__ == "__main__":
    main()
