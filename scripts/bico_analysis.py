"""Why BiCo is strong or weak on a real pair: where τ_B helps, how close each layer gets to B
fine-tuned, and what principled changes buy (issue 11, point 5).

For one pair and task (models of reports/run_real.sh, draw 0's calibration and validation):
1. per-layer similarity to B fine-tuned: linear CKA of B's [CLS] states at every layer with B_ft's,
   for B + carried head, B + τ_B (BiCo) and B_ft itself (1.0), as the paper's Figure 2 does;
2. which layers help or hurt: test accuracy with τ_B applied to one block only, and to all
   blocks but one;
3. principled variants, each a full transfer scored on the same test set: centred covariances,
   per-block scales chosen greedily on validation, and 32 / 128 / 512 calibration inputs.

    python scripts/bico_analysis.py --pair minilm-l6:minilm-l3 --data tweets
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from transfer_real import real_split

from tasklift.data import calibration_split
from tasklift.evaluate import accuracy
from tasklift.extract import embed
from tasklift.io import write_text
from tasklift.loading import load_model
from tasklift.report import markdown_table
from tasklift.taskvector import TaskVector
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS

_BLOCK = re.compile(r"\.layer\.(\d+)\.")


def cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two (N, d) representations (centred)."""
    x, y = x - x.mean(0), y - y.mean(0)
    hsic = np.linalg.norm(x.T @ y) ** 2
    return float(hsic / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _split_tv(tv: TaskVector) -> dict[int | None, TaskVector]:
    """τ_B by block index (None: embeddings and anything outside the blocks)."""
    out: dict[int | None, dict] = {}
    for k, v in tv.deltas.items():
        m = _BLOCK.search(k)
        out.setdefault(int(m.group(1)) if m else None, {})[k] = v
    return {b: TaskVector(d) for b, d in out.items()}


def _scaled(parts: dict, scales: dict) -> TaskVector:
    """One task vector from disjoint per-block parts, each at its own scale."""
    return TaskVector({k: scales[b] * v for b, p in parts.items() for k, v in p.deltas.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="minilm-l6:minilm-l3")
    ap.add_argument("--data", default="tweets")
    ap.add_argument("--runs", default="runs/real")
    ap.add_argument("--test-size", default="1000")
    ap.add_argument("--scales", default="0,0.5,1,1.5,2,3,4", help="the wider grid of a variant")
    ap.add_argument("-o", "--output", type=Path, default=Path("reports/transfer_real"))
    args = ap.parse_args()
    a, b = args.pair.split(":")
    a_ft, b_ft = f"{args.runs}/{a}_{args.data}_ft", f"{args.runs}/{b}_{args.data}_ft"
    train, test = real_split(args.data, a_ft, args.test_size)  # the table's split
    calib, val, _ = calibration_split(train, calib=128, val=200, seed=0)
    scales = [0.0, 0.5, 1.0, 1.5, 2.0]  # the table's grid (scripts/transfer_real.py)
    kw = dict(max_length=64, device="cpu", **PREVIOUS_DEFAULTS)  # as the table was made

    def fit(**extra) -> tuple[Transfer, float]:
        t0 = time.time()
        c = extra.pop("calib", calib)
        extra.setdefault("scales", scales)
        t = Transfer(a, a_ft, b, method="bico", **kw, **extra).fit(
            c.X, c.y, X_val=val.X, y_val=val.y
        )
        return t, time.time() - t0

    t, secs = fit()
    proc = t.processor_
    base_acc = t.score(test.X, test.y, scale=0.0)
    bico_acc = t.score(test.X, test.y)
    rows_var = [{"variant": "BiCo (as in the table)", "accuracy": bico_acc, "scale": t.scale_,
                 "seconds": secs}]  # fmt: skip

    # 1. per-layer CKA with B fine-tuned, on the test inputs
    ft_model, _ = load_model(b_ft, head=True, device="cpu")
    X = test.X[:500]
    states = {
        "B + carried head": embed(t.target_model_, X, proc, max_length=64),
        "B + τ_B (BiCo)": embed(t.model_, X, proc, max_length=64),
    }
    ref = embed(ft_model, X, proc, max_length=64)
    cka_rows = [
        {"layer": i, **{name: cka(s[i].numpy(), ref[i].numpy()) for name, s in states.items()}}
        for i in sorted(ref)
    ]

    # 2. which blocks help or hurt (τ_B at the chosen scale)
    parts = _split_tv(t.task_vector_)
    y = test.y
    logits = lambda model: t._logits(model, test.X, proc)  # noqa: E731
    block_rows = []
    for blk in sorted(parts, key=lambda k: -1 if k is None else k):
        only = parts[blk].apply_to(t.target_model_, scale=t.scale_)
        rest = TaskVector(
            {k: v for k, v in t.task_vector_.deltas.items() if k not in parts[blk].deltas}
        )
        without = rest.apply_to(t.target_model_, scale=t.scale_)
        block_rows.append({
            "block": "embeddings/other" if blk is None else blk,
            "τ_B on this block only": accuracy(logits(only), y),
            "τ_B on all but this block": accuracy(logits(without), y),
        })  # fmt: skip

    # 3. per-block scales chosen greedily on validation (one block at a time, others fixed)
    chosen = {blk: t.scale_ for blk in parts}
    for blk in parts:
        best = None
        for s in scales:
            trial = {**chosen, blk: s}
            tv = _scaled(parts, trial)
            acc = accuracy(t._logits(tv.apply_to(t.target_model_), val.X, proc), val.y)
            if best is None or acc > best[0]:
                best = (acc, s)
        chosen[blk] = best[1]
    tv = _scaled(parts, chosen)
    rows_var.append({"variant": "per-block scales (greedy on validation)",
                     "accuracy": accuracy(logits(tv.apply_to(t.target_model_)), y),
                     "scale": json.dumps({str(k): v for k, v in chosen.items()})})  # fmt: skip
    wide = [float(v) for v in args.scales.split(",")]
    t4, secs = fit(scales=wide)
    rows_var.append({"variant": f"scale grid {wide}", "accuracy": t4.score(test.X, test.y),
                     "scale": t4.scale_, "seconds": secs})  # fmt: skip
    t2, secs = fit(center=True)
    rows_var.append({"variant": "centred covariances", "accuracy": t2.score(test.X, test.y),
                     "scale": t2.scale_, "seconds": secs})  # fmt: skip
    for n in (32, 512):
        c, _, _ = calibration_split(train, calib=n, val=200, seed=0)
        t3, secs = fit(calib=c)
        rows_var.append({"variant": f"{n} calibration inputs", "accuracy": t3.score(test.X, test.y),
                         "scale": t3.scale_, "seconds": secs})  # fmt: skip
    ft_acc = accuracy(t._logits(ft_model, test.X, proc), y)
    text = (
        f"# BiCo analysis: {a} -> {b} on {args.data}\n\n"
        f"Draw 0: 128 calibration and 200 validation inputs; {len(test)} test inputs. "
        f"B + carried head {base_acc:.3f}, BiCo {bico_acc:.3f}, B fine-tuned {ft_acc:.3f}.\n\n"
        "## Similarity to B fine-tuned, per layer (linear CKA of [CLS] states, 500 test inputs)\n\n"
        + markdown_table(cka_rows, list(cka_rows[0]))
        + "\n\n## Which blocks help or hurt (test accuracy)\n\n"
        + markdown_table(block_rows, list(block_rows[0]))
        + "\n\n## Variants (test accuracy)\n\n"
        + markdown_table(rows_var, ["variant", "accuracy", "scale", "seconds"])
        + "\n"
    )
    out = args.output / f"analysis_{a}_to_{b}_{args.data}.md"
    write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
