"""Task matrices (arXiv 2512.14880): a linear map from a base model's layer-i [CLS] embedding to
the fine-tuned model's final-layer [CLS] embedding, so that base + W + fine-tuned head ≈ fine-tuned.

Fitting needs no labels: the targets are the fine-tuned model's own embeddings. One extraction
pass accumulates statistics for every layer; the layer and ridge strength can then be chosen by
k-fold cross-validation on those statistics.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import __version__
from ._estimator import check_fitted, recorded
from .checks import check_alpha, check_bool, check_int, check_layer
from .data import num_items, take
from .distributed import shard
from .extract import iter_embeddings, resolve_layers
from .inference import HeadClassifier
from .io import load_tensors, save_tensors
from .maps import (
    DEFAULT_ALPHAS,
    LeastSquaresMap,
    LinearMap,
    RidgeCVMap,
    RidgeMap,
    check_solver,
)
from .models import num_layers
from .solvers import cv_errors, mean_cv_error
from .stats import GramStats
from .verbaliser import Verbaliser

__all__ = ["TaskMatrix"]


def _chunks(batches: Iterable, rows: int = 512) -> Iterator:
    """Consecutive (index, {layer: X}, Y) batches joined into chunks of at least `rows` rows:
    a few large statistics updates instead of many small ones."""
    pending = []
    for batch in batches:
        pending.append(batch)
        if sum(len(b[2]) for b in pending) >= rows:
            yield _join(pending)
            pending = []
    if pending:
        yield _join(pending)


def _join(parts: list) -> tuple:
    if len(parts) == 1:
        return parts[0]
    if len({p[0] is None for p in parts}) > 1 or len({tuple(p[1]) for p in parts}) > 1:
        raise ValueError("batches must all give row indices or all give None, and the same layers")
    index = None if parts[0][0] is None else np.concatenate([p[0] for p in parts])
    cat = lambda ts: torch.cat([torch.as_tensor(t) for t in ts])  # noqa: E731
    return (
        index,
        {i: cat([p[1][i] for p in parts]) for i in parts[0][1]},
        cat([p[2] for p in parts]),
    )


def _warn_no_better_than_mean(tm: TaskMatrix, s: GramStats) -> None:
    """Warn when the CV-chosen layer's map predicts no better than Y's mean (e.g. its inputs
    are constant because every prompt ends in one token): it won only because every other
    layer's map did worse than a constant, as least squares does with fewer rows than width."""
    floor = mean_cv_error(s)
    if tm.cv_errors_[tm.layer_] < (1 - 1e-6) * floor:
        return
    fix = "use ridge (alpha='auto')" if tm._alphas() == [0.0] else "give more rows"
    warnings.warn(
        f"CV chose layer {tm.layer_}, but its map predicts no better than the mean of the "
        f"fine-tuned embeddings (CV error {tm.cv_errors_[tm.layer_]:.4g} vs {floor:.4g}): "
        f"every layer's map did worse than a constant; {fix}, or pool the tokens differently "
        "(pool='mean')",
        stacklevel=3,
    )


