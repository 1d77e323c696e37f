"""A fitted `Transfer` on disk: B + τ_B as a Hugging Face checkpoint with τ_B and the settings
that rebuild the run (`save` / `load`), or τ_B as a PEFT LoRA folder for B (`save_adapter`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import __version__
from .._estimator import check_fitted, recorded
from ..distributed import is_main
from ..io import atomic_dir, check_output, write_text
from ..lora import head_state, write_adapter
from ..models import token_limit
from ..taskvector import TaskVector
from .lm import is_causal_lm
from .many import model_name

__all__ = ["SETTINGS", "save", "load", "save_adapter"]

SETTINGS = "tasklift_transfer.json"


def save_adapter(t, path: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """`Transfer.save_adapter`: τ_B at the chosen scale as a PEFT LoRA folder for B."""
    check_fitted(t, "model_")
    if t.adapter_config_ is None:
        raise ValueError("save_adapter needs A_ft given as a PEFT adapter folder; use save()")
    if not is_main():  # under torchrun every process holds τ_B; rank 0 writes it
        return {}
    base = model_name(t.target, "target")
    return write_adapter(path, t.task_vector_ * t.scale_, t.adapter_config_, str(base),
                         head=head_state(t.model_, t.head_), overwrite=overwrite)  # fmt: skip


def save(t, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """`Transfer.save`: B + τ_B, τ_B and the settings, written atomically (rank 0 only)."""
    check_fitted(t, "model_")
    if not is_main():
        return
    check_output(path, overwrite=overwrite)
    params = {k: recorded(v) for k, v in t.get_params().items() if k != "processor"}
    params["scales"] = [float(s) for s in params["scales"]]
    info = {
        "class": "Transfer",
        "version": __version__,
        "params": params,
        "scale": t.scale_,
        "val_scores": t.val_scores_,
        "moved_params": t.moved_params_,
        "source_params": t.source_params_,
        "timings": t.timings_,
        "open_directions": t.open_directions_,
    }
    with atomic_dir(path) as tmp:
        t.model_.save_pretrained(tmp)
        if t.processor_ is not None:
            t.processor_.save_pretrained(tmp)
        t.task_vector_.save(tmp / "task_vector.safetensors", method=t.method)
        write_text(tmp / SETTINGS, json.dumps(info, indent=2))


def load(cls, path: str | os.PathLike, overrides: dict):
    """`Transfer.load`: a fitted `cls` from what `save` wrote."""
    settings = Path(path) / SETTINGS
    if not settings.is_file():
        raise FileNotFoundError(f"{path} has no {SETTINGS}; was it written by Transfer.save?")
    info = json.loads(settings.read_text())
    t = cls(**{**info["params"], **overrides})
    t.model_, t.processor_ = t._load(path, head=True)
    t.max_length_ = token_limit(t.max_length, t.model_, t.processor_)
    t.task_vector_ = TaskVector.load(Path(path) / "task_vector.safetensors")
    t.scale_ = float(info["scale"])
    t.val_scores_ = {float(k): v for k, v in info["val_scores"].items()}
    t.moved_params_, t.source_params_ = info["moved_params"], info["source_params"]
    t.timings_ = info.get("timings", {})  # of the fit that wrote it (older files: none)
    t.open_directions_ = info.get("open_directions")
    t.lm_, t.adapter_config_, t.head_ = is_causal_lm(t.model_), None, []
    t.classes_ = t._classes(t.model_)
    return t
