"""Multi-task matrices: one W shared by several tasks that share a base (each keeps its own
fine-tuned head), against one W per task."""

from __future__ import annotations

import numpy as np

from ..loading import load_model
from ..stats import GramStats
from ..taskmatrix import TaskMatrix
from .sweep import embed_split

__all__ = ["multitask"]


def multitask(
    base,
    tasks: dict[str, tuple],
    *,
    alpha: float | str = 0.0,
    cv: int = 5,
    pool: str = "cls",
    norm: str = "base",
    batch_size: int = 32,
    max_length: int = 128,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
) -> list[dict]:
    """One task matrix shared by several tasks vs one per task.

    Args:
        base: the base every fine-tuned model started from (folder or model).
        tasks: name -> (fine-tuned folder or model, train Dataset, test Dataset).
        alpha: solver, as for `TaskMatrix`; the layer is chosen by CV for each fit.

    The joint W solves least squares over the union of every task's (base, fine-tuned) pairs:
    its statistics are the sum of the per-task statistics. Rows: {task, method, layer, accuracy}.
    """
    bm, proc = load_model(base, device=device, dtype=dtype)  # loaded once, shared by every task
    kw = dict(pool=pool, batch_size=batch_size, max_length=max_length)
    fits, joint = {}, {}
    for name, (ft, train, test) in tasks.items():
        fm, ft_proc = load_model(ft, head=True, device=device, dtype=dtype)
        p = proc if proc is not None else ft_proc
        tm = TaskMatrix(bm, fm, layer="auto", alpha=alpha, cv=cv, norm=norm, processor=p, **kw)
        tr = embed_split(bm, fm, p, train, progress=progress, **kw)
        te = embed_split(bm, fm, p, test, progress=progress, **kw)
        stats = tm.accumulate([(np.arange(len(tr.y)), tr.base, tr.finetuned)], sorted(tr.base))
        fits[name] = (tm, stats, te)
        for i, s in stats.items():
            joint.setdefault(i, GramStats(folds=s.folds, qr=s.qr is not None)).merge(s)
    rows = []
    for name, (tm, stats, te) in fits.items():
        for method, st in (("single-task matrix", stats), ("multi-task matrix", joint)):
            tm.fit_stats(st)
            rows.append(
                {
                    "task": name,
                    "method": method,
                    "layer": tm.layer_,
                    "accuracy": tm.score_embeddings({tm.layer_: te.base[tm.layer_]}, te.y)[
                        tm.layer_
                    ],
                }
            )
    for method in ("single-task matrix", "multi-task matrix"):
        accs = [r["accuracy"] for r in rows if r["method"] == method]
        rows.append(
            {"task": "average", "method": method, "layer": None, "accuracy": float(np.mean(accs))}
        )
    return rows
