"""Task-matrix inference: base up to layer i → pool → W → final norm → the fine-tuned head.

`TaskMatrixModel` is the nn.Module; `HeadClassifier` the scikit-learn side every head-based
estimator shares (TaskMatrix, HeadOnly, FineTuned): model loading, predict, score, layer scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from ._estimator import as_labels, cached, check_fitted, check_runtime, model_key, scored
from ._torch import linear_from
from .checks import check_choice
from .extract import NORMED_POOLS, embed, pooled_width, resolve_layers
from .loading import load_model
from .maps import identity_map
from .models import Head, final_norm, hidden_size, num_layers
from .verbaliser import Verbaliser

__all__ = ["TaskMatrixModel", "HeadClassifier", "NORMS", "finetuned_head"]

NORMS = ("base", "finetuned", "none")


def finetuned_head(
    finetuned: nn.Module, choices: Sequence[str] | Mapping[str, str] | None = None, processor=None
) -> Head | Verbaliser:
    """The head a task matrix ends in: `finetuned`'s classification head, or with `choices` the
    verbaliser of the causal LM `finetuned` (see `Verbaliser.from_lm`)."""
    if choices is not None:
        return Verbaliser.from_lm(finetuned, choices, processor)
    return Head(finetuned)


class TaskMatrixModel(nn.Module):
    """Inference module: base up to layer i → pool → W → final norm → fine-tuned head.

    The forward pass stops after block i of the base, so a mid-layer matrix is also cheaper.

    Args:
        base: HF encoder (its device/dtype are used for the base pass).
        head: the fine-tuned model's `Head`, or a causal LM's `Verbaliser`.
        layer: base hidden-state index read (0..L).
        weight, bias: the map, (d_out, d_in) and (d_out,).
        norm: final norm applied after the map, or None.

    Shapes: forward(**batch) -> logits (B, classes); from_embedding (B, d_in) -> (B, classes).
    """

    def __init__(
        self,
        base: nn.Module,
        head: Head | Verbaliser,
        *,
        layer: int,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        norm: nn.Module | None = None,
        pool: str = "cls",
        processor=None,
    ) -> None:
        super().__init__()
        d_base = pooled_width(base, layer, pool)
        if weight.shape[1] != d_base:
            raise ValueError(
                f"the task matrix expects a base of width {weight.shape[1]} but "
                f"{type(base).__name__} has width {d_base} at layer {layer} pooled {pool!r}; "
                "was it fitted on another base or pool?"
            )
        self.base, self.head, self.norm = base, head, norm
        self.layer, self.pool, self.processor = layer, pool, processor
        self.map = linear_from(weight, bias, like=next(head.parameters()))

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
        self, X, *, batch_size: int = 32, max_length: int | None = None, progress: bool = False
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


class MultiTaskModel(nn.Module):
    """Many tasks served from ONE pass of a shared base: each task is a task matrix's map, final
    norm and head at its own layer; the pass stops after the deepest layer any task reads.

    Build it from fitted task matrices that share a base (`from_task_matrices`), or from
    `TaskMatrixModel`s directly. Shapes: forward(**batch) -> {task: logits (B, classes)}.

    Raises:
        ValueError: no tasks, or tasks on different bases.
    """

    def __init__(self, tasks: dict[str, TaskMatrixModel]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a MultiTaskModel needs at least one task")
        bases = {id(t.base) for t in tasks.values()}
        if len(bases) > 1:
            raise ValueError(
                "the tasks read different base models; load them on one base "
                "(TaskMatrix.load(path, base=shared_model)) to share its forward pass"
            )
        pools = {t.pool for t in tasks.values()}
        if len(pools) > 1:
            raise ValueError(
                f"the tasks pool the base differently ({sorted(pools)}); one base pass serves "
                "tasks fitted with one pool: refit them with the same pool="
            )
        self.tasks = nn.ModuleDict(tasks)
        first = next(iter(tasks.values()))
        self.base, self.processor = first.base, first.processor
        self.pool = first.pool

    @classmethod
    def from_task_matrices(cls, matrices: dict[str, HeadClassifier]) -> MultiTaskModel:
        """One serving model from fitted estimators (each at its selected layer)."""
        return cls({name: tm.model() for name, tm in matrices.items()})

    @property
    def layers(self) -> list[int]:
        """The base layers read, in order (the last is where the base pass stops)."""
        return sorted({t.layer for t in self.tasks.values()})

    def from_embeddings(self, emb: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every task's logits from the base's pooled embeddings {layer: (B, d)}."""
        return {name: t.from_embedding(emb[t.layer]) for name, t in self.tasks.items()}

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(next(iter(batch.values())))
        emb = embed(self.base, batch, layers=self.layers, pool=self.pool, batch_size=n)
        return self.from_embeddings(emb)

    def predict_logits(
        self, X, *, batch_size: int = 32, max_length: int | None = None, progress: bool = False
    ) -> dict[str, np.ndarray]:
        """{task: logits (N, classes)} for raw or encoded inputs, streamed in batches."""
        emb = embed(
            self.base, X, self.processor, layers=self.layers, pool=self.pool,
            batch_size=batch_size, max_length=max_length, progress=progress, desc="predict",
        )  # fmt: skip
        return {k: v.float().cpu().numpy() for k, v in self.from_embeddings(emb).items()}


