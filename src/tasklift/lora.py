"""LoRA adapters (PEFT), what users hold: fine-tunes of causal LMs (loss on the target tokens
only, as calibration counts it; cached by recipe), the dense A_ft = A + (α/r)·B·A (`merged`),
and adapters read as task vectors of factors and written back as PEFT folders for another base
(`read_adapter`, `write_adapter`): BiCo moves a rank-r LoRA to an exact rank-r LoRA of B.
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

from .families import family_of, roles
from .io import atomic_dir, check_output
from .taskvector import LowRank, TaskVector
from .transfer.lm import lm_encode

__all__ = [
    "lora_targets", "lora_finetune", "lora_finetune_cached", "merged", "is_adapter",
    "read_adapter", "write_adapter", "write_moved",
]  # fmt: skip

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
        (tmp / STAMP).write_text(json.dumps({"tasklift": _version(), "recipe": stamp}, indent=1))
    seconds = round(time.time() - t0, 1)
    return {
        **stamp,
        "reused": False,
        "seconds": seconds,
        "final_loss": float(np.mean(losses[-10:])),
    }


def merged(base: str | os.PathLike | nn.Module, adapter: str | os.PathLike, **load) -> nn.Module:
    """The dense fine-tuned model A + adapter (PEFT's merge), as a plain *ForCausalLM (a model
    passed as `base` is copied first)."""
    from peft import PeftModel

    from .loading import load_model

    if isinstance(base, nn.Module):  # merging writes into the model: never into the caller's
        base = copy.deepcopy(base)
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


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
#: adapter settings whose deltas are not B·A alone (DoRA's magnitudes, LoRA biases, patterns)
_UNMOVED = ("alpha_pattern", "fan_in_fan_out", "modules_to_save", "use_dora", "lora_bias")
#: settings that name A's layers or modules: not B's (layers 0-5 of A are not B's layers)
_A_ONLY = ("layers_to_transform", "layers_pattern", "rank_pattern", "exclude_modules")
_PREFIX = "base_model.model."


def is_adapter(src) -> bool:
    """Whether `src` is a PEFT adapter folder (not a model)."""
    return isinstance(src, (str, os.PathLike)) and (Path(src) / ADAPTER_CONFIG).is_file()


def read_adapter(folder: str | os.PathLike) -> tuple[TaskVector, dict]:
    """A PEFT LoRA adapter as a task vector of `LowRank` deltas (module.weight: (scaling · B,
    A), never multiplied out) and its config.

    Raises:
        ValueError: not a LoRA adapter, or one whose form tasklift does not move (per-module
            alpha/rank patterns, fan_in_fan_out layers, trained biases, modules_to_save).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    bad = [k for k in _UNMOVED if config.get(k)]
    bad += ["bias"] if config.get("bias", "none") != "none" else []
    if config.get("peft_type") != "LORA" or bad:
        raise ValueError(
            f"{folder} is a {config.get('peft_type')} adapter with {bad or 'nothing'} set; "
            f"tasklift moves plain LoRA adapters (none of {', '.join(_UNMOVED)}, no trained "
            "bias): merge it and pass the merged model instead"
        )
    weights = load_file(folder / ADAPTER_WEIGHTS)
    deltas = {}
    for key in weights:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(_PREFIX) : -len(".lora_A.weight")]
        down, up = weights[key], weights[key.replace(".lora_A.", ".lora_B.")]
        r = down.shape[0]
        scaling = config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)
        deltas[f"{module}.weight"] = LowRank(scaling * up.float(), down.float())
    unread = [k for k in weights if "lora_" in k and ".lora_A." not in k and ".lora_B." not in k]
    if unread:  # e.g. an embedding LoRA (lora_embedding_A): merged() would include it, τ_A not
        raise ValueError(f"{folder} holds LoRA weights tasklift does not move, e.g. {unread[:2]}")
    if not deltas:
        raise ValueError(f"{folder} holds no LoRA weights ({ADAPTER_WEIGHTS})")
    return TaskVector(deltas), config


def write_adapter(
    folder: str | os.PathLike,
    tv: TaskVector,
    config: dict,
    base: str,
    *,
    overwrite: bool = False,
) -> dict[str, float]:
    """τ as a PEFT LoRA adapter folder for the model `base` (atomically), the source adapter's
    r and lora_alpha kept. Low-rank deltas are written exactly; a dense one (GradFix's mask)
    is re-factorised by truncated SVD at rank r. Returns {module: relative error} of those."""
    from safetensors.torch import save_file

    r = int(config["r"])
    scaling = config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)
    tensors, errors = {}, {}
    for key, delta in tv.deltas.items():
        module = key.removesuffix(".weight")
        if not isinstance(delta, LowRank):
            u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
            delta = LowRank((u[:, :r] * s[:r]).float(), vh[:r].float())
            errors[module] = float(s[r:].norm() / s.norm().clamp_min(1e-30))
        rank = delta.rank  # r, or the sum of ranks of added adapters
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = delta.down.contiguous()
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = (delta.up / scaling).contiguous()
        if rank != r:
            raise ValueError(f"{module}: rank {rank}, not the adapter's r = {r}")
    targets = sorted({k.removesuffix(".weight").rsplit(".", 1)[-1] for k in tv.deltas})
    out_config = {k: v for k, v in config.items() if k not in _A_ONLY}
    out_config.update(base_model_name_or_path=str(base), target_modules=targets)
    check_output(folder, overwrite=overwrite)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(out_config, indent=2))
        (tmp / STAMP).write_text(json.dumps({"tasklift": _version(), "moved_to": str(base),
                                             "refactorised": errors}, indent=1))  # fmt: skip
    return errors


def _version() -> str:
    from . import __version__

    return __version__


def write_moved(
    out: str | os.PathLike,
    adapters: Sequence,
    read: Sequence[tuple[TaskVector, dict]],
    moved: Sequence[dict],
    *,
    scale: float,
    target: str,
    overwrite: bool = False,
    **info: object,
) -> list[dict]:
    """Each moved adapter as a PEFT folder out/<its name> for `target`, and the manifest
    out/tasklift_run.json of what went where (with `info`: source, method, how the maps were
    made); returns the manifest's records."""
    from .io import write_text

    records = []
    for path, (tv, config), deltas in zip(adapters, read, moved, strict=True):
        folder = Path(out) / Path(path).name
        errors = write_adapter(
            folder, TaskVector(deltas) * scale, config, target, overwrite=overwrite
        )
        moved_n = f"{len(deltas)}/{len(tv.deltas)}"
        records.append(
            {
                "adapter": str(path),
                "moved_to": str(folder),
                "moved": moved_n,
                "refactorised": errors,
            }
        )
    manifest = {"tasklift": _version(), "kind": "moved adapters", "target": target, **info,
                "scale": scale, "adapters": records}  # fmt: skip
    write_text(Path(out) / "tasklift_run.json", json.dumps(manifest, indent=1))
    return records
