"""Plain full fine-tuning of a HF classifier (AdamW, linear warm-up/decay): the demo's upper bound
and the model whose skill the task matrix transfers."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._estimator import as_labels
from ._torch import seed_everything
from .checks import check_float, check_int
from .data import is_texts, num_items, take
from .models import Head, encode, token_limit

__all__ = ["finetune", "finetune_cached"]


def finetune(
    model: nn.Module,
    X,
    y,
    processor=None,
    *,
    epochs: float = 1.0,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_length: int | None = None,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train `model` (a *ForSequence/ImageClassification) in place on (X, y); return step losses.

    Args:
        epochs: passes over the data (fractions allowed, e.g. 0.5).
        warmup: fraction of steps with linearly rising learning rate.

    Raises:
        ValueError: empty data, labels that do not match X, or a parameter out of its range.
    """
    n = num_items(X)
    if n == 0:
        raise ValueError("cannot fine-tune on an empty dataset")
    check_float(epochs, "epochs", low=0, open_low=True)
    check_float(lr, "lr", low=0, open_low=True)
    check_int(batch_size, "batch_size", low=1)
    check_float(weight_decay, "weight_decay", low=0)
    check_float(warmup, "warmup", low=0, high=1)
    if is_texts(X):
        max_length = token_limit(max_length, model, processor)
    y = torch.from_numpy(as_labels(y, n))
    seed_everything(seed)
    device = next(model.parameters()).device
    steps = max(1, math.ceil(epochs * n / batch_size))
    trained = [p for p in model.parameters() if p.requires_grad]  # all, unless some are frozen
    decay = [p for p in trained if p.ndim > 1]
    rest = [p for p in trained if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
    )
    ramp = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / ramp, max(0.0, (steps - s) / max(1, steps - ramp)))
    )
    order = np.concatenate(
        [np.random.default_rng(seed + e).permutation(n) for e in range(math.ceil(epochs))]
    )
    losses = []
    model.train()
    for m in model.modules():  # a frozen part keeps its features: no BatchNorm updates, dropout
        if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
    try:
        for step in tqdm(range(steps), desc="fine-tune", disable=not progress, leave=False):
            idx = order[step * batch_size : (step + 1) * batch_size]
            batch = {
                k: v.to(device)
                for k, v in encode(take(X, idx), processor, max_length=max_length).items()
            }
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(**batch, labels=y[idx].to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        model.eval()
    return losses


def _train_only(model: nn.Module, *, head: bool) -> None:
    """Leave trainable only the classification head (`head`) or everything but it."""
    mine = {id(p) for p in Head(model).parameters()}
    for p in model.parameters():
        p.requires_grad_((id(p) in mine) == head)


def _fingerprint(ds) -> str:
    """SHA-256 of the training rows in order (texts or image bytes, then labels): the recipe
    names the exact data, not only its source."""
    h = hashlib.sha256()
    for x in ds.X if isinstance(ds.X, list) else [np.ascontiguousarray(ds.X)]:
        h.update(x.encode() if isinstance(x, str) else np.asarray(x).tobytes())
    h.update(np.asarray(ds.y, dtype=np.int64).tobytes())
    return h.hexdigest()


def _stamp(recipe: dict) -> dict:
    """The recipe plus where and with what it was made (versions and the command line)."""
    import transformers

    from . import __version__

    made = {"command": " ".join(sys.argv), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}  # fmt: skip
    return {"tasklift": __version__, "recipe": recipe, "made_with": made}


def _same_recipe(stamp: Path, recipe: dict) -> bool:
    try:
        return json.loads(stamp.read_text()).get("recipe") == recipe
    except (OSError, ValueError, AttributeError):
        return False


def finetune_cached(
    base,
    train,
    out: str | os.PathLike,
    *,
    epochs: float = 1.0,
    lr: float = 1e-4,
    seed: int = 0,
    max_length: int = 128,
    batch_size: int = 16,
    device: str = "auto",
    frozen_head: bool = False,
    refit: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Fully fine-tune `base` on the Dataset `train` into the folder `out` (atomically), unless
    `out` already holds a model made by the same recipe (and `refit` is not set). Any other
    existing `out` is replaced only if tasklift wrote it and `overwrite` is set.

    `frozen_head` is the task-matrix paper's frozen head (its Table 6): the head is first trained
    on the frozen base (same epochs, 10 x lr), then kept fixed while the backbone is fine-tuned;
    by default head and backbone are trained together (the adapted head).

    The new head's labels are the dataset's class names. Returns the recipe with `reused` (True
    when nothing was trained), `seconds` and `final_loss`.
    """
    from .io import atomic_dir, check_output
    from .loading import load_model

    out = Path(out)
    recipe = {
        "base": str(base),
        "data": train.source or train.name,
        "n_train": len(train),
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "max_length": max_length,
        "batch_size": batch_size,
        "data_sha256": _fingerprint(train),
        # earlier recipes stay the same; a frozen head's fine-tune made before its frozen
        # backbone ran in eval mode (BatchNorm statistics moved) must not be reused
        **({"head": "frozen, backbone in eval mode"} if frozen_head else {}),
    }
    stamp = out / "tasklift_finetune.json"
    if stamp.is_file() and _same_recipe(stamp, recipe) and not refit:
        return {**recipe, "reused": True}
    check_output(out, overwrite=overwrite)
    t0 = time.time()
    seed_everything(seed)  # the new head's initial weights too: a re-run is the same model
    model, tok = load_model(
        base, head=True, num_labels=len(train.classes), device=device, dtype="fp32"
    )
    model.config.id2label = dict(enumerate(train.classes))
    model.config.label2id = {c: i for i, c in enumerate(train.classes)}
    kw = dict(epochs=epochs, batch_size=batch_size, max_length=max_length, seed=seed,
              progress=progress)  # fmt: skip
    if frozen_head:
        _train_only(model, head=True)
        finetune(model, train.X, train.y, tok, lr=10 * lr, **kw)
        _train_only(model, head=False)
    losses = finetune(model, train.X, train.y, tok, lr=lr, **kw)
    model.requires_grad_(True)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        (tmp / stamp.name).write_text(json.dumps(_stamp(recipe), indent=1))
    return {
        **recipe,
        "reused": False,
        "seconds": round(time.time() - t0, 1),
        "final_loss": float(np.mean(losses[-20:])),
    }
