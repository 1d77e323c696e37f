"""LoRA adapters (PEFT), what users hold: fine-tunes of causal LMs (loss on the target tokens
only, as calibration counts it; cached by recipe), the dense A_ft = A + (α/r)·B·A (`merged`),
and adapters read as task vectors of factors and written back as PEFT folders for another base
(`read_adapter`, `write_adapter`): BiCo moves a rank-r LoRA to an exact rank-r LoRA of B. A
sequence classifier's adapter (task_type SEQ_CLS) also saves its head whole (modules_to_save):
A_ft then carries that head, and B's carried head is saved the same way (`head_state`).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapter_io import (
    STAMP,
    adapter_config,
    head_state,
    is_adapter,
    is_classifier,
    read_adapter,
    saved_tensors,
    write_adapter,
    write_moved,
)
from .families import family_of, roles
from .io import atomic_dir, check_output
from .transfer.lm import lm_encode

# the adapter folders' functions live in `adapter_io`; they are named here for their callers
__all__ = [
    "lora_targets", "lora_finetune", "lora_finetune_cached", "merged", "is_adapter",
    "read_adapter", "head_state", "write_adapter", "write_moved",
]  # fmt: skip

#: the modules a LoRA adapts, by role: attention and FFN projections
LORA_ROLES = ("q", "k", "v", "o", "qkv", "ffn_gate", "ffn_in", "ffn_out")


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
    modules: Sequence[str] | None = None,
    progress: bool = False,
):
    """Train a LoRA adapter on (prompt, target) pairs, loss on the target tokens; returns the
    PeftModel (its base `model` is wrapped in place) and the step losses. `modules`: PEFT
    target_modules (default: every attention and FFN projection, `lora_targets`)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    adapted = list(modules) if modules else lora_targets(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=adapted,
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
        losses.append(float(loss.detach()))
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

    from . import __version__
    from .loading import load_model

    out = Path(out)
    data = hashlib.sha256(json.dumps([list(prompts), list(targets)]).encode()).hexdigest()
    stamp = {"base": str(base), "n_train": len(prompts), "data_sha256": data, **recipe}
    stamp = json.loads(json.dumps(stamp))  # as it reads back (tuples become lists)
    if (out / STAMP).is_file() and json.loads((out / STAMP).read_text()).get("recipe") == stamp:
        return {**stamp, "reused": True}
    check_output(out, overwrite=overwrite)
    t0 = time.time()
    model, tok = load_model(base, lm=True, device=device, dtype="fp32")
    peft_model, losses = lora_finetune(model, prompts, targets, tok, progress=progress, **recipe)
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
    """The dense fine-tuned model A + adapter (PEFT's merge): a plain *ForCausalLM, or for a
    sequence classifier's adapter (task_type SEQ_CLS) a *ForSequenceClassification carrying the
    adapter's head (a model passed as `base` is copied first)."""
    from peft import PeftModel

    from .loading import load_model

    if isinstance(base, nn.Module):  # merging writes into the model: never into the caller's
        base = copy.deepcopy(base)
    if is_classifier(adapter_config(adapter)):
        model = adapter_classifier(base, Path(adapter), **load)
    else:
        model, _ = load_model(base, lm=True, **load)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except RuntimeError as e:  # PEFT's size-mismatch report: dozens of lines
        raise ValueError(
            f"the adapter {adapter} does not fit A ({base}): "
            f"{str(e).strip().splitlines()[-1].strip()[:160]}; pass the base it was trained on"
        ) from None
    out = peft_model.merge_and_unload().eval()
    out.requires_grad_(True)  # PEFT froze the base: calibration needs its gradients
    return out


def adapter_classifier(base: str | os.PathLike | nn.Module, folder: Path, **load) -> nn.Module:
    """A as the sequence classifier a SEQ_CLS adapter was trained on: a head of the adapter's
    class count (A's own where A is a classifier of that count), for PEFT to load the saved
    head layers into.

    Raises:
        ValueError: the adapter saves whole modules outside the head (their change would not be
            moved), no head at all, or leaves head layers untrained that A has no weights for.
    """
    import transformers as tf

    from .loading import _config, _resolve_path, load_model
    from .models import backbone, load_backbone
    from .transfer.head import head_linears
    from .transfer.pairing import head_pair

    saved = saved_tensors(folder)
    config = base.config if isinstance(base, nn.Module) else _config(base, _resolve_path(base))
    with torch.device("meta"):  # the classifier's layout, no weights
        probe = tf.AutoModelForSequenceClassification.from_config(copy.deepcopy(config))
    layers = head_linears(probe)
    outside = sorted({k.rsplit(".", 1)[0] for k in saved} - set(head_pair(probe, probe, layers)[0]))
    if outside:
        raise ValueError(
            f"{folder} saves whole modules outside the classification head ({outside[:2]}); "
            "tasklift moves LoRA factors and the head: merge it and pass the merged model"
        )
    if f"{layers[-1]}.weight" not in saved:
        raise ValueError(
            f"{folder} saves no classification head ({layers[-1]} in modules_to_save); save the "
            "adapter with task_type='SEQ_CLS', or merge it and pass the merged model"
        )
    n = saved[f"{layers[-1]}.weight"].shape[0]
    if isinstance(base, nn.Module):
        own = "ForSequenceClassification" in type(base).__name__
    else:
        own = any("ForSequenceClassification" in k for k in config.architectures or [])
    if own and config.num_labels == n:  # A's own head, the saved layers loaded over it
        return load_model(base, head=True, **load)[0]
    untrained = [h for h in layers if f"{h}.weight" not in saved]
    if untrained:
        raise ValueError(
            f"{folder} does not save head layer(s) {untrained} and A ({base}) has no trained "
            f"head of {n} classes: PEFT would run them random; pass the classifier it was "
            "trained on as source"
        )
    if isinstance(base, nn.Module):  # a new head of n classes on A's backbone
        cfg = copy.deepcopy(config)
        cfg.num_labels = n  # fresh id2label / label2id of n classes
        model = tf.AutoModelForSequenceClassification.from_config(cfg)
        load_backbone(model, backbone(base))
        base = model
    return load_model(base, head=True, num_labels=n, **load)[0]
