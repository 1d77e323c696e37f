"""Data scaling of task matrices against the linear probe (with the double descent near N ≈ d)
and the paper's data-scarce table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import Dataset, subsample
from ..defaults import FRACTIONS, PER_CLASS
from ..evaluate import accuracy
from ..models import num_layers
from ..probe import LinearProbe
from ..taskmatrix import TaskMatrix
from .sweep import Split, embed_split, load_pair, solver_name

__all__ = ["scaling", "data_scarce"]


def _indices(
    y: np.ndarray, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> np.ndarray:
    """Row indices of the first k per class (seeded order) or of a stratified fraction."""
    rows = Dataset(np.arange(len(y)), y, [], "rows")
    return subsample(rows, per_class=per_class, fraction=fraction, seed=seed).X


def _fit_at(ref: TaskMatrix, layer: int, alpha, train: Split) -> TaskMatrix:
    """A task matrix like `ref` at `layer` with ridge `alpha`, fitted on a split's embeddings."""
    tm = ref.set_params(layer=layer, alpha=alpha)
    layers = sorted(train.base) if layer == "auto" else [layer]
    return tm.fit_stats(
        tm.accumulate([(np.arange(len(train.y)), train.base, train.finetuned)], layers)
    )


def scaling(
    base,
    finetuned,
    train: Dataset,
    test: Dataset,
    *,
    layer: int | str = "auto",
    per_class: Sequence[int] = PER_CLASS,
    fractions: Sequence[float] = FRACTIONS,
    alphas: Sequence[float | str] = (0.0, "auto"),
    seed: int = 0,
    cv: int = 5,
    pool: str = "cls",
    norm: str = "base",
    batch_size: int = 32,
    max_length: int = 128,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
) -> list[dict]:
    """Accuracy vs training-set size for task matrices (each alpha) and the linear probe.

    Regimes: the first k examples per class, and stratified fractions of `train`. The layer is
    fixed for all sizes (by default chosen by CV on all of `train`, with ridge-CV: plain least
    squares' CV errors explode near N = d, where it once chose MPNet's constant layer 0). Rows:
    {regime, size, n, method, layer, accuracy}.

    Raises:
        ValueError: a fraction outside (0, 1], a k below 1, or no size left to run.
    """
    if bad := [f for f in fractions if not 0 < f <= 1]:
        raise ValueError(f"fractions must lie in (0, 1]; got {bad}: pass e.g. 0.01,0.05,0.2")
    if bad := [k for k in per_class if k < 1]:
        raise ValueError(f"per-class counts must be at least 1; got {bad}: pass e.g. 1,5,10")
    if not fractions and not per_class:
        raise ValueError("no training size to run: give fractions or per-class counts")
    bm, fm, proc = load_pair(base, finetuned, device=device, dtype=dtype)
    kw = dict(pool=pool, batch_size=batch_size, max_length=max_length)
    tr = embed_split(bm, fm, proc, train, progress=progress, **kw)
    te = embed_split(bm, fm, proc, test, progress=progress, **kw)
    ref = TaskMatrix(bm, fm, layer="auto", cv=cv, norm=norm, **kw)
    if layer == "auto":
        layer = _fit_at(ref, "auto", "auto", tr).layer_
    top = num_layers(bm)
    counts = np.bincount(tr.y)
    plan = [
        ("per class", k, _indices(tr.y, per_class=k, seed=seed))
        for k in per_class
        if k <= counts[counts > 0].min()
    ]
    plan += [("fraction", f, _indices(tr.y, fraction=f, seed=seed)) for f in fractions]
    if not plan:
        raise ValueError(
            f"every per-class count {list(per_class)} exceeds the rarest class's "
            f"{counts[counts > 0].min()} training rows, and no fraction was given"
        )
    rows = []
    for regime, size, idx in plan:
        sub = tr.subset(idx)
        common = {"regime": regime, "size": size, "n": len(idx)}
        for alpha in alphas:
            tm = _fit_at(ref, layer, alpha, sub)
            rows.append(
                {
                    **common,
                    "method": f"task matrix ({solver_name(alpha)})",
                    "layer": layer,
                    "accuracy": tm.score_embeddings({layer: te.base[layer]}, te.y)[layer],
                }
            )
        if len(np.unique(sub.y)) >= 2:
            probe = LinearProbe(bm).fit_features(sub.base[top].numpy(), sub.y)
            acc = accuracy(probe.predict_features(te.base[top].numpy()), te.y)
            rows.append({**common, "method": "linear probe", "layer": top, "accuracy": acc})
    return rows


def data_scarce(rows: list[dict]) -> list[dict]:
    """Task matrix vs linear probe per training fraction, with the relative gain the paper
    reports (e.g. "+82%"), from `scaling` rows of the fraction regime."""
    out = []
    for size in sorted({r["size"] for r in rows if r["regime"] == "fraction"}):
        at = {r["method"]: r for r in rows if r["regime"] == "fraction" and r["size"] == size}
        probe = at.get("linear probe")
        for method, r in at.items():
            if method.startswith("task matrix") and probe is not None:
                out.append(
                    {
                        "fraction": size,
                        "n": r["n"],
                        "method": method,
                        "task matrix": r["accuracy"],
                        "linear probe": probe["accuracy"],
                        "gain %": 100 * (r["accuracy"] - probe["accuracy"]) / probe["accuracy"],
                    }
                )
    return out
