"""Side-by-side comparison: majority class, head-only, linear probe and task matrix per layer
(with each map's fidelity), fine-tuned. Each model runs once per split (the base with all layers
in one pass); every method is then scored from those embeddings, so the comparison costs four
extraction passes in all.
The fine-tuned model is a classifier, or (`choices`) a causal LM answering in words, whose head
is its verbaliser."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..evaluate import accuracy, confusion, per_class
from ..extract import embed
from ..inference import finetuned_head
from ..loading import load_model
from ..models import hidden_size, num_layers
from ..probe import FineTuned, HeadOnly, LinearProbe
from ..taskmatrix import TaskMatrix
from ..verbaliser import name_choices
from .layers import fidelity

__all__ = ["Split", "load_pair", "embed_split", "compare", "summarise", "solver_name"]


def solver_name(alpha) -> str:
    """How a task-matrix solver is named in tables: lstsq, ridge-CV or ridge <alpha>."""
    return (
        "lstsq"
        if alpha == 0
        else ("ridge-CV" if alpha == "auto" or np.ndim(alpha) else f"ridge {alpha}")
    )


@dataclass
class Split:
    """One extraction of a labelled split, reused by every method scored on it.

    Shapes: base {layer: (N, d)}, finetuned (N, d_ft) (its last block where its head reads: [CLS]
    or the last token), y (N,).
    """

    base: dict[int, torch.Tensor]
    finetuned: torch.Tensor
    y: np.ndarray

    def subset(self, idx: np.ndarray) -> Split:
        """Rows `idx` of every array."""
        t = torch.as_tensor(idx)
        return Split({i: v[t] for i, v in self.base.items()}, self.finetuned[t], self.y[idx])


def load_pair(base, finetuned, *, lm: bool = False, device: str = "auto", dtype: str = "auto"):
    """(base encoder, fine-tuned classifier or with `lm` causal LM, processor): both models
    loaded once for a study."""
    bm, proc = load_model(base, device=device, dtype=dtype)
    fm, ft_proc = load_model(finetuned, head=not lm, lm=lm, device=device, dtype=dtype)
    return bm, fm, proc if proc is not None else ft_proc


def embed_split(
    base: nn.Module,
    finetuned: nn.Module,
    processor,
    ds: Dataset,
    *,
    pool: str = "cls",
    batch_size: int = 32,
    max_length: int = 128,
    progress: bool = False,
    choices: Sequence[str] | Mapping[str, str] | None = None,
) -> Split:
    """Run the base (all layers, one pass) and the fine-tuned model (final layer, where its head
    reads: [CLS], or a decoder's last token; `choices`: its verbaliser's) over `ds`."""
    top = num_layers(finetuned)
    reads = finetuned_head(finetuned, choices, processor).reads
    kw = dict(batch_size=batch_size, max_length=max_length, progress=progress)
    xs = embed(base, ds.X, processor, layers="all", pool=pool, desc=f"base: {ds.name}", **kw)
    ys = embed(finetuned, ds.X, processor, layers=[top], pool=reads, desc="fine-tuned", **kw)
    return Split(xs, ys[top], ds.y)


def compare(
    base,
    finetuned,
    train: Dataset,
    test: Dataset,
    *,
    alphas: Sequence[float | str] = (0.0, "auto"),
    pool: str = "cls",
    norm: str = "base",
    cv: int = 5,
    batch_size: int = 32,
    max_length: int = 128,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
    choices: Sequence[str] | Mapping[str, str] | None = None,
) -> list[dict]:
    """Accuracy rows {method, layer, accuracy, trained_params, ...} for every method on `test`:
    majority class, fine-tuned, and at every base layer head-only (where the widths match),
    the linear probe and each task-matrix solver; head-only and task-matrix rows hold the
    fidelity of their map on `test` (`cosine`, `r2`: see `layers.fidelity`). Baseline rows below
    the last layer are marked `curve`.

    Args:
        base, finetuned: folders or models, as for `TaskMatrix`.
        train: fits the task matrices (inputs only) and the linear probe (inputs and labels).
        alphas: task-matrix solvers to compare: 0 (the paper's least squares), "auto" (ridge,
            CV), or a fixed relative ridge strength.
        choices: `finetuned` is a causal LM answering in words: one label word per class of
            `train` (in its class order), or {class name: word}; every head is its verbaliser.

    Holds (L+1) × N × d embeddings per split in memory; for very large N stream with
    `TaskMatrix.fit` instead.

    Raises:
        ValueError: choices that do not give one word per class (before any model runs).
    """
    choices = None if choices is None else name_choices(choices, train.classes)
    bm, fm, proc = load_pair(base, finetuned, lm=choices is not None, device=device, dtype=dtype)
    common = dict(pool=pool, batch_size=batch_size, max_length=max_length, choices=choices)
    heads = dict(processor=proc, **common)  # what every head-based estimator shares
    ft = FineTuned(fm, **{**heads, "pool": None}).fit()  # a bad head fails before any pass
    tr = embed_split(bm, fm, proc, train, progress=progress, **common)
    te = embed_split(bm, fm, proc, test, progress=progress, **common)
    top_b, top_f = num_layers(bm), num_layers(fm)
    n, y = len(train), test.y
    majority = int(np.bincount(train.y).argmax())
    rows = [
        {
            "method": "majority class",
            "layer": None,
            "accuracy": float((y == majority).mean()),
            "trained_params": 0,
            "n_train": n,
        },
        {
            "method": "fine-tuned",
            "layer": top_f,
            "accuracy": accuracy(ft.model().from_embedding(te.finetuned), y),
            "trained_params": sum(p.numel() for p in fm.parameters()),
            "n_train": n,
            "per_class": per_class(ft.model().from_embedding(te.finetuned), y, ft.class_names_),
        },
    ]
    # baselines at every layer (`curve` rows) up to the last, the row the summary keeps
    if hidden_size(bm) == hidden_size(fm):
        head = HeadOnly(bm, fm, layer="all", norm=norm, **heads).fit()
        for i, acc in head.score_embeddings(te.base, y).items():
            rows.append(
                {
                    "method": "head-only",
                    "layer": i,
                    "n_train": 0,
                    "trained_params": 0,
                    "accuracy": acc,
                    **fidelity(te.base[i], te.finetuned),
                    **_curve(i, top_b),
                }
            )
    for i in sorted(tr.base):
        probe = LinearProbe(bm, pool=pool).fit_features(tr.base[i].numpy(), train.y)
        lr = probe.classifier_[-1]
        rows.append(
            {
                "method": "linear probe",
                "layer": i,
                "n_train": n,
                "trained_params": int(lr.coef_.size + lr.intercept_.size),
                "accuracy": accuracy(probe.predict_features(te.base[i].numpy()), y),
                **_curve(i, top_b),
            }
        )
    # every solver refits from the same statistics (alpha 0's: folds for CV and the QR)
    ref = TaskMatrix(bm, fm, layer="auto", alpha=0.0, norm=norm, cv=cv, **heads)
    stats = ref.accumulate([(np.arange(n), tr.base, tr.finetuned)], sorted(tr.base))
    for alpha in alphas:
        tm = TaskMatrix(bm, fm, layer="auto", alpha=alpha, norm=norm, cv=cv, **heads)
        tm.fit_stats(stats)
        for i, acc in tm.score_embeddings(te.base, y).items():
            rows.append(
                {
                    "method": f"task matrix ({solver_name(alpha)})",
                    "layer": i,
                    "accuracy": acc,
                    "n_train": n,
                    "trained_params": int(tm.maps_[i].coef_.size),
                    "alpha": tm.alphas_[i],
                    "cv_mse": tm.cv_errors_[i],
                    **fidelity(tm.maps_[i].transform(te.base[i].double().numpy()), te.finetuned),
                    "selected": i == tm.layer_,
                }
            )
        logits = tm.model(tm.layer_).from_embedding(te.base[tm.layer_])
        selected = next(r for r in rows[::-1] if r.get("selected"))
        selected["per_class"] = per_class(logits, y, tm.class_names_)
        selected["confusion"] = confusion(logits, y, len(tm.class_names_)).tolist()
    return rows


def _curve(layer: int, top: int) -> dict:
    """The mark of a baseline's row below the last layer, left out of the summary."""
    return {} if layer == top else {"curve": True}


def summarise(rows: list[dict]) -> list[dict]:
    """One row per method: baselines as they are (at the last layer); task matrices at the
    CV-selected layer and at the best test layer (the paper reports the latter, which peeks at
    test labels)."""
    out = [r for r in rows if "selected" not in r and not r.get("curve")]
    for method in dict.fromkeys(r["method"] for r in rows if "selected" in r):
        mine = [r for r in rows if r["method"] == method]
        out.append({**next(r for r in mine if r["selected"]), "method": f"{method}, CV layer"})
        out.append({**max(mine, key=lambda r: r["accuracy"]), "method": f"{method}, best layer"})
    return out
