"""BiCo transfer vs fine-tuning the target directly, side by side in one run: seconds and test
accuracy on the pretrained-here ViT pair of reports/run_transfer.sh (run that first).

    python benchmarks/bench_transfer.py [--target runs/bico/vit_b_seed] [--epochs 5]
"""

from __future__ import annotations

import argparse
import time

from _common import write

from tasklift.data import calibration_split, load_dataset, split
from tasklift.finetune import finetune
from tasklift.loading import load_model
from tasklift.probe import FineTuned
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="runs/bico/vit_a")
    ap.add_argument("--finetuned", default="runs/bico/vit_a_ft")
    ap.add_argument("--target", default="runs/bico/vit_b_seed")
    ap.add_argument("--epochs", type=float, default=5)
    args = ap.parse_args()
    train, test = split(load_dataset("digits", image_size=32), test_size=0.2, seed=0)
    calib, val, held = calibration_split(train, calib=128, val=200)

    t0 = time.perf_counter()
    t = Transfer(args.source, args.finetuned, args.target, method="bico", **PREVIOUS_DEFAULTS).fit(
        calib.X, calib.y, X_val=val.X, y_val=val.y
    )
    bico_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, _ = load_model(args.target, head=True, num_labels=10, dtype="fp32")
    finetune(model, train.X, train.y, epochs=args.epochs, lr=1e-3, batch_size=16)
    ft_s = time.perf_counter() - t0

    rows = [
        {
            "method": "BiCo transfer (128 calibration + 200 validation inputs)",
            "labelled inputs": len(held),
            "seconds": round(bico_s, 1),
            "test accuracy": t.score(test.X, test.y),
        },
        {
            "method": f"fine-tune B ({args.epochs:g} epochs)",
            "labelled inputs": len(train),
            "seconds": round(ft_s, 1),
            "test accuracy": FineTuned(model).fit().score(test.X, test.y),
        },
    ]
    write(
        "transfer",
        rows,
        ["method", "labelled inputs", "seconds", "test accuracy"],
        title="BiCo transfer vs fine-tuning the target",
        notes=f"{args.finetuned} -> {args.target}; fine-tuning is {ft_s / bico_s:.1f}x the time "
        "of the transfer (both measured here, in one run).",
    )


if __name__ == "__main__":
    main()
