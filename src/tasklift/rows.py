"""Rows as the statistics take them: 2-D float arrays or tensors, NaN and inf refused with one
line that counts the bad rows."""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def as_float64(a: Array, name: str) -> np.ndarray:
    """Return `a` as a 2-D float64 numpy array, refusing NaN/inf with a clear error."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features); got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise ValueError(
            f"{name} has {bad} row(s) with NaN or inf; check the model's dtype (fp16 overflow?) "
            "or the inputs that produced them"
        )
    return a


def as_rows(a: Array, name: str) -> torch.Tensor:
    """`a` as a 2-D CPU tensor of float32 or float64 (no copy where it is one already)."""
    if isinstance(a, torch.Tensor):
        t = a.detach().cpu()
    else:
        a = np.ascontiguousarray(a)  # torch takes no negative strides
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float() if t.is_floating_point() else t.double()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features); got shape {tuple(t.shape)}")
    return t


def column_sums(t: torch.Tensor) -> np.ndarray:
    """Σ over rows as float64, summed in t's own precision (pairwise, and far faster for
    float32 than upcasting element by element: pass float64 rows where the sums must be)."""
    return t.sum(0).double().numpy()


def finite_sums(t: torch.Tensor, name: str) -> np.ndarray:
    """`column_sums`, refusing NaN/inf rows: any makes a sum non-finite, so a finite batch
    costs no extra scan (float32 sums that overflowed are redone in float64)."""
    sums = column_sums(t)
    if not np.isfinite(sums).all():
        as_float64(t, name)  # names the bad rows
        sums = t.sum(0, dtype=torch.float64).numpy()
    return sums
