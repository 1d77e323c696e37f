"""BiCo ablations on the pretrained-here ViT pair (see reports/run_transfer.sh): calibration size,
labels vs A_ft's own predictions, token alignment, and the activation tie-break.

    python scripts/bico_ablations.py --target runs/bico/vit_b_seed -o reports/transfer/ablations
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tasklift.data import calibration_split, load_dataset, split
from tasklift.io import write_text
from tasklift.report import markdown_table, write_json
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="runs/bico/vit_a")
    ap.add_argument("--finetuned", default="runs/bico/vit_a_ft")
    ap.add_argument("--target", default="runs/bico/vit_b_seed")
    ap.add_argument("-o", "--output", default="reports/transfer/ablations")
    args = ap.parse_args()
    train, test = split(load_dataset("digits", image_size=32), test_size=0.2, seed=0)
    pool, val, _ = calibration_split(train, calib=512, val=200)  # 512 calibration candidates
    runs = [("calibration inputs", n, dict(n=n)) for n in (16, 32, 128, 512)]
    runs += [("labels", "A_ft's predictions", dict(labels=False))]
    runs += [("token alignment", tok, dict(token=tok)) for tok in ("cls", "mean")]
    runs += [("tie-break weight", 0.0, dict(tie=0.0)), ("tie-break weight", 1e-2, dict(tie=1e-2))]
    rows = []
    for factor, value, kw in runs:
        calib = pool.subset(range(kw.get("n", 128)))
        t0 = time.time()
        t = Transfer(
            args.source,
            args.finetuned,
            args.target,
            method="bico",
            token=kw.get("token", "all"),
            tie_break=kw.get("tie", 1e-4),
            stats_dtype=PREVIOUS_DEFAULTS["stats_dtype"],
        ).fit(
            calib.X,
            calib.y if kw.get("labels", True) else None,
            X_val=val.X,
            y_val=val.y,
        )
        rows.append(
            {
                "factor": factor,
                "value": value,
                "accuracy": t.score(test.X, test.y),
                "scale": t.scale_,
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.output)
    write_json(out.with_suffix(".json"), {"settings": vars(args), "rows": rows})
    table = markdown_table(rows, ["factor", "value", "accuracy", "scale", "seconds"])
    write_text(
        out.with_suffix(".md"),
        f"# BiCo ablations: {args.finetuned} -> {args.target}\n\nDefaults: 128 labelled "
        "calibration inputs, all tokens paired, tie-break 1e-4; the task-vector scale chosen "
        "on the same 200 "
        f"validation inputs; {len(test)} test inputs. Calibration and validation inputs come "
        "from a larger held-out pool than in the main table, so its 128-input row differs from "
        f"the table's.\n\n{table}\n",
    )


if __name__ == "__main__":
    main()
