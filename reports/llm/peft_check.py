"""Moved adapters scored with plain transformers + PEFT, no tasklift import (issue 20.5): each
runs/llm/<task>/adapter_* folder is loaded onto B with `PeftModel.from_pretrained` and scored
on the test split run_llm.py exported (bbc: verbaliser accuracy; persona: NLL per token of the
reference responses), to compare with the numbers tasklift measured on B + τ_B.

    python reports/llm/peft_check.py runs/llm/bbc ~/.cache/tasklift/qwen2.5-coder-1.5b-0.2.0 \
        'adapter_q05_q15_*'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer


def accuracy(model, tok, test: dict) -> float:
    """Verbaliser: argmax of the last prompt token's logits over the words' first tokens."""
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in test["choices"]]
    tok.padding_side, right = "left", 0
    for i in range(0, len(test["prompts"]), 8):
        enc = tok(test["prompts"][i : i + 8], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**enc).logits[:, -1, ids]
        right += int((logits.argmax(-1) == torch.tensor(test["labels"][i : i + 8])).sum())
    return right / len(test["prompts"])


def nll(model, tok, test: dict, max_length: int = 128) -> float:
    """Mean negative log-likelihood per token of the targets (the tokens that start after the
    prompt's last character) after their prompts."""
    total, count = 0.0, 0
    for p, t in zip(test["prompts"], test["targets"], strict=True):
        enc = tok(p + t, truncation=True, max_length=max_length, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        tgt = ids[0, 1:]
        keep = torch.tensor([start >= len(p) for start, _ in enc["offset_mapping"][1:]])
        total -= float(logp[torch.arange(len(tgt)), tgt][keep].sum())
        count += int(keep.sum())
    return total / count


def sizes(folder: Path) -> dict:
    """MB on disk of the adapter's weights, and of the same τ_B as dense float32 matrices."""
    weights = folder / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    dense = sum(s[0] * shapes[k.replace("lora_B", "lora_A")][1]
                for k, s in shapes.items() if ".lora_B." in k)  # fmt: skip
    return {"adapter_mb": round(weights.stat().st_size / 2**20, 2),
            "dense_mb": round(4 * dense / 2**20, 1)}  # fmt: skip


def main() -> None:
    runs, base, pattern = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    test = json.loads((runs / "test_split.json").read_text())
    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = tok.pad_token or tok.eos_token
    path = runs / "peft_check.json"  # resumable: folders already scored are kept
    out = json.loads(path.read_text()) if path.is_file() else {}
    for folder in sorted(runs.glob(pattern)):
        if folder.name in out:  # scored before: its sizes (added later) filled in
            out[folder.name].update(sizes(folder))
            path.write_text(json.dumps(out, indent=1) + "\n")
            continue
        config = json.loads((folder / "adapter_config.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
        model = PeftModel.from_pretrained(model, folder).eval()
        if test.get("choices"):
            score = accuracy(model, tok, test)
        else:
            score = nll(model, tok, test, test["max_length"])
        base_name = config.get("base_model_name_or_path")
        out[folder.name] = {"score": score, "rank": config["r"], "base": base_name, **sizes(folder)}
        print(folder.name, out[folder.name], flush=True)
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