def _warn_if_unrelated(base: nn.Module, ft: nn.Module, base_src, ft_src) -> None:
    """A task matrix maps between any two models, but a fine-tuned model of another
    architecture than the base is more often a wrong path than a plan: say so."""
    kinds = [getattr(m.config, "model_type", type(m).__name__) for m in (base, ft)]
    shapes = [(num_layers(m), hidden_size(m)) for m in (base, ft)]
    if kinds[0] != kinds[1] or shapes[0] != shapes[1]:
        logging.getLogger("tasklift").warning(
            "the base %s (%s, %d layers x %d) and the fine-tuned %s (%s, %d layers x %d) are "
            "different architectures; is the fine-tuned model really fine-tuned from this base?",
            base_src, kinds[0], *shapes[0], ft_src, kinds[1], *shapes[1],
        )  # fmt: skip


class HeadClassifier(ClassifierMixin, BaseEstimator):
    """Shared inference of the estimators that end in a fine-tuned model's head: a map W per base
    layer (`maps_`), the final norm, then the head. Subclasses store their parameters and fit
    `maps_` and `layer_`; predictions are class ids of the head (`classes_`), whose names are
    in `class_names_`."""

    def _models(self, base, finetuned, *, head: Verbaliser | None = None) -> None:
        """Load (or reuse, while the parameters are unchanged) both models into the fitted state.
        With `choices` the fine-tuned model is a causal LM and the head its verbaliser; a saved
        verbaliser `head` needs no fine-tuned model, unless norm='finetuned' reads its norm."""
        check_runtime(self)
        check_choice(self.norm, "norm", choices=NORMS)
        choices = getattr(self, "choices", None)
        if head is not None and self.norm != "finetuned":
            finetuned = None
        if base is None or (finetuned is None and head is None):
            raise ValueError(
                f"{type(self).__name__} needs its models: pass base= and finetuned= (a folder "
                "or a model object)"
            )
        if finetuned is None and self.norm == "finetuned":
            raise ValueError(
                "norm='finetuned' applies the fine-tuned model's final norm: pass finetuned= "
                "(a folder or a model object), or use norm='base'"
            )

        def load():
            kw = dict(device=self.device, dtype=self.dtype)
            ft, ft_proc = (None, None)
            if finetuned is not None:
                lm = choices is not None
                ft, ft_proc = load_model(finetuned, head=not lm, lm=lm, **kw)
            bm, proc = (ft, None) if base is finetuned else load_model(base, **kw)
            return bm, ft, next((p for p in (self.processor, proc, ft_proc) if p is not None), None)

        key = model_key(base, finetuned, choices is None, self.device, self.dtype, self.processor)
        self.base_model_, self.finetuned_model_, self.processor_ = cached(self, key, load)
        ft = self.finetuned_model_
        if ft is not None:
            _warn_if_unrelated(self.base_model_, ft, base, finetuned)
        if head is not None:  # a saved verbaliser: run it where and as the base runs
            p = next(self.base_model_.parameters())
            self.head_ = head.to(p.device, p.dtype)
        else:
            self.head_ = finetuned_head(ft, choices, self.processor_)
        self.pool_ = self.head_.reads if self.pool is None else self.pool  # None: where it reads
        if self.head_.reads in NORMED_POOLS and self.norm != "base" and self.base_model_ is not ft:
            raise ValueError(
                f"the fine-tuned head reads {self.head_.reads!r}: each token passes the base's "
                f"own final norm inside the pool, so norm={self.norm!r} cannot apply; use "
                "norm='base'"
            )
        if self.head_.reads == "last" and self.pool_ in ("cls", "first"):
            raise ValueError(
                f"{type(ft).__name__ if ft is not None else 'the fine-tuned model'} is a decoder: "
                "its head reads the last token, and token 0 says nothing about the text; pass "
                "pool='last' (--pool last)"
            )
        self.classes_ = np.arange(self.head_.num_classes)
        if isinstance(self.head_, Verbaliser):
            self.class_names_ = list(self.head_.class_names)
        else:
            names = ft.config.id2label
            self.class_names_ = [str(names.get(i, i)) for i in self.classes_]

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "maps_")

    def _fit_identity(self, layers: Sequence[int] | None = None):
        """W = I at `layers` (default the last): the head on the base's own embedding there;
        `layer_` is the last of them."""
        layers = [num_layers(self.base_model_)] if layers is None else list(layers)
        d_ft, reads = self._head_width(), self.head_.reads
        for i in layers:
            if (d := pooled_width(self.base_model_, i, self.pool_)) != d_ft:
                same = pooled_width(self.base_model_, i, reads) == d_ft
                fix = f"pass pool={reads!r}" if same else "fit a TaskMatrix instead"
                raise ValueError(
                    f"head-only needs equal widths, but the base has width {d} at layer {i} "
                    f"pooled {self.pool_!r} and the fine-tuned head reads {d_ft}; {fix}"
                )
        self.layer_ = layers[-1]
        self.maps_ = {i: identity_map(d_ft) for i in layers}
        return self

    def _head_width(self) -> int:
        """Width of the vector the head reads (2 x hidden for DINOv2's "cls+mean")."""
        ft = self.finetuned_model_
        return pooled_width(ft, num_layers(ft), self.head_.reads)

    def model(self, layer: int | None = None) -> TaskMatrixModel:
        """The inference module for `layer` (default: the selected `layer_`)."""
        check_fitted(self, "maps_")
        layer = self.layer_ if layer is None else resolve_layers(self.base_model_, [layer])[0]
        if layer not in self.maps_:
            raise ValueError(
                f"no task matrix was fitted for layer {layer}; fitted: {sorted(self.maps_)}"
            )
        m = self.maps_[layer]
        source = self.base_model_ if self.norm == "base" else self.finetuned_model_
        normed = self.norm == "none" or self.head_.reads in NORMED_POOLS  # normed in the pool
        norm = None if normed else final_norm(source)
        width = getattr(norm, "normalized_shape", (m.coef_.shape[0],))[0]
        if norm is not None and width != m.coef_.shape[0]:
            raise ValueError(
                f"norm={self.norm!r} has width {width} but the map outputs "
                f"{m.coef_.shape[0]}; use norm='finetuned' or 'none'"
            )
        bias = torch.from_numpy(m.intercept_).float() if m.fit_intercept else None
        return TaskMatrixModel(
            self.base_model_,
            self.head_,
            layer=layer,
            pool=self.pool_,
            weight=torch.from_numpy(m.coef_).float(),
            bias=bias,
            norm=norm,
            processor=self.processor_,
        )

    def _embed(self, X, layers: list[int], desc: str) -> dict[int, torch.Tensor]:
        return embed(
            self.base_model_,
            X,
            self.processor_,
            layers=layers,
            pool=self.pool_,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            desc=desc,
        )

    def transform(self, X, layer: int | None = None) -> np.ndarray:
        """Mapped embeddings (N, d_ft): base layer-i pooled embedding times W, before the head."""
        i = self.model(layer).layer
        return self.maps_[i].transform(self._embed(X, [i], "transform")[i].double().numpy())

    def decision_function(self, X, layer: int | None = None) -> np.ndarray:
        """Logits (N, classes) of base + W + fine-tuned head."""
        return self.model(layer).predict_logits(
            X, batch_size=self.batch_size, max_length=self.max_length, progress=self.progress
        )

    def predict(self, X, layer: int | None = None) -> np.ndarray:
        """The head's class id (from `classes_`) per input."""
        check_fitted(self, "maps_")
        return self.classes_[self.decision_function(X, layer).argmax(-1)]

    def predict_proba(self, X, layer: int | None = None) -> np.ndarray:
        """Softmax of the logits, (N, classes)."""
        return torch.softmax(torch.from_numpy(self.decision_function(X, layer)), -1).numpy()

    def score(self, X, y, sample_weight=None, layer: int | None = None) -> float:
        """Accuracy on (X, y); y holds class ids of the fine-tuned head."""
        return scored(self.predict(X, layer), y, sample_weight)

    def score_layers(self, X, y) -> dict[int, float]:
        """Accuracy of every fitted layer from ONE base pass over X."""
        check_fitted(self, "maps_")
        return self.score_embeddings(self._embed(X, sorted(self.maps_), "score layers"), y)

    def score_embeddings(self, emb: dict[int, torch.Tensor], y) -> dict[int, float]:
        """Accuracy of each fitted layer present in precomputed base embeddings {layer: (N, d)}."""
        check_fitted(self, "maps_")
        y = as_labels(y, len(next(iter(emb.values()))))
        return {
            i: float((self.model(i).from_embedding(emb[i]).argmax(-1).cpu().numpy() == y).mean())
            for i in sorted(set(emb) & set(self.maps_))
        }
