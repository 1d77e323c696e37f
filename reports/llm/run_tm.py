"""Task matrices on a real decoder (issue 19.3): base Qwen2.5-Coder-0.5B, fine-tuned = the same
model + its LoRA answering in code words (run_llm.py's bbc and imdb adapters), head = the
fine-tuned LM's verbaliser. Per layer the task matrix (least squares and ridge-CV) on the last
token; the linear probe, head-only and the fine-tuned model itself beside it.

The task matrices are fitted on 800 rows that neither the LoRA nor the test split used (their
targets are the fine-tuned model's embeddings: no labels needed); the probe gets those 800
rows' labels. Test: run_llm.py's 150 test prompts. Resumable per task:

    python reports/llm/run_llm.py finetune imdb q05     # the imdb adapter, if missing
    python reports/llm/run_tm.py                         # reports/llm/taskmatrix_<task>/
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from llm_tasks import CODE, CODE_SIZES, DATASET, PROMPT, split_rows

RUNS, HERE = Path("runs/llm"), Path(__file__).parent
BASE, N_TM = "qwen2.5-coder-0.5b", 800


def sweep(task: str) -> None:
    """One task's layer sweep, written to reports/llm/taskmatrix_<task>/."""
    from tasklift.data import Dataset, load_dataset, split
    from tasklift.experiments.sweep import compare
    from tasklift.lora import merged
    from tasklift.report import sweep_sections, write_report

    out = HERE / f"taskmatrix_{task}"
    if (out / "results.json").is_file():
        return
    ds = load_dataset(DATASET[task])
    _, _, test, rest = split_rows(ds, CODE_SIZES)
    tm_rows, _ = split(rest, test_size=len(rest) - N_TM, seed=0)

    def prompts(d):
        return Dataset([PROMPT[task](t) for t in d.X], d.y, d.classes, f"{task} code words")

    t0 = time.time()
    a_ft = merged(BASE, RUNS / task / "lora_q05", device="cpu")
    rows = compare(BASE, a_ft, prompts(tm_rows), prompts(test), pool="last",
                   choices=CODE[task], max_length=96, batch_size=8, device="cpu",
                   progress=True)  # fmt: skip
    seconds = time.time() - t0
    title = f"Task matrices on Qwen2.5-Coder-0.5B: {task} answered with code words"
    intro = (
        f"Base {BASE}; fine-tuned = base + the LoRA of `reports/llm/run_llm.py finetune {task} "
        f"q05` (240 rows, attention only), read by its verbaliser over {list(CODE[task].values())}"
        f". Task matrices fitted on {N_TM} other rows (no labels: the targets are the fine-tuned "
        f"model's last-token embeddings), probe on the same rows with labels; "
        f"{len(test)} test prompts. {seconds:.0f} s on this 2-core CPU."
    )
    settings = {"base": BASE, "adapter": str(RUNS / task / "lora_q05"), "n_train": N_TM,
                "n_test": len(test), "pool": "last", "max_length": 96,
                "command": "python reports/llm/run_tm.py"}  # fmt: skip
    write_report(
        out,
        title=title,
        sections=sweep_sections(rows, out, title=title),
        settings=settings,
        results={"rows": rows, "seconds": seconds},
        intro=intro,
    )
    print((out / "report.md").read_text())


if __name__ == "__main__":
    for name in sys.argv[1:] or ["bbc", "imdb"]:
        sweep(name)