def _same_rows(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The rows of a base batch, checked against the fine-tuned batch they are paired with."""
    if not np.array_equal(i, j):
        raise RuntimeError("base and fine-tuned batches hold different rows; please report this")
    return i


class TaskMatrix(HeadClassifier):
    """Estimator: fit W per base layer, predict with the fine-tuned head.

    Args:
        base: base encoder (folder, cached hub id, or model).
        finetuned: the fine-tuned classifier (folder or model) whose head is reused.
        layer: base layer to map from, or "auto" (fit all 0..L, keep all, pick by CV error).
        alpha: ridge strength relative to the mean eigenvalue of XᵀX; 0 is the paper's plain
            least squares; a sequence or "auto" is chosen per layer by k-fold CV.
        fit_intercept: affine map (adds a bias).
        solver: how plain least squares (alpha 0) is solved: "qr" from a streamed QR of X,
            equal to numpy.linalg.lstsq however badly X is conditioned (real [CLS] embeddings
            are: σ_min/σ_max down to 1e-18), for 3.5% more fit time and (d+1)² more floats per
            layer while fitting; or "gram" from XᵀX, which drops the directions below ~1e-7.
            The layer is chosen by CV on the Gram statistics either way (the kept QR map
            differs from the one CV scored only in those near-null directions); ridge always
            uses XᵀX.
        cv: folds used when anything is chosen by cross-validation.
        pool: base pooling, "cls", "mean", (decoders) "last" or (DINOv2) "cls+mean" (targets
            are the fine-tuned model's final hidden state where its head reads: [CLS], a
            decoder's last token, or DINOv2's [CLS] joined to its patch mean, final-normed).
        norm: final norm after the map: "base" (the reference), "finetuned", or "none" (a head
            reading "cls+mean" has the base's norm inside the pool: "base" only).
        keep_stats: keep every layer's (per-fold) statistics after fitting in `stats_`, to refit
            with other alphas without extracting again (`fit_stats(tm.stats_)`). Off by
            default: they take 2 · folds · layers · d² floats (2 GB at d = 1024, 25 layers,
            5 folds), which inference never reads.
        choices: the fine-tuned model is a causal LM answering in words: its label words, each as
            it follows the prompt (' river', ' piano'), or {class name: word}. The head is then
            the verbaliser: the LM head's rows for the words' first tokens, read at the last
            token (pool "last" or "mean"); class i answers choices[i]. None: the fine-tuned
            model's classification head.
        processor: tokenizer / image processor, when the models are passed as objects.

    Example:
        >>> tm = TaskMatrix(base="base/", finetuned="finetuned/", layer="auto").fit(train_texts)
        >>> tm.score(test_texts, test_labels), tm.layer_
        >>> tm.save("task.safetensors")
    """

    def __init__(
        self,
        base=None,
        finetuned=None,
        *,
        layer: int | str = "auto",
        alpha: float | Sequence[float] | str = 0.0,
        fit_intercept: bool = False,
        solver: str = "qr",
        cv: int = 5,
        pool: str = "cls",
        norm: str = "base",
        batch_size: int = 32,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        keep_stats: bool = False,
        choices: Sequence[str] | Mapping[str, str] | None = None,
        processor=None,
    ) -> None:
        self.base, self.finetuned = base, finetuned
        self.choices = choices
        self.keep_stats = keep_stats
        self.layer, self.alpha, self.fit_intercept, self.cv = layer, alpha, fit_intercept, cv
        self.solver = solver
        self.pool, self.norm, self.batch_size, self.max_length = pool, norm, batch_size, max_length
        self.device, self.dtype, self.progress = device, dtype, progress
        self.processor = processor

    def _alphas(self) -> list[float]:
        alpha = check_alpha(self.alpha, "alpha")
        return list(DEFAULT_ALPHAS) if alpha == "auto" else [float(a) for a in np.atleast_1d(alpha)]

    def _check_params(self) -> None:
        """This estimator's own parameters, at fit (the shared ones: `check_runtime`)."""
        check_layer(self.layer, "layer")
        self._alphas()
        check_solver(self.solver)
        check_int(self.cv, "cv", low=2)
        check_bool(self.fit_intercept, "fit_intercept")
        check_bool(self.keep_stats, "keep_stats")

    def _uses_cv(self) -> bool:
        return self.layer == "auto" or len(self._alphas()) > 1

    def _layers(self) -> list[int]:
        return resolve_layers(self.base_model_, "all" if self.layer == "auto" else [self.layer])

    def fit(self, X, y=None) -> TaskMatrix:
        """Fit from inputs alone (y is ignored: targets come from the fine-tuned model).

        Raises:
            ValueError: a parameter out of its range, naming it; empty inputs.
        """
        self._check_params()
        self._models(self.base, self.finetuned)
        layers, top = self._layers(), num_layers(self.finetuned_model_)
        if num_items(X) == 0:
            raise ValueError("the dataset is empty: nothing to fit")
        part = shard(num_items(X))  # everything, unless running under torchrun
        mine = take(X, part)
        kw = dict(pool=self.pool_, batch_size=self.batch_size, max_length=self.max_length)
        pairs = []
        if num_items(mine):
            xs = iter_embeddings(
                self.base_model_,
                mine,
                self.processor_,
                layers=layers,
                progress=self.progress,
                desc="fit: base",
                **kw,
            )
            reads = {
                **kw,
                "pool": self.head_.reads,
            }  # where the head reads: [CLS] or the last token
            ys = iter_embeddings(
                self.finetuned_model_, mine, self.processor_, layers=[top], **reads
            )
            pairs = (
                (part.start + _same_rows(i, j), xb, yb[top])
                for (i, xb), (j, yb) in zip(xs, ys, strict=True)
            )
        stats = self.accumulate(pairs, layers)
        for s in stats.values():
            s.all_reduce()
        return self.fit_stats(stats)

    def accumulate(
        self,
        batches: Iterable[tuple[np.ndarray | None, dict[int, torch.Tensor], torch.Tensor]],
        layers: Sequence[int],
    ) -> dict[int, GramStats]:
        """Per-layer statistics from (row index, base {layer: (B, d)}, fine-tuned (B, d_ft))
        batches; the global row indices fix the CV folds whatever the batch order or sharding."""
        self._check_params()  # before any extraction, not after it
        folds = self.cv if self._uses_cv() else 0
        qr = self.solver == "qr" and self._alphas() == [0.0]  # ridge always solves from XᵀX
        stats = {i: GramStats(folds=folds, qr=qr) for i in layers}
        for index, xb, yb in _chunks(batches):
            # numpy's BLAS threads would fight torch's for the cores between batches (13.4 s
            # vs 10.4 s to fit 1,000 tweets on 2 cores); one thread does these small updates
            with threadpool_limits(limits=1, user_api="blas"):
                for i in layers:
                    try:
                        stats[i].update(xb[i], yb, index)
                    except ValueError as e:
                        raise ValueError(
                            f"base layer {i} (X) vs fine-tuned final layer (Y): {e}"
                        ) from None
        return stats

    def _solver(self) -> LinearMap:
        """The map of the family this estimator's alpha asks for."""
        alphas, icpt = self._alphas(), self.fit_intercept
        if len(alphas) > 1:
            return RidgeCVMap(alphas=tuple(alphas), cv=self.cv, fit_intercept=icpt)
        if alphas[0]:
            return RidgeMap(alpha=alphas[0], fit_intercept=icpt)
        return LeastSquaresMap(fit_intercept=icpt, solver=self.solver)

    def fit_stats(self, stats: dict[int, GramStats]) -> TaskMatrix:
        """(Re)solve every layer from accumulated statistics {layer: GramStats}."""
        self._check_params()
        self._models(self.base, self.finetuned)
        self.maps_, self.alphas_, self.cv_errors_ = {}, {}, {}
        self.stats_ = stats if self.keep_stats else {}
        for i, s in stats.items():
            m = self._solver().fit_stats(s)
            if isinstance(m, RidgeCVMap):
                a, err = m.alpha_, float(np.min(m.cv_errors_))
            else:
                a, err = self._alphas()[0], float("nan")
                if self.layer == "auto":  # the layer is chosen by its CV error
                    err = float(cv_errors(s, [a], fit_intercept=self.fit_intercept)[0])
            self.maps_[i], self.alphas_[i], self.cv_errors_[i] = m, a, err
        self.layer_ = (
            min(self.cv_errors_, key=self.cv_errors_.get)
            if self.layer == "auto"
            else self._layers()[0]
        )
        if self.layer == "auto":
            _warn_no_better_than_mean(self, stats[self.layer_])
        return self

    def save(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        relative_to: str | os.PathLike | None = None,
    ) -> None:
        """Write every fitted layer's map and the settings to one safetensors file (atomically);
        an existing `path` is replaced only if tasklift wrote it and `overwrite` is set. A
        verbaliser head is written too, so the file predicts without the fine-tuned model.

        Model folders are recorded as absolute paths, or relative to `relative_to` (a folder
        that travels with the file, as `tasklift export` writes).
        """
        check_fitted(self, "maps_")
        tensors, maps = {}, {}
        for i, m in self.maps_.items():
            t, maps[i] = m.state()
            tensors.update({f"{i}.{k}": v for k, v in t.items()})
        head = None
        if isinstance(self.head_, Verbaliser):
            t, head = self.head_.state()
            tensors.update({f"head.{k}": v for k, v in t.items()})
        params = {k: recorded(v) for k, v in self.get_params().items() if k != "processor"}
        if relative_to is not None:
            for k in ("base", "finetuned"):
                if params[k] is not None:  # a verbaliser's fine-tuned model may be left out
                    params[k] = os.path.relpath(params[k], relative_to)
        save_tensors(
            path,
            tensors,
            {
                "class": "TaskMatrix",
                "version": __version__,
                "params": params,
                "layer": self.layer_,
                "alphas": self.alphas_,
                "cv_errors": self.cv_errors_,
                "maps": maps,
                "head": head,
            },
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, *, base=None, finetuned=None, **overrides) -> TaskMatrix:
        """Read a saved task matrix; models come from the recorded paths unless given (a saved
        verbaliser needs the base alone, unless norm='finetuned')."""
        tensors, info = load_tensors(path)
        if info.get("class") != "TaskMatrix":
            raise ValueError(f"{path} holds a {info.get('class')!r}, not a TaskMatrix")
        params = {**info["params"], **overrides}
        for k in ("base", "finetuned"):  # relative folders are relative to the file's folder
            if isinstance(params[k], str) and not os.path.isabs(params[k]):
                beside = os.path.join(os.path.dirname(os.path.abspath(path)), params[k])
                params[k] = beside if os.path.isdir(beside) else params[k]  # else a model name
        params["base"] = base if base is not None else params["base"]
        params["finetuned"] = finetuned if finetuned is not None else params["finetuned"]
        head = info.get("head")  # a verbaliser's: its rows are in the file
        if "choices" in overrides and overrides["choices"] != info["params"].get("choices"):
            raise ValueError(
                f"{path} was fitted with choices={info['params'].get('choices')!r}; its maps "
                "read that head: load it without choices=, or fit a matrix for the new words"
            )
        if head is not None:
            head = Verbaliser.from_state(
                {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}, head
            )
        if params["base"] is None or (params["finetuned"] is None and head is None):
            raise ValueError(
                f"{path} does not record model folders (they were passed as objects); "
                "pass base= and finetuned= to load()"
            )
        tm = cls(**params)
        tm._models(tm.base, tm.finetuned, head=head)
        tm.maps_ = {
            int(i): LinearMap.from_state(
                {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".")[0] == i}, meta
            )
            for i, meta in info["maps"].items()
        }
        tm.stats_ = {}
        tm.layer_ = info["layer"]
        tm.alphas_ = {int(k): v for k, v in info["alphas"].items()}
        tm.cv_errors_ = {int(k): v for k, v in info["cv_errors"].items()}
        return tm
