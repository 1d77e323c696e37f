"""LoRA fine-tunes of causal LMs with PEFT: what users hold, and the A_ft of the decoder
experiments. Training counts the loss on the target tokens only (as calibration does); the
adapter is saved as a plain PEFT folder (with tasklift's recipe stamp) and reused when the
recipe matches; `merged` gives the dense A_ft = A + (α/r)·B·A that a task vector reads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .families import family_of, roles
from .io import atomic_dir, check_output
from .transfer.lm import lm_encode

__all__ = ["lora_targets", "lora_finetune", "lora_finetune_cached", "merged"]

#: the modules a LoRA adapts, by role: attention and FFN projections
LORA_ROLES = ("q", "k", "v", "o", "qkv", "ffn_gate", "ffn_in", "ffn_out")
STAMP = "tasklift_lora.json"


def lora_targets(model: nn.Module) -> list[str]:
    """PEFT's target_modules for `model`: the last name part of its attention and FFN
    projections, read from its family's roles (q_proj ... down_proj for Llama and Qwen2)."""
    names = {n.rsplit(".", 1)[-1] for n, (role, _) in roles(model).items() if role in LORA_ROLES}
    if not names:
        raise ValueError(
            f"no attention or FFN projections known for family {family_of(model).name!r}"
        )
    return sorted(names)


def lora_finetune(
    model: nn.Module,
    prompts: Sequence[str],
    targets: Sequence[str],
    tokenizer,
    *,
    r: int = 8,
    alpha: float = 16.0,
    lr: float = 2e-4,
    epochs: float = 1.0,
    batch_size: int = 8,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = False,
):
    """Train a LoRA adapter on (prompt, target) pairs, loss on the target tokens; returns the
    PeftModel (its base `model` is wrapped in place) and the step losses."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model),
                        task_type="CAUSAL_LM")  # fmt: skip
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n, order = len(prompts), np.random.default_rng(seed)
    steps = max(1, round(epochs * n / batch_size))
    idx = np.concatenate([order.permutation(n) for _ in range(int(np.ceil(epochs)) + 1)])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    peft_model.train()
    losses = []
    dev = next(peft_model.parameters()).device
    for s in tqdm(range(steps), desc="LoRA", disable=not progress):
        rows = idx[s * batch_size : (s + 1) * batch_size]
        batch = lm_encode([prompts[i] for i in rows], [targets[i] for i in rows], tokenizer,
                          max_length=max_length)  # fmt: skip
        loss = peft_model(**{k: v.to(dev) for k, v in batch.items()}).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    peft_model.eval()
    return peft_model, losses


def lora_finetune_cached(
    base: str | os.PathLike,
    prompts: Sequence[str],
    targets: Sequence[str],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = False,
    **recipe,
) -> dict:
    """`lora_finetune` of the causal LM `base` saved as a PEFT adapter folder `out` (atomically),
    unless `out` holds an adapter of the same recipe; returns the recipe with `reused`,
    `seconds` and `final_loss`. Any other existing `out` needs `overwrite` (and tasklift's)."""
    import hashlib

    from .loading import load_model

    out = Path(out)
    data = hashlib.sha256(json.dumps([list(prompts), list(targets)]).encode()).hexdigest()
    stamp = {"base": str(base), "n_train": len(prompts), "data_sha256": data, **recipe}
    if (out / STAMP).is_file() and json.loads((out / STAMP).read_text()).get("recipe") == stamp:
        return {**stamp, "reused": True}
    check_output(out, overwrite=overwrite)
    t0 = time.time()
    model, tok = load_model(base, lm=True, device=device, dtype="fp32")
    peft_model, losses = lora_finetune(model, prompts, targets, tok, progress=progress, **recipe)
    from . import __version__

    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps({"tasklift": __version__, "recipe": stamp}, indent=1))
    seconds = round(time.time() - t0, 1)
    return {
        **stamp,
        "reused": False,
        "seconds": seconds,
        "final_loss": float(np.mean(losses[-10:])),
    }


def merged(base: str | os.PathLike | nn.Module, adapter: str | os.PathLike, **load) -> nn.Module:
    """The dense fine-tuned model A + adapter (PEFT's merge), as a plain *ForCausalLM (a model
    passed as `base` is merged into in place)."""
    from peft import PeftModel

    from .loading import load_model

    model, _ = load_model(base, lm=True, **load)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
