"""The papers' experiments. Task matrices, on embeddings extracted once per split: data scaling
(with the double descent near N ≈ d), the data-scarce table, and multi-task matrices. BiCo: the
transfer table (the target with the carried head alone, a probe, each method, fine-tuned)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .data import Dataset, subsample
from .defaults import FRACTIONS, METHODS, PER_CLASS
from .evaluate import Split, accuracy, embed_split, solver_name
from .models import load_model, num_layers
from .probe import FineTuned, LinearProbe
from .stats import GramStats
from .taskmatrix import TaskMatrix
from .transfer import Transfer

__all__ = ["scaling", "data_scarce", "multitask", "transfer_table", "PER_CLASS", "FRACTIONS"]


def _indices(
    y: np.ndarray, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> np.ndarray:
    """Row indices of the first k per class (seeded order) or of a stratified fraction."""
    rows = Dataset(np.arange(len(y)), y, [], "rows")
    return subsample(rows, per_class=per_class, fraction=fraction, seed=seed).X


def _tm_accuracy(ref: TaskMatrix, layer: int, alpha, train: Split, test: Split) -> float:
    """Fit a task matrix at `layer` on `train` (ridge alpha or CV) and score it on `test`."""
    tm = TaskMatrix(
        ref.base_model_,
        ref.finetuned_model_,
        layer=layer,
        alpha=alpha,
        cv=ref.cv,
        norm=ref.norm,
        pool=ref.pool,
    )
    tm.fit_stats(tm.accumulate([(np.arange(len(train.y)), train.base, train.finetuned)], [layer]))
    return tm.score_embeddings({layer: test.base[layer]}, test.y)[layer]


def _probe_accuracy(ref: TaskMatrix, train: Split, test: Split) -> float | None:
    top = num_layers(ref.base_model_)
    if len(np.unique(train.y)) < 2:
        return None
    probe = LinearProbe(ref.base_model_).fit_features(train.base[top].numpy(), train.y)
    return accuracy(probe.decision_features(test.base[top].numpy()), test.y)


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
    progress: bool = False,
    **runtime,
) -> list[dict]:
    """Accuracy vs training-set size for task matrices (each alpha) and the linear probe.

    Regimes: the first k examples per class, and stratified fractions of `train`. The layer is
    fixed for all sizes (by default chosen by CV on all of `train`). Rows:
    {regime, size, n, method, layer, accuracy}.
    """
    ref = TaskMatrix(base, finetuned, layer="auto", cv=cv, **runtime)
    tr, te = embed_split(ref, train, progress), embed_split(ref, test, progress)
    if layer == "auto":
        layers = sorted(tr.base)
        ref.fit_stats(ref.accumulate([(np.arange(len(tr.y)), tr.base, tr.finetuned)], layers))
        layer = ref.layer_
    counts = np.bincount(tr.y)
    plan = [
        ("per class", k, _indices(tr.y, per_class=k, seed=seed))
        for k in per_class
        if k <= counts[counts > 0].min()
    ]
    plan += [("fraction", f, _indices(tr.y, fraction=f, seed=seed)) for f in fractions]
    rows = []
    for regime, size, idx in plan:
        sub = tr.subset(idx)
        common = {"regime": regime, "size": size, "n": len(idx)}
        for alpha in alphas:
            rows.append(
                {
                    **common,
                    "method": f"task matrix ({solver_name(alpha)})",
                    "layer": layer,
                    "accuracy": _tm_accuracy(ref, layer, alpha, sub, te),
                }
            )
        acc = _probe_accuracy(ref, sub, te)
        if acc is not None:
            rows.append(
                {
                    **common,
                    "method": "linear probe",
                    "layer": num_layers(ref.base_model_),
                    "accuracy": acc,
                }
            )
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


def multitask(
    base,
    tasks: dict[str, tuple],
    *,
    alpha: float | str = 0.0,
    cv: int = 5,
    progress: bool = False,
    **runtime,
) -> list[dict]:
    """One task matrix shared by several tasks (each keeps its fine-tuned head) vs one per task.

    Args:
        base: the base every fine-tuned model started from (folder or model).
        tasks: name -> (fine-tuned folder or model, train Dataset, test Dataset).
        alpha: solver, as for `TaskMatrix`; the layer is chosen by CV for each fit.

    The joint W solves least squares over the union of every task's (base, fine-tuned) pairs:
    its statistics are the sum of the per-task statistics. Rows: {task, method, layer, accuracy}.
    """
    device, dtype = runtime.get("device", "auto"), runtime.get("dtype", "auto")
    bm, proc = load_model(base, device=device, dtype=dtype)  # loaded once, shared by every task
    fits, joint = {}, {}
    for name, (ft, train, test) in tasks.items():
        ref = TaskMatrix(bm, ft, layer="auto", alpha=alpha, cv=cv, processor=proc, **runtime)
        tr, te = embed_split(ref, train, progress), embed_split(ref, test, progress)
        stats = ref.accumulate([(np.arange(len(tr.y)), tr.base, tr.finetuned)], sorted(tr.base))
        fits[name] = (ref, stats, te)
        for i, s in stats.items():
            joint.setdefault(i, GramStats(folds=s.folds)).merge(s)
    rows = []
    for name, (ref, stats, te) in fits.items():
        for method, st in (("single-task matrix", stats), ("multi-task matrix", joint)):
            ref.fit_stats(st)
            rows.append(
                {
                    "task": name,
                    "method": method,
                    "layer": ref.layer_,
                    "accuracy": ref.score_embeddings({ref.layer_: te.base[ref.layer_]}, te.y)[
                        ref.layer_
                    ],
                }
            )
    for method in ("single-task matrix", "multi-task matrix"):
        accs = [r["accuracy"] for r in rows if r["method"] == method]
        rows.append(
            {"task": "average", "method": method, "layer": None, "accuracy": float(np.mean(accs))}
        )
    return rows


def transfer_table(
    source,
    finetuned,
    target,
    calib: Dataset,
    val: Dataset,
    test: Dataset,
    *,
    train: Dataset | None = None,
    methods: Sequence[str] = METHODS,
    target_finetuned=None,
    token: str = "all",
    batch_size: int = 16,
    max_length: int = 128,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
) -> list[dict]:
    """Test accuracy of the target B after each transfer method, beside its references.

    Rows: "B + carried head" (α = 0: A_ft's head on B's features, no task vector), a linear probe
    on B trained on `train` (if given), each method (α chosen on `val`, calibrated on `calib`),
    and the fine-tuned A and B (if `target_finetuned` is given). A method that cannot run on
    this pair (naive on other widths) gets accuracy None and the reason.
    """
    rt = dict(batch_size=batch_size, max_length=max_length, device=device, dtype=dtype)
    rows = []
    for method in methods:
        t0 = time.time()
        try:
            t = Transfer(method, token=token, progress=progress, **rt).fit(
                source, finetuned, target, calib.X, calib.y, X_val=val.X, y_val=val.y
            )
        except ValueError as e:
            rows.append({"method": method, "accuracy": None, "note": str(e)})
            continue
        seconds = time.time() - t0
        if not rows:
            head = accuracy(t.decision_function(test.X, alpha=0.0), test.y)
            rows.append({"method": "B + carried head", "accuracy": head, "alpha": 0.0})
        rows.append(
            {
                "method": method,
                "accuracy": t.score(test.X, test.y),
                "alpha": t.alpha_,
                "val_accuracy": t.val_scores_[t.alpha_],
                "moved": f"{t.moved_params_}/{t.source_params_}",
                "seconds": round(seconds, 1),
            }
        )
    if train is not None:
        probe = LinearProbe(target, progress=progress, **rt).fit(train.X, train.y)
        rows.append({"method": "linear probe on B", "accuracy": probe.score(test.X, test.y)})
    refs = {"A fine-tuned": finetuned, "B fine-tuned": target_finetuned}
    for name, model in refs.items():
        if model is not None:
            acc = FineTuned(model, **rt).fit().score(test.X, test.y)
            rows.append({"method": name, "accuracy": acc})
    return rows
