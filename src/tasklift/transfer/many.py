"""Many adapters of A, one calibration: with the calibration targets given, the maps A -> B come
from A and B alone, so they are solved once (or read from the on-disk cache, `transfer.cache`)
and move every adapter. Where they depend on the adapter (label-free targets are each A_ft's own
continuations; GradFix masks each τ_B by B's gradient signs; a classifier's adapter carries its
own head, which the task loss runs through), each adapter is calibrated alone, and the log and
the manifest say so. With validation inputs, each adapter's scale is chosen on them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .. import __version__
from ..data import is_texts, num_items
from ..distributed import everywhere, is_main
from ..io import check_output
from ..lora import head_state, is_classifier, read_adapter, write_moved
from ..taskvector import TaskVector
from ..timing import Timings
from .cache import MapCache, Maps, data_fingerprint, default_dir, model_fingerprint
from .calibration import calibrate, keep_budget, plan_passes
from .lm import check_fits, lm_setup
from .methods import Method
from .scales import choose_scale
from .solve import iter_maps, transport

__all__ = ["move_adapters", "per_adapter", "touched_pairs", "solved_maps", "move_all"]

log = logging.getLogger(__name__)

#: the Transfer settings that shape the maps, besides the method, models, data and module pairs
_MAP_PARAMS = ("token", "tie_break", "center", "batch_size", "stats_dtype", "choices")


def touched_pairs(pairs: Mapping[str, str], tvs: Sequence[TaskVector]) -> dict[str, str]:
    """The pairs {B module: A module} whose A module some task vector changes (a LoRA on
    attention leaves the FFN, whose maps cost most, alone)."""
    touched = {k.rsplit(".", 1)[0] for tv in tvs for k in tv.deltas}
    return {t: s for t, s in pairs.items() if s in touched}


def solved_maps(
    est,
    method: Method,
    prep: dict,
    pairs: Mapping[str, str],
    n: int,
    words=None,
    images=False,
    timings: Timings | None = None,
) -> Maps:
    """Calibrate A and B (`prep`) on n inputs, in passes under `est.max_stats_gb` (which caps
    A's gradient rows a classifier's first pass keeps too: `calibration.HeadStep`), and yield
    each module's (R_in, R_out) as soon as it is solved; each pass's statistics are freed once
    its maps are made. `timings` records the calibration's phases (see `calibrate`)."""
    a, b = prep["source"], prep["target"]
    dtype = np.dtype("float64" if est.center else est.stats_dtype)  # see `Transfer`: center
    budget = None if est.max_stats_gb is None else est.max_stats_gb * 2**30
    passes = plan_passes(a, b, pairs, method.signals, budget, dtype.itemsize) or [{}]
    head = prep.get("head_step")  # a classifier's head: carried onto B in the first pass
    for i, part in enumerate(passes):
        desc = f"calibrate ({method.name}{f', pass {i + 1}/{len(passes)}' if i else ''})"
        stats = None
        if method.signals or (head and not i):
            stats = calibrate(
                a, b, part if method.signals else {}, est._batches(n, desc), prep["loss"],
                signals=method.signals, token=est.token, words=words, dtype=dtype, grids=images,
                timings=timings, head=None if i else head,
                keep_bytes=keep_budget(budget),
            )  # fmt: skip
        yield from iter_maps(a, b, part, stats or {}, method, tie_break=est.tie_break,
                             center=est.center)  # fmt: skip
        del stats


def move_all(
    tvs: Sequence[TaskVector], source: nn.Module, target: nn.Module, pairs, maps: Maps
) -> list[dict]:
    """Every task vector moved by the same maps, module by module: [{B parameter: delta}]."""
    moved: list[dict] = [{} for _ in tvs]
    for name, m in maps:  # one module's maps at a time
        for tv, out in zip(tvs, moved, strict=True):
            one = transport(tv, source, target, {name: pairs[name]}, {name: m}, strict=False)
            out.update(one.deltas)
    return moved


def per_adapter(method: Method, X, y, configs: Sequence[dict] = ()) -> str | None:
    """Why each adapter needs maps of its own, or None when one calibration serves them all
    (`configs`: the adapters' PEFT configs)."""
    if any(is_classifier(c) for c in configs):
        return "a classifier's adapter carries its own head, which the task loss runs through"
    if method.post is not None:
        return f"{method.name} masks each τ_B by the signs of B's gradients"
    if y is None and not (isinstance(X, dict) and "labels" in X):
        return "label-free: the calibration targets are each A_ft's own continuations"
    return None


def model_name(model, default: str) -> str:
    """A model's folder or name as given; a model object's the folder it came from, if any."""
    if isinstance(model, nn.Module):  # a model object: the folder it came from, if any
        return getattr(getattr(model, "config", None), "_name_or_path", "") or default
    return str(model)


def _key(est, method: Method, prep: dict, tok_a, pairs: dict, X, y) -> dict:
    """What the maps depend on (`cache.MapCache`'s key)."""
    a, b = prep["source"], prep["target"]
    skip = ("summary", "post", "baseline")
    fields = {k: v for k, v in dataclasses.asdict(method).items() if k not in skip}
    return {
        "tasklift": __version__, "method": fields,
        "params": {k: getattr(est, k) for k in _MAP_PARAMS},
        "max_length": est.max_length_, "dtype": str(next(a.parameters()).dtype),
        "source": model_fingerprint(a, tok_a), "target": model_fingerprint(b, prep["processor"]),
        "data": data_fingerprint(X, y), "pairs": pairs,
    }  # fmt: skip


