"""How much the transfer table moves with the calibration draw: BiCo and gradient-only on each
pretrained-here pair (reports/run_transfer.sh) over several seeded calibration/validation draws.

    python scripts/transfer_draws.py -o reports/transfer/draws
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tasklift.data import calibration_split, load_dataset, split
from tasklift.io import write_text
from tasklift.report import markdown_table, write_json
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/bico")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--methods", default="bico,gradient")
    ap.add_argument("-o", "--output", default="reports/transfer/draws")
    args = ap.parse_args()
    train, test = split(load_dataset("digits", image_size=32), test_size=0.2, seed=0)
    rows = []
    for pair in ("seed", "wide", "deep"):
        for method in args.methods.split(","):
            accs = []
            for draw in range(args.draws):
                calib, val, _ = calibration_split(train, calib=128, val=200, seed=draw)
                r = args.runs
                t = Transfer(
                    f"{r}/vit_a",
                    f"{r}/vit_a_ft",
                    f"{r}/vit_b_{pair}",
                    method=method,
                    **PREVIOUS_DEFAULTS,
                ).fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
                accs.append(t.score(test.X, test.y))
            rows.append(
                {
                    "pair": pair,
                    "method": method,
                    "mean": float(np.mean(accs)),
                    "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                    "draws": ", ".join(f"{a:.3f}" for a in accs),
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.output)
    write_json(out.with_suffix(".json"), {"settings": vars(args), "rows": rows})
    write_text(
        out.with_suffix(".md"),
        f"# Transfer accuracy over {args.draws} calibration draws\n\nEach draw takes its own "
        "seeded 128 calibration and 200 validation inputs from the train split (draw 0 is the "
        f"main table's); {len(test)} test images.\n\n"
        + markdown_table(rows, ["pair", "method", "mean", "std", "draws"])
        + "\n",
    )


if __name__ == "__main__":
    main()
