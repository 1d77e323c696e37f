"""The task-vector transfer table: the target B with the carried head alone, a linear probe on B,
each transfer method, and the fine-tuned A and B as references."""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn

from ..data import Dataset
from ..loading import load_processor
from ..lora import is_adapter, merged
from ..probe import FineTuned, LinearProbe
from ..transfer import METHODS, SCALES, Transfer

__all__ = ["transfer_table"]


def transfer_table(
    source,
    finetuned,
    target,
    calib: Dataset,
    val: Dataset,
    test: Dataset,
    *,
    train: Dataset | None = None,
    methods: Sequence[str] = tuple(METHODS),
    target_finetuned=None,
    token: str = "all",
    scales: Sequence[float] = SCALES,
    batch_size: int = 16,
    max_length: int = 128,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
    save_best=None,
    overwrite: bool = False,
    **options,
) -> list[dict]:
    """Test accuracy of the target B after each transfer method, beside its references.
    `finetuned`: A_ft as a folder or model, or a classifier's PEFT adapter of `source`;
    `options`: further `Transfer` arguments (center, tie_break, stats_dtype, scale_search).

    Rows: "B + carried head" (scale 0: A_ft's head on B's features, no task vector), each method
    (scale chosen on `val`, calibrated on `calib`), a linear probe on B trained on `train` (if
    given), and the fine-tuned A and B (if `target_finetuned` is given). A method that cannot
    run on this pair (naive on other widths) gets accuracy None and the reason. With
    `save_best` (a folder), the transferred model with the best validation accuracy is saved
    there (`Transfer.save`: a Hugging Face checkpoint plus τ_B and the settings; an existing
    folder only with `overwrite`).

    Raises:
        ValueError: a method name is unknown, or no method could run on this pair (the reasons).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown transfer methods {unknown}; choose from {', '.join(METHODS)}")
    rt = dict(batch_size=batch_size, max_length=max_length, device=device, dtype=dtype)
    rows, best = [], None
    for method in methods:
        t0 = time.time()
        t = Transfer(
            source, finetuned, target, method=method, token=token, scales=scales,
            progress=progress, **options, **rt,
        )  # fmt: skip
        try:
            t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
        except ValueError as e:
            rows.append({"method": method, "accuracy": None, "note": str(e)})
            continue
        seconds = time.time() - t0
        if best is None or t.val_scores_[t.scale_] > best.val_scores_[best.scale_]:
            best = t
        if not rows:
            head = t.score(test.X, test.y, scale=0.0)
            rows.append({"method": "B + carried head", "accuracy": head, "scale": 0.0})
        rows.append(
            {
                "method": method,
                "accuracy": t.score(test.X, test.y),
                "scale": t.scale_,
                "val_accuracy": t.val_scores_[t.scale_],
                "moved": f"{t.moved_params_}/{t.source_params_}",
                "open directions": "{}/{}".format(*t.open_directions_),
                "seconds": round(seconds, 1),
                "timings": {k: round(v, 2) for k, v in t.timings_.items()},  # where they went
            }
        )
    if best is None:
        notes: dict[str, list[str]] = {}
        for r in rows:  # one reason once, with every method it stopped
            notes.setdefault(r["note"], []).append(r["method"])
        reasons = "; ".join(f"{', '.join(ms)}: {note}" for note, ms in notes.items())
        raise ValueError(f"no transfer method could run on this pair ({reasons})")
    if save_best is not None:
        best.save(save_best, overwrite=overwrite)
        next(r for r in rows if r["method"] == best.method)["saved"] = str(save_best)
    if train is not None:
        probe = LinearProbe(target, progress=progress, **rt).fit(train.X, train.y)
        rows.append({"method": "linear probe on B", "accuracy": probe.score(test.X, test.y)})
    a_ft, proc = finetuned, None
    if is_adapter(finetuned):  # A + adapter, merged for its own row, with A's processor
        a_ft = merged(source, finetuned, device=device, dtype=dtype)
        proc = None if isinstance(source, nn.Module) else load_processor(source)
    refs = {"A fine-tuned": (a_ft, proc), "B fine-tuned": (target_finetuned, None)}
    for name, (model, processor) in refs.items():
        if model is not None:
            acc = FineTuned(model, processor=processor, **rt).fit().score(test.X, test.y)
            rows.append({"method": name, "accuracy": acc})
    return rows
