"""Task matrices (arXiv 2512.14880): a linear map from a base model's layer-i [CLS] embedding to
the fine-tuned model's final-layer [CLS] embedding, so that base + W + fine-tuned head ≈ fine-tuned.

Fitting needs no labels: the targets are the fine-tuned model's own embeddings. One extraction
pass accumulates statistics for every layer; the layer and ridge strength can then be chosen by
k-fold cross-validation on those statistics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from ._estimator import ClassifierMixin, as_labels, check_fitted
from .data import num_items, take
from .distributed import shard
from .extract import embed, iter_embeddings, resolve_layers
from .io import load_tensors, save_tensors
from .maps import DEFAULT_ALPHAS, LeastSquaresMap, LinearMap, RidgeMap, cv_errors
from .models import Head, final_norm, hidden_size, load_model, num_layers
from .stats import GramStats

__all__ = ["TaskMatrix", "TaskMatrixModel", "NORMS"]

NORMS = ("base", "finetuned", "none")


class TaskMatrixModel(nn.Module):
    """Inference module: base up to layer i → pool → W → final norm → fine-tuned head.

    The forward pass stops after block i of the base, so a mid-layer matrix is also cheaper.

    Args:
        base: HF encoder (its device/dtype are used for the base pass).
        head: the fine-tuned model's `Head`.
        layer: base hidden-state index read (0..L).
        weight, bias: the map, (d_out, d_in) and (d_out,).
        norm: final norm applied after the map, or None.

    Shapes: forward(**batch) -> logits (B, classes); from_embedding (B, d_in) -> (B, classes).
    """

    def __init__(
        self,
        base: nn.Module,
        head: Head,
        *,
        layer: int,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        norm: nn.Module | None = None,
        pool: str = "cls",
        processor=None,
    ) -> None:
        super().__init__()
        d_base = hidden_size(base)
        if weight.shape[1] != d_base:
            raise ValueError(
                f"the task matrix expects a base of width {weight.shape[1]} but "
                f"{type(base).__name__} has hidden size {d_base}; was it fitted on another base?"
            )
        self.base, self.head, self.norm = base, head, norm
        self.layer, self.pool, self.processor = layer, pool, processor
        ref = next(head.parameters())
        self.map = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        self.map.to(ref.device, ref.dtype)
        with torch.no_grad():
            self.map.weight.copy_(weight)
            if bias is not None:
                self.map.bias.copy_(bias)

    @torch.inference_mode()
    def from_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from base layer-i pooled embeddings (B, d_in)."""
        z = self.map(x.to(self.map.weight.device, self.map.weight.dtype))
        if self.norm is not None:
            z = self.norm(z)
        return self.head(z)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        x = embed(
            self.base,
            batch,
            layers=[self.layer],
            pool=self.pool,
            batch_size=len(next(iter(batch.values()))),
        )[self.layer]
        return self.from_embedding(x)

    def predict_logits(
        self, X, *, batch_size: int = 32, max_length: int = 128, progress: bool = False
    ) -> np.ndarray:
        """Logits (N, classes) for raw or encoded inputs, streamed in batches."""
        emb = embed(
            self.base,
            X,
            self.processor,
            layers=[self.layer],
            pool=self.pool,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            desc="predict",
        )
        return self.from_embedding(emb[self.layer]).float().cpu().numpy()


def _identity(d: int) -> LinearMap:
    m = LeastSquaresMap()
    m.coef_, m.intercept_, m.n_samples_seen_ = np.eye(d), np.zeros(d), 0
    return m


