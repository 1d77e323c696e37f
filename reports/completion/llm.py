"""The zero completion against the SVD completion on a real decoder pair: the BBC code-word LoRA
of SmolLM2-135M moved onto Qwen2.5-Coder-0.5B (words paired across tokenizers), BiCo, draw 0 of
reports/llm/run_llm.py, both rules side by side in one process.

    tasklift assets --prepare smollm2-135m && tasklift assets --prepare qwen2.5-coder-0.5b
    python reports/llm/run_llm.py finetune bbc smol
    python reports/completion/llm.py       # reports/completion/llm.{json,md}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasklift import maps, solvers
from tasklift.io import write_text
from tasklift.report import markdown_table

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "llm")]
import run_llm  # noqa: E402
from run import svd_completion  # noqa: E402


def main() -> None:
    rows, write, opened = [], run_llm._write, []

    def counting(fn):
        def solve(xy, tie=None, *, rtol):
            R, open_dims = fn(xy, tie, rtol=rtol)
            opened.append((open_dims, min(xy.shape)))
            return R, open_dims

        return solve

    for rule, fn in (("zero", solvers.procrustes), ("svd", svd_completion)):
        opened.clear()
        maps.procrustes = counting(fn)
        run_llm._write = lambda task, name, result, rule=rule: (  # noqa: E731
            rows.append({"rule": rule, **result}) or write(task, f"{name}_{rule}", result)
        )
        run_llm.transfer("bbc", "smol", "q05", "bico", 0)
        rows[-1]["open directions"] = f"{sum(o for o, _ in opened)} / {sum(k for _, k in opened)}"
    keep = ["rule", "accuracy", "scale", "val_scores", "open directions", "fit_seconds"]
    table = [{k: r.get(k) for k in keep} for r in rows]
    write_text(HERE / "llm.json", json.dumps(table, indent=1))
    write_text(HERE / "llm.md", markdown_table(table, keep) + "\n")
    print(markdown_table(table, keep))


if __name__ == "__main__":
    main()
