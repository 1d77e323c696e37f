"""A fitted task matrix made deployable without tasklift where the architecture allows.

For post-LN encoders whose head reads token 0 through a dense layer (BERT's pooler, RoBERTa's
and MPNet's classifier.dense) the map folds into that layer, z = W h + b feeding D z + d becomes
(D W) h + (D b + d), and the base is cut after block i: `AutoModelForSequenceClassification.
from_pretrained(DIR)` then computes the task matrix's logits. Anything else (pre-LN models, whose
final norm sits between the map and the head; mean pooling; decoders) is written as a
self-contained folder: the base cut after block i, the fine-tuned model, and the map, loaded
with `load_export`. A verbaliser task matrix (a causal LM answering in words) carries its head in
its file, so its bundle holds no fine-tuned model unless norm='finetuned' reads its final norm.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from ._estimator import recorded
from .families import family_of
from .io import atomic_dir, check_output
from .models import backbone, final_norm, hidden_size
from .verbaliser import Verbaliser

__all__ = ["export", "load_export"]

MARKER = "tasklift_export.json"


# config fields holding one entry per block (Qwen2's and Gemma-3's sliding/full attention kinds),
# which transformers checks against num_hidden_layers when the cut model is loaded again
_PER_LAYER = ("layer_types",)


def _truncated(model: torch.nn.Module, layers: int) -> torch.nn.Module:
    """A copy of `model` keeping its embeddings and first `layers` blocks (what layer i reads),
    each block as it was (its attention kind too)."""
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = layers
    for name in _PER_LAYER:
        if isinstance(getattr(cfg, name, None), (list, tuple)):
            setattr(cfg, name, list(getattr(cfg, name))[:layers])
    if getattr(cfg, "stage_names", None):  # a backbone's stages (DINOv2): the stem and each block
        cfg.stage_names = list(cfg.stage_names)[: layers + 1]
        cfg.out_features = cfg.out_indices = None  # by default the last stage kept
    out = type(model)(cfg)
    missing, _ = out.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise ValueError(f"cannot cut {type(model).__name__} after block {layers}: {missing[:3]}")
    p = next(model.parameters())
    return out.to(p.device, p.dtype).eval()


def _foldable(tm) -> str | None:
    """The head layer the map folds into, or None when the architecture does not allow it (a
    head or the base reads more than token 0: a decoder's or a verbaliser's last token, DINOv2's
    cls+mean)."""
    if tm.pool_ != "cls" or tm.head_.reads != "cls":
        return None
    ft, base = tm.finetuned_model_, tm.base_model_
    fam = family_of(ft)
    same_shape = family_of(base) is fam and hidden_size(base) == hidden_size(ft)
    if not fam.head or not same_shape or final_norm(ft) or final_norm(base):
        return None
    return fam.head[0]


def export(tm, out: str | os.PathLike, *, layer: int | None = None, overwrite: bool = False) -> str:
    """Write the fitted TaskMatrix `tm` at `layer` (default its selected one) to the folder `out`
    (atomically; an existing `out` only if tasklift wrote it and `overwrite` is set); returns
    "transformers" (a plain HF classifier) or "tasklift" (a bundle).

    Raises:
        ValueError: `layer` was not fitted.
    """
    layer = tm.layer_ if layer is None else int(layer)
    if layer not in tm.maps_:
        raise ValueError(f"the task matrix has no map for layer {layer}; it has {sorted(tm.maps_)}")
    check_output(out, overwrite=overwrite)
    fold = _foldable(tm)
    with atomic_dir(out) as tmp:
        if fold is not None:
            _export_transformers(tm, layer, fold, tmp)
        else:
            _export_bundle(tm, layer, tmp)
        info = {"format": "transformers" if fold else "tasklift", "layer": layer,
                "base": recorded(tm.base), "finetuned": recorded(tm.finetuned)}  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
    return info["format"]


def _export_transformers(tm, layer: int, fold: str, out: Path) -> None:
    m = tm.maps_[layer]
    model = _truncated(tm.finetuned_model_, layer)  # the head, config and labels of A_ft
    enc = backbone(model)
    prefix = next(n for n, mod in model.named_modules() if mod is enc)
    head = fold[len(prefix) + 1 :].rsplit(".", 1)[0] + "." if fold.startswith(prefix) else None
    base_state = {
        k: v for k, v in backbone(tm.base_model_).state_dict().items()
        if head is None or not k.startswith(head)  # BERT's pooler is the head: keep A_ft's
    }  # fmt: skip
    missing, _ = enc.load_state_dict(base_state, strict=False)
    missing = [k for k in missing if head is None or not k.startswith(head)]
    if missing:
        raise ValueError(f"the base lacks weights the classifier needs: {missing[:3]}")
    dense = model.get_submodule(fold)
    W = torch.as_tensor(m.coef_, dtype=torch.float64)  # (d_ft, d_base)
    b = torch.as_tensor(m.intercept_, dtype=torch.float64)
    with torch.no_grad():
        D, d = dense.weight.double(), dense.bias.double()
        dense.weight = torch.nn.Parameter((D @ W).float())
        dense.bias = torch.nn.Parameter((D @ b + d).float())
        dense.in_features = W.shape[1]
    model.save_pretrained(out)
    if tm.processor_ is not None:
        tm.processor_.save_pretrained(out)


def _export_bundle(tm, layer: int, out: Path) -> None:
    """The base cut after block `layer`, the fine-tuned model (unless a verbaliser head, written
    in the task file, is all the task needs of it) and the task file with that layer's map."""
    cut = _truncated(tm.base_model_, max(layer, 1))  # layer 0 is block 0's input: keep block 0
    folders = {"base": cut}
    if not isinstance(tm.head_, Verbaliser) or tm.norm == "finetuned":
        folders["finetuned"] = tm.finetuned_model_
    for sub, model in folders.items():
        model.save_pretrained(out / sub)
        if tm.processor_ is not None:
            tm.processor_.save_pretrained(out / sub)
    single = copy.copy(tm)
    single.maps_ = {layer: tm.maps_[layer]}
    single.alphas_ = {layer: tm.alphas_[layer]}
    single.cv_errors_ = {layer: tm.cv_errors_[layer]}
    single.layer_ = layer
    single.base = str(out / "base")
    single.finetuned = str(out / "finetuned") if "finetuned" in folders else None
    single.save(out / "task.safetensors", relative_to=out)  # the folder may move


def load_export(path: str | os.PathLike, **overrides):
    """The TaskMatrix of a bundle written by `export` (a "transformers" export is a plain HF
    folder: load it with AutoModelForSequenceClassification instead).

    Raises:
        ValueError: `path` is not an export, or is a transformers one.
    """
    from .taskmatrix import TaskMatrix

    path = Path(path)
    if not (path / MARKER).is_file():
        raise ValueError(f"{path} was not written by tasklift export (no {MARKER})")
    info = json.loads((path / MARKER).read_text())
    if info["format"] != "tasklift":
        raise ValueError(
            f"{path} is a plain transformers model: "
            "AutoModelForSequenceClassification.from_pretrained(path) loads it"
        )
    return TaskMatrix.load(path / "task.safetensors", **overrides)
