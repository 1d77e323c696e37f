"""How far two fine-tuned model folders differ: the largest absolute difference of any weight,
the tensors that differ at all, and whether their recipes (tasklift_finetune.json) agree.

    python scripts/compare_finetunes.py /tmp/ftA /tmp/ftB [-o reports/rerun_variation.json]

Used for reports/rerun_variation.md (the same recipe fine-tuned twice, in separate processes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

HEADS = ("classifier.", "score.")  # the new head a fine-tune starts (name prefixes)


def weights(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{folder} has no .safetensors weights")
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def stamp(folder: Path) -> dict:
    path = folder / "tasklift_finetune.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def compare(a: Path, b: Path) -> dict:
    wa, wb = weights(a), weights(b)
    if wa.keys() != wb.keys():
        raise SystemExit(f"{a} and {b} hold different tensors: {sorted(wa.keys() ^ wb.keys())[:5]}")
    diffs = {k: float(np.max(np.abs(wa[k].astype(np.float64) - wb[k]))) for k in sorted(wa)}
    worst = max(diffs, key=diffs.get)
    body = {k: v for k, v in diffs.items() if not k.startswith(HEADS)}
    sa, sb = stamp(a), stamp(b)
    return {
        "a": str(a),
        "b": str(b),
        "tensors": len(diffs),
        "parameters": int(sum(v.size for v in wa.values())),
        "tensors_differing": sum(v > 0 for v in diffs.values()),
        "max_abs_diff": diffs[worst],
        "max_abs_diff_tensor": worst,
        "max_abs_diff_without_head": max(body.values()) if body else None,
        "max_abs_diff_without_head_tensor": max(body, key=body.get) if body else None,
        "bitwise_equal": all(v == 0 for v in diffs.values()),
        "same_recipe": bool(sa) and sa.get("recipe") == sb.get("recipe"),
        "recipe": sa.get("recipe"),
        "made_with": [sa.get("made_with"), sb.get("made_with")],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="also write the result as JSON here")
    args = ap.parse_args()
    res = compare(args.a, args.b)
    text = json.dumps(res, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
