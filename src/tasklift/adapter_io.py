"""PEFT LoRA adapter folders: read as task vectors of factors (`read_adapter`) and written for
another base (`write_adapter`, `write_moved`), a sequence classifier's head saved whole under
modules_to_save with the names PEFT itself writes (`head_state`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .io import atomic_dir, check_output
from .taskvector import LowRank, TaskVector

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "STAMP", "is_adapter", "adapter_config", "is_classifier",
    "saved_tensors", "read_adapter", "head_state", "write_adapter", "write_moved",
]  # fmt: skip

STAMP = "tasklift_lora.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
#: adapter settings whose deltas are not B·A alone (DoRA's magnitudes, LoRA biases, patterns)
_UNMOVED = ("alpha_pattern", "fan_in_fan_out", "use_dora", "lora_bias")
#: modules PEFT wraps whole for a sequence classifier (SEQ_CLS): nothing inside them may be
#: wrapped again, so a head layer inside one is saved as part of it
_PEFT_HEADS = ("classifier", "score")
#: settings that name A's layers or modules: not B's (layers 0-5 of A are not B's layers)
_A_ONLY = ("layers_to_transform", "layers_pattern", "rank_pattern", "exclude_modules")
_PREFIX = "base_model.model."


def is_adapter(src) -> bool:
    """Whether `src` is a PEFT adapter folder (not a model)."""
    return isinstance(src, (str, os.PathLike)) and (Path(src) / ADAPTER_CONFIG).is_file()


def adapter_config(folder: str | os.PathLike) -> dict:
    """The adapter's adapter_config.json as a dict."""
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())


def saved_tensors(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters an adapter saves whole (modules_to_save), by their names in the model."""
    from safetensors.torch import load_file

    weights = load_file(Path(folder) / ADAPTER_WEIGHTS)
    return {k[len(_PREFIX) :]: v for k, v in weights.items() if "lora_" not in k}


def read_adapter(folder: str | os.PathLike) -> tuple[TaskVector, dict]:
    """A PEFT LoRA adapter as a task vector of `LowRank` deltas (module.weight: (scaling · B,
    A), never multiplied out) and its config; a sequence classifier's head, saved whole, is
    not part of it (`merged` carries it).

    Raises:
        ValueError: not a LoRA adapter, or one whose form tasklift does not move (per-module
            alpha/rank patterns, fan_in_fan_out layers, trained biases, modules_to_save other
            than a sequence classifier's head).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = adapter_config(folder)
    bad = [k for k in _UNMOVED if config.get(k)]
    bad += ["bias"] if config.get("bias", "none") != "none" else []
    if config.get("modules_to_save") and not is_classifier(config):
        bad.append("modules_to_save")  # an LM's lm_head or embeddings saved whole: not moved
    if config.get("peft_type") != "LORA" or bad:
        raise ValueError(
            f"{folder} is a {config.get('peft_type')} adapter with {bad or 'nothing'} set; "
            f"tasklift moves plain LoRA adapters (none of {', '.join(_UNMOVED)}, no trained "
            "bias, modules_to_save only for a SEQ_CLS head): merge it and pass the merged model"
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


def is_classifier(config: dict) -> bool:
    """Whether a PEFT adapter config is a sequence classifier's (task_type SEQ_CLS, its head in
    modules_to_save) rather than a causal LM's."""
    return config.get("task_type") == "SEQ_CLS"


def _wrapped(layer: str) -> str:
    """The module PEFT's modules_to_save wraps for head layer `layer`."""
    top = layer.split(".", 1)[0]
    return top if top in _PEFT_HEADS else layer


def head_state(model: nn.Module, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """What a PEFT adapter saves whole (modules_to_save) for a classifier whose head is
    `layers`: every tensor of each layer, or of the module PEFT wraps it in (RoBERTa's
    classifier.dense and classifier.out_proj are saved as `classifier`)."""
    out = {}
    for name in sorted({_wrapped(n) for n in layers}):
        state = model.get_submodule(name).state_dict()
        out.update({f"{name}.{k}": v.detach().to("cpu", torch.float32) for k, v in state.items()})
    return out


def write_adapter(
    folder: str | os.PathLike,
    tv: TaskVector,
    config: dict,
    base: str,
    *,
    head: dict[str, torch.Tensor] | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """τ as a PEFT LoRA adapter folder for the model `base` (atomically), the source adapter's
    r, lora_alpha and task_type kept. Low-rank deltas are written exactly; a dense one
    (GradFix's mask) is re-factorised by truncated SVD at rank r. `head`: a classifier's head
    (`head_state` of B), saved whole under modules_to_save as PEFT names it. Returns {module:
    relative error} of the re-factorised deltas."""
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
    head = head or {}
    tensors.update({f"{_PREFIX}{k}": v.contiguous() for k, v in head.items()})
    modules = sorted(k.removesuffix(".weight") for k in tv.deltas)
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    if {k.rsplit(".", 2)[-2] for k in head} & set(targets):  # a short name would hit the head
        targets = modules
    out_config = {k: v for k, v in config.items() if k not in _A_ONLY}
    out_config.update(
        base_model_name_or_path=str(base), target_modules=targets,
        modules_to_save=sorted({_wrapped(k.rsplit(".", 1)[0]) for k in head}) or None,
        init_lora_weights=True,  # a B module the names match but τ_B lacks starts at 0
    )  # fmt: skip
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
    target: str,
    **info: object,
) -> list[dict]:
    """Each moved adapter as a PEFT folder out/<its name> for `target`, and the manifest
    out/tasklift_run.json of what went where (with `info`: source, method, how the maps were
    made), all written at once (atomically; the caller checks `out` first); returns the
    manifest's records. `moved`: per adapter, its τ_B deltas ("deltas"), the scale they are
    written at ("scale"), the validation scores it was chosen by ("val_scores", {} for none)
    and a classifier's head ("head", `head_state`)."""
    from .io import atomic_dir

    records = []
    with atomic_dir(out) as tmp:  # all folders and the manifest appear together, or none
        for path, (tv, config), one in zip(adapters, read, moved, strict=True):
            deltas = one["deltas"]
            errors = write_adapter(tmp / Path(path).name, TaskVector(deltas) * one["scale"],
                                   config, target, head=one.get("head"))  # fmt: skip
            records.append(
                {
                    "adapter": str(path),
                    "moved_to": str(Path(out) / Path(path).name),
                    "moved": f"{len(deltas)}/{len(tv.deltas)}",
                    "scale": one["scale"],
                    "val_scores": one.get("val_scores", {}),
                    "refactorised": errors,
                }
            )
        manifest = {"tasklift": _version(), "kind": "moved adapters", "target": target, **info,
                    "adapters": records}  # fmt: skip
        (tmp / "tasklift_run.json").write_text(json.dumps(manifest, indent=1))
    return records