class TaskMatrix(ClassifierMixin):
    """Estimator: fit W per base layer, predict with the fine-tuned head.

    Args:
        base: base encoder (folder, cached hub id, or model).
        finetuned: the fine-tuned classifier (folder or model) whose head is reused.
        layer: base layer to map from, or "auto" (fit all 0..L, keep all, pick by CV error).
        alpha: ridge strength relative to mean eigenvalue of XᵀX; 0 is the paper's plain
            least squares; a sequence or "auto" is chosen per layer by k-fold CV.
        fit_intercept: affine map (adds a bias).
        cv: folds used when anything is chosen by cross-validation.
        pool: base pooling, "cls" or "mean" (targets are always the fine-tuned [CLS], where its
            head reads).
        norm: final norm after the map: "base" (the reference), "finetuned", or "none".
        processor: tokenizer / image processor, when the models are passed as objects.

    Example:
        >>> tm = TaskMatrix("base/", "finetuned/", layer="auto").fit(train_texts)
        >>> tm.score(test_texts, test_labels), tm.layer_
        >>> tm.save("task.safetensors")
    """

    def __init__(
        self,
        base,
        finetuned,
        *,
        layer: int | str = "auto",
        alpha: float | Sequence[float] | str = 0.0,
        fit_intercept: bool = False,
        cv: int = 5,
        pool: str = "cls",
        norm: str = "base",
        batch_size: int = 32,
        max_length: int = 128,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        processor=None,
    ) -> None:
        self.base, self.finetuned = base, finetuned
        self.layer, self.alpha, self.fit_intercept, self.cv = layer, alpha, fit_intercept, cv
        self.pool, self.norm, self.batch_size, self.max_length = pool, norm, batch_size, max_length
        self.device, self.dtype, self.progress = device, dtype, progress
        self.processor = processor

    # -- models ---------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; use one of {NORMS}")
        if not hasattr(self, "base_model_"):
            self.base_model_, proc = load_model(self.base, device=self.device, dtype=self.dtype)
            self.finetuned_model_, ft_proc = load_model(
                self.finetuned, head=True, device=self.device, dtype=self.dtype
            )
            self.processor_ = next(
                (p for p in (self.processor, proc, ft_proc) if p is not None), None
            )
            self.head_ = Head(self.finetuned_model_)

    def _alphas(self) -> list[float]:
        if isinstance(self.alpha, str):
            if self.alpha != "auto":
                raise ValueError(f"alpha must be a number, a list, or 'auto'; got {self.alpha!r}")
            return list(DEFAULT_ALPHAS)
        return [float(a) for a in np.atleast_1d(self.alpha)]

    def _uses_cv(self) -> bool:
        return self.layer == "auto" or len(self._alphas()) > 1

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, X, y=None) -> TaskMatrix:
        """Fit from inputs alone (y is ignored: targets come from the fine-tuned model)."""
        self._load()
        layers = resolve_layers(self.base_model_, "all" if self.layer == "auto" else [self.layer])
        top = num_layers(self.finetuned_model_)
        if num_items(X) == 0:
            raise ValueError("the dataset is empty: nothing to fit")
        part = shard(num_items(X))  # everything, unless running under torchrun
        mine = take(X, part)
        kw = dict(pool=self.pool, batch_size=self.batch_size, max_length=self.max_length)
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
            ys = iter_embeddings(
                self.finetuned_model_, mine, self.processor_, layers=[top], **{**kw, "pool": "cls"}
            )
            pairs = ((part.start + i, xb, yb[top]) for (i, xb), (_, yb) in zip(xs, ys, strict=True))
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
        folds = self.cv if self._uses_cv() else 0
        stats = {i: GramStats(folds=folds) for i in layers}
        for index, xb, yb in batches:
            for i in layers:
                try:
                    stats[i].update(xb[i], yb, index)
                except ValueError as e:
                    raise ValueError(
                        f"base layer {i} (X) vs fine-tuned final layer (Y): {e}"
                    ) from None
        return stats

    def fit_stats(self, stats: dict[int, GramStats]) -> TaskMatrix:
        """(Re)solve every layer from accumulated statistics, e.g. with another alpha."""
        self._load()
        alphas, use_cv = self._alphas(), self._uses_cv()
        self.stats_, self.maps_, self.alphas_, self.cv_errors_ = stats, {}, {}, {}
        for i, s in stats.items():
            errs = cv_errors(s, alphas, fit_intercept=self.fit_intercept) if use_cv else [np.nan]
            best = int(np.argmin(errs)) if use_cv else 0
            a = alphas[best]
            self.alphas_[i], self.cv_errors_[i] = a, float(errs[best])
            m = (
                RidgeMap(alpha=a, fit_intercept=self.fit_intercept)
                if a
                else LeastSquaresMap(fit_intercept=self.fit_intercept)
            )
            self.maps_[i] = m.fit_stats(s)
        self.layer_ = (
            min(self.cv_errors_, key=self.cv_errors_.get)
            if self.layer == "auto"
            else resolve_layers(self.base_model_, [self.layer])[0]
        )
        return self

    # -- inference ------------------------------------------------------------------------------
    def model(self, layer: int | None = None) -> TaskMatrixModel:
        """The inference module for `layer` (default: the selected `layer_`)."""
        check_fitted(self, "maps_")
        layer = self.layer_ if layer is None else resolve_layers(self.base_model_, [layer])[0]
        if layer not in self.maps_:
            raise ValueError(
                f"no task matrix was fitted for layer {layer}; fitted: {sorted(self.maps_)}"
            )
        m = self.maps_[layer]
        norm = {
            "base": final_norm(self.base_model_),
            "finetuned": final_norm(self.finetuned_model_),
            "none": None,
        }[self.norm]
        if (
            norm is not None
            and getattr(norm, "normalized_shape", (m.coef_.shape[0],))[0] != m.coef_.shape[0]
        ):
            raise ValueError(
                f"norm={self.norm!r} has width {norm.normalized_shape[0]} but the map outputs "
                f"{m.coef_.shape[0]}; use norm='finetuned' or 'none'"
            )
        bias = torch.from_numpy(m.intercept_).float() if self.fit_intercept else None
        return TaskMatrixModel(
            self.base_model_,
            self.head_,
            layer=layer,
            pool=self.pool,
            weight=torch.from_numpy(m.coef_).float(),
            bias=bias,
            norm=norm,
            processor=self.processor_,
        )

    def transform(self, X, layer: int | None = None) -> np.ndarray:
        """Mapped embeddings (N, d_ft): base layer-i [CLS] times W, before the norm and head."""
        tm = self.model(layer)
        x = embed(
            self.base_model_,
            X,
            self.processor_,
            layers=[tm.layer],
            pool=self.pool,
            batch_size=self.batch_size,
            max_length=self.max_length,
        )[tm.layer]
        return self.maps_[tm.layer].transform(x.double().numpy())

    def decision_function(self, X, layer: int | None = None) -> np.ndarray:
        """Logits (N, classes) of base + W + fine-tuned head."""
        return self.model(layer).predict_logits(
            X, batch_size=self.batch_size, max_length=self.max_length, progress=self.progress
        )

    def score_layers(self, X, y) -> dict[int, float]:
        """Accuracy of every fitted layer from ONE base pass over X."""
        check_fitted(self, "maps_")
        emb = embed(
            self.base_model_,
            X,
            self.processor_,
            layers=sorted(self.maps_),
            pool=self.pool,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            desc="score layers",
        )
        return self.score_embeddings(emb, y)

    def score_embeddings(self, emb: dict[int, torch.Tensor], y) -> dict[int, float]:
        """Accuracy of each fitted layer present in precomputed base embeddings {layer: (N, d)}."""
        check_fitted(self, "maps_")
        y = as_labels(y, len(next(iter(emb.values()))))
        return {
            i: float((self.model(i).from_embedding(emb[i]).argmax(-1).cpu().numpy() == y).mean())
            for i in sorted(set(emb) & set(self.maps_))
        }

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write every fitted layer's map and the settings to one safetensors file (atomically)."""
        check_fitted(self, "maps_")
        tensors = {}
        for i, m in self.maps_.items():
            tensors[f"{i}.coef"] = torch.from_numpy(m.coef_)
            tensors[f"{i}.intercept"] = torch.from_numpy(m.intercept_)
        source = {
            k: (str(v) if isinstance(v, (str, os.PathLike)) else None)
            for k, v in (("base", self.base), ("finetuned", self.finetuned))
        }
        params = {
            k: v
            for k, v in vars(self).items()
            if not k.endswith("_") and k not in ("base", "finetuned", "processor")
        }
        save_tensors(
            path,
            tensors,
            {
                "class": "TaskMatrix",
                "version": __version__,
                "params": params,
                **source,
                "layer": self.layer_,
                "alphas": self.alphas_,
                "cv_errors": self.cv_errors_,
                "n_samples": {i: m.n_samples_seen_ for i, m in self.maps_.items()},
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, *, base=None, finetuned=None, **overrides) -> TaskMatrix:
        """Read a saved task matrix; models come from the recorded paths unless given."""
        tensors, info = load_tensors(path)
        if info.get("class") != "TaskMatrix":
            raise ValueError(f"{path} holds a {info.get('class')!r}, not a TaskMatrix")
        base, finetuned = base or info["base"], finetuned or info["finetuned"]
        if base is None or finetuned is None:
            raise ValueError(
                f"{path} does not record model folders (they were passed as objects); "
                "pass base= and finetuned= to load()"
            )
        tm = cls(base, finetuned, **{**info["params"], **overrides})
        tm._load()
        layers = sorted(int(k.split(".")[0]) for k in tensors if k.endswith(".coef"))
        tm.maps_ = {}
        for i in layers:
            m = LeastSquaresMap(fit_intercept=tm.fit_intercept)
            m.coef_, m.intercept_ = tensors[f"{i}.coef"].numpy(), tensors[f"{i}.intercept"].numpy()
            m.n_samples_seen_ = info["n_samples"][str(i)]
            tm.maps_[i] = m
        tm.layer_ = info["layer"]
        tm.alphas_ = {int(k): v for k, v in info["alphas"].items()}
        tm.cv_errors_ = {int(k): v for k, v in info["cv_errors"].items()}
        return tm
