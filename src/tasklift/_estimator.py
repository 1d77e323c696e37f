"""What every tasklift estimator shares: the fitted check, label checks and the model cache."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from .checks import check_bool, check_choice, check_int
from .extract import POOLS
from .maps import NotFittedError


def check_fitted(est: object, attr: str) -> None:
    """Raise NotFittedError naming the estimator if `attr` was never learned."""
    if not hasattr(est, attr):
        raise NotFittedError(f"this {type(est).__name__} is not fitted yet; call fit() first")


def check_runtime(est: object) -> None:
    """The parameters the estimators share, checked at fit (scikit-learn's convention: __init__
    only stores): batch_size >= 1, max_length None or >= 1 (its model maximum is checked where
    texts are tokenised), pool, progress."""
    check_int(est.batch_size, "batch_size", low=1)
    if est.max_length is not None:
        check_int(est.max_length, "max_length", low=1)
    if getattr(est, "pool", None) is not None:  # None: where the head reads (FineTuned)
        check_choice(est.pool, "pool", choices=POOLS)
    check_bool(est.progress, "progress")


def as_labels(y, n: int) -> np.ndarray:
    """Labels as an int array of length n, or a ValueError naming the mismatch."""
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if y.shape != (n,):
        raise ValueError(f"labels have shape {y.shape} but there are {n} inputs")
    return y.astype(np.int64)


def scored(pred: np.ndarray, y, sample_weight=None) -> float:
    """(Weighted) accuracy of predicted class ids against labels y: what every `score` returns."""
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    return float(np.average(pred == as_labels(y, len(pred)), weights=w))


def model_key(*sources: object) -> tuple:
    """A key that changes when any model parameter (folder, object) or runtime setting does, so a
    cached load is reused only for the very same parameters."""
    return tuple(
        id(s) if isinstance(s, nn.Module) or (s is not None and not _plain(s)) else _norm(s)
        for s in sources
    )


def _plain(s: object) -> bool:
    return isinstance(s, (str, os.PathLike, int, float, bool))


def _norm(s: object) -> object:
    return os.path.abspath(s) if isinstance(s, os.PathLike) else s


def cached(est: object, key: tuple, load):
    """`load()`'s result, reused while `key` stays the same (stored outside the learned state)."""
    if getattr(est, "_cache_key", None) != key:
        est._cache = load()
        est._cache_key = key
    return est._cache


def recorded(value: object) -> object:
    """A parameter as saved files record it: existing paths made absolute (so a file loads from
    any directory), model objects as None (they cannot be saved by reference)."""
    if isinstance(value, nn.Module):
        return None
    if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
        return os.path.abspath(value)
    return str(value) if isinstance(value, os.PathLike) else value
