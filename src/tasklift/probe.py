"""Baselines under the same estimator contract: linear probe, head-only (W = I) and fine-tuned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ._estimator import cached, check_fitted, check_runtime, model_key
from .checks import check_float, check_int
from .extract import embed, pooled_width, resolve_layers
from .inference import HeadClassifier
from .loading import load_model

__all__ = ["LinearProbe", "HeadOnly", "FineTuned"]


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on the frozen base model's pooled embedding (standardised).

    Args:
        base: base encoder (folder or model).
        layer: hidden state to read (default -1, the final layer).
        pool: how a layer's tokens become one vector (`extract.iter_embeddings`).
        C: inverse L2 strength of the logistic regression.
        processor: tokenizer / image processor, when `base` is passed as a model object.

    Learned: `classes_` (the labels seen in fit, sorted), `classifier_`.
    """

    def __init__(
        self,
        base=None,
        *,
        layer: int = -1,
        pool: str = "cls",
        C: float = 1.0,
        max_iter: int = 2000,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        processor=None,
    ) -> None:
        self.base, self.layer, self.pool, self.C, self.max_iter = base, layer, pool, C, max_iter
        self.batch_size, self.max_length = batch_size, max_length
        self.device, self.dtype, self.progress = device, dtype, progress
        self.processor = processor

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "classifier_")

    def features(self, X) -> np.ndarray:
        """The frozen embeddings the probe reads, (N, d)."""
        if self.base is None:
            raise ValueError("LinearProbe needs its model: pass base= (a folder or a model)")
        check_runtime(self)
        check_int(self.layer, "layer")
        key = model_key(self.base, self.device, self.dtype, self.processor)
        load = lambda: load_model(self.base, device=self.device, dtype=self.dtype)  # noqa: E731
        model, proc = cached(self, key, load)
        layer = resolve_layers(model, [self.layer])[0]
        return embed(
            model,
            X,
            self.processor if self.processor is not None else proc,
            layers=[layer],
            pool=self.pool,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            desc="probe",
        )[layer].numpy()

    def fit(self, X, y) -> LinearProbe:
        """Extract features of X and fit the logistic regression on labels y."""
        return self.fit_features(self.features(X), y)

    def fit_features(self, feats: np.ndarray, y) -> LinearProbe:
        """Fit on precomputed frozen embeddings (N, d)."""
        check_float(self.C, "C", low=0, open_low=True)
        check_int(self.max_iter, "max_iter", low=1)
        y = np.asarray(y)
        if y.shape != (len(feats),):
            raise ValueError(f"labels have shape {y.shape} but there are {len(feats)} inputs")
        if len(np.unique(y)) < 2:
            raise ValueError(
                "a linear probe needs examples of at least 2 classes; got only "
                f"class {np.unique(y).tolist()}"
            )
        self.classifier_ = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter)
        )
        self.classifier_.fit(feats, y)
        self.classes_ = self.classifier_.classes_
        return self

    def decision_function(self, X) -> np.ndarray:
        """Class scores (N, len(classes_)): the logistic regression's logits."""
        check_fitted(self, "classifier_")
        return self.decision_features(self.features(X))

    def decision_features(self, feats: np.ndarray) -> np.ndarray:
        """decision_function on precomputed frozen embeddings (N, d)."""
        check_fitted(self, "classifier_")
        z = self.classifier_.decision_function(feats)
        return np.stack([-z / 2, z / 2], 1) if z.ndim == 1 else z  # binary: one logit, centred

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """Predicted labels (from `classes_`) for precomputed frozen embeddings (N, d)."""
        check_fitted(self, "classifier_")
        return self.classes_[self.decision_features(feats).argmax(-1)]

    def predict(self, X) -> np.ndarray:
        """Predicted label (from `classes_`) per input."""
        check_fitted(self, "classifier_")
        return self.predict_features(self.features(X))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, len(classes_))."""
        check_fitted(self, "classifier_")
        return self.classifier_.predict_proba(self.features(X))


class HeadOnly(HeadClassifier):
    """Baseline W = I: the fine-tuned head applied to the base's final [CLS] (a decoder's last
    token), through the base's final norm. Needs no data.

    Args: as `TaskMatrix`, the map being the identity; `layer` is the base layer read (default
        -1, the last), a list of them or "all" (every layer as wide as the fine-tuned model;
        the last is `layer_`); with `choices` the head is the fine-tuned causal LM's verbaliser.
    """

    def __init__(
        self,
        base=None,
        finetuned=None,
        *,
        layer: int | Sequence[int] | str = -1,
        norm: str = "base",
        pool: str = "cls",
        batch_size: int = 32,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        choices: Sequence[str] | Mapping[str, str] | None = None,
        processor=None,
    ) -> None:
        self.base, self.finetuned, self.norm, self.pool = base, finetuned, norm, pool
        self.layer, self.choices = layer, choices
        self.batch_size, self.max_length = batch_size, max_length
        self.device, self.dtype, self.progress = device, dtype, progress
        self.processor = processor

    def fit(self, X=None, y=None) -> HeadOnly:
        """Set W = I at `layer` (inputs are ignored)."""
        self._models(self.base, self.finetuned)
        layers = resolve_layers(self.base_model_, self.layer)
        if self.layer == "all":  # a CNN's stages differ in width: keep those that fit the head
            d_ft = self._head_width()
            fits = [i for i in layers if pooled_width(self.base_model_, i, self.pool_) == d_ft]
            layers = fits or layers[-1:]  # none fits: the last layer's width error, as for -1
        return self._fit_identity(layers)


class FineTuned(HeadClassifier):
    """The fine-tuned model itself, run through the same inference path (the upper bound).

    Args: as `TaskMatrix`, less the base (the fine-tuned model is its own base and norm), and
        `pool` None by default: where its head reads; with `choices` it is a causal LM
        answering in words, scored by its verbaliser.
    """

    norm = "finetuned"

    def __init__(
        self,
        finetuned=None,
        *,
        pool: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        choices: Sequence[str] | Mapping[str, str] | None = None,
        processor=None,
    ) -> None:
        self.finetuned, self.pool, self.choices = finetuned, pool, choices
        self.batch_size, self.max_length = batch_size, max_length
        self.device, self.dtype, self.progress = device, dtype, progress
        self.processor = processor

    def fit(self, X=None, y=None) -> FineTuned:
        """Use the fine-tuned model's own final [CLS] or last token (W = I; inputs are ignored)."""
        self._models(self.finetuned, self.finetuned)
        return self._fit_identity()
