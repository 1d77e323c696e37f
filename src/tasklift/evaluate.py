"""Classification metrics from logits or predictions: accuracy, per-class precision / recall /
F1 and the confusion matrix. Light on purpose: no model code is imported here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["accuracy", "confusion", "per_class"]


def _pred(logits_or_pred) -> np.ndarray:
    """Arg-max of (N, classes) logits, or predictions (N,) as they are."""
    a = logits_or_pred
    a = a.float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.argmax(-1) if a.ndim == 2 else a


def accuracy(logits_or_pred, y) -> float:
    """Share of rows whose arg-max logit (or prediction) is the label."""
    return float((_pred(logits_or_pred) == np.asarray(y)).mean())


def confusion(logits_or_pred, y, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(y), _pred(logits_or_pred)), 1)
    return out


def per_class(logits_or_pred, y, names: Sequence[str]) -> list[dict]:
    """Rows {class, support, precision, recall, f1} per class (None where undefined)."""
    cm = confusion(logits_or_pred, y, len(names))
    rows = []
    for i, name in enumerate(names):
        tp, predicted, support = cm[i, i], cm[:, i].sum(), cm[i].sum()
        p = tp / predicted if predicted else None
        r = tp / support if support else None
        f1 = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
        rows.append({"class": name, "support": int(support), "precision": p, "recall": r, "f1": f1})
    return rows