def _scaled(est, deltas: dict, b: nn.Module, scale: float, X_val, y_val) -> dict:
    """An adapter's τ_B (deltas) at `scale`, or with X_val at the scale of est.scales whose
    B + scale · τ_B scores best on (X_val, y_val), as `Transfer.fit` chooses it."""
    if X_val is None:
        return {"deltas": deltas, "scale": scale, "val_scores": {}}
    best, scores = choose_scale(est, TaskVector(deltas), b, X_val, y_val)
    return {"deltas": deltas, "scale": best, "val_scores": scores}


def _alone(est, adapter, X, y, scale: float, X_val, y_val) -> dict:
    """One adapter calibrated and moved on its own (`Transfer.fit`), with its carried head."""
    t = type(est)(**{**est.get_params(deep=False), "finetuned": adapter})
    t.fit(X, y, X_val=X_val, y_val=y_val)
    return {"deltas": t.task_vector_.deltas, "scale": scale if X_val is None else t.scale_,
            "val_scores": t.val_scores_, "head": head_state(t.model_, t.head_)}  # fmt: skip


def _shared(est, method: Method, adapters, tvs: list, X, y, cache: MapCache | None):
    """One calibration (or a cache hit: none) moving every adapter; B and its loss (`prep`)
    and the manifest's note."""
    a, tok_a = est._load(est.source, lm=True)
    for p, tv in zip(adapters, tvs, strict=True):
        check_fits(a, tv, f"{est.source}, adapter {p}")
    del a
    prep = lm_setup(est, None, tok_a, X, y, tv=tvs[0])
    est.processor_ = prep["processor"]
    est.max_length_ = est._max_length(X, (prep["source"], tok_a), (prep["target"], est.processor_))
    pairs = touched_pairs(prep["pairs"], tvs)
    note: dict = {"maps": "shared", "map_cache": None}
    maps = solved_maps(est, method, prep, pairs, num_items(X))  # runs only when read
    if cache is not None and method.signals:
        key = _key(est, method, prep, tok_a, pairs, X, y)
        found = cache.load(key)
        found = found if everywhere([found is not None])[0] else None  # all calibrate, or none
        note["map_cache"] = {"folder": str(cache.folder), "entry": cache.digest(key),
                             "hit": found is not None}  # fmt: skip
        about = {
            "source": model_name(est.source, "source"),
            "target": model_name(est.target, "target"),
        }
        if found is not None:
            maps = found
        elif is_main():  # one process writes the maps every process solved
            maps = cache.store(key, maps, about=about)
    return move_all(tvs, prep["source"], prep["target"], pairs, maps), prep, note


def move_adapters(
    est,
    adapters: Sequence[str | os.PathLike],
    X,
    y=None,
    *,
    out: str | os.PathLike,
    scale: float = 1.0,
    X_val=None,
    y_val=None,
    overwrite: bool = False,
    map_cache: bool | str | os.PathLike | None = True,
) -> list[dict]:
    """`Transfer.move_adapters`: each adapter of A (`est.source`) as an exact LoRA of B at
    `scale` (or, with X_val, at the scale of est.scales scoring best on (X_val, y_val)) in
    out/<its folder name>, and out/tasklift_run.json; returns its records.

    `map_cache`: True (tasklift's cache folder), a folder, or False / None (no cache).

    Under torchrun every process calibrates its share and solves the same maps; only rank 0
    writes (the folders and the map cache), the others return [].

    Raises:
        ValueError: no adapters, adapters sharing a folder name, one that does not fit A, or
            both a scale and validation inputs.
    """
    method = est.check_params()
    if est.token == "word":
        raise ValueError(
            "token='word' pairs the words of each calibration text inside one transfer; shared "
            "maps for many adapters need token='all': move each adapter with "
            "Transfer(A, ADAPTER, B, token='word').fit"
        )
    if est.token == "all" and is_texts(X):  # tokens paired by position: texts split alike
        texts = [p + t for p, t in zip(X, y, strict=True)] if is_texts(y) else X
        est._refuse_tokens(texts, est._tokenizers(), est.max_length)
    if not adapters:
        raise ValueError("no adapters to move; pass one or more PEFT LoRA folders trained on A")
    if X_val is not None and scale != 1.0:
        raise ValueError(f"scale={scale} and X_val both set the scale; pass one of them")
    names = [Path(p).name for p in adapters]
    if len(set(names)) < len(names):
        raise ValueError(f"adapters share folder names {names}; each gets out/<name>")
    check_output(out, overwrite=overwrite, inputs=[str(p) for p in adapters])
    read = [read_adapter(p) for p in adapters]
    why = per_adapter(method, X, y, [config for _, config in read])
    if why is None:
        folder = default_dir() if map_cache is True else map_cache or None
        cache = None if folder is None else MapCache(folder)
        moved, prep, note = _shared(est, method, adapters, [tv for tv, _ in read], X, y, cache)
        est.lm_ = True  # B is scored as `fit` scores a causal LM
        moved = [_scaled(est, m, prep["target"], scale, X_val, y_val) for m in moved]
    else:
        log.warning("maps computed per adapter (%d calibrations): %s", len(adapters), why)
        moved = [_alone(est, p, X, y, scale, X_val, y_val) for p in adapters]
        note = {"maps": "per adapter", "why": why, "map_cache": None}
    info = {"source": model_name(est.source, "source"), "target": model_name(est.target, "target"),
            "settings": {k: getattr(est, k) for k in (*_MAP_PARAMS, "scale_search")}}  # fmt: skip
    empty = [str(p) for p, m in zip(adapters, moved, strict=True) if not m["deltas"]]
    if empty:
        raise ValueError(f"nothing of {empty[0]} could be moved to {info['target']} (no module "
                         "of B pairs with the ones it adapts); nothing was written")  # fmt: skip
    if not is_main():
        return []
    return write_moved(out, adapters, read, moved, method=method.name, **info, **note)
