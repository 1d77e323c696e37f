"""Baselines with the task matrix's API: linear probe, head-only (W = I), and fine-tuned."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ._estimator import ClassifierMixin, as_labels, check_fitted
from .extract import embed, resolve_layers
from .models import Head, hidden_size, load_model, num_layers
from .taskmatrix import TaskMatrix, _identity

__all__ = ["LinearProbe", "HeadOnly", "FineTuned"]


class LinearProbe(ClassifierMixin):
    """Logistic regression on the frozen base model's pooled embedding (standardised).

    Args:
        base: base encoder (folder or model).
        layer: hidden state to read (default -1, the final layer).
        pool: "cls" or "mean".
        C: inverse L2 strength of the logistic regression.
        processor: tokenizer / image processor, when `base` is passed as a model object.
    """

    def __init__(
        self,
        base,
        *,
        layer: int = -1,
        pool: str = "cls",
        C: float = 1.0,
        max_iter: int = 2000,
        batch_size: int = 32,
        max_length: int = 128,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        processor=None,
    ) -> None:
        self.base, self.layer, self.pool, self.C, self.max_iter = base, layer, pool, C, max_iter
        self.batch_size, self.max_length = batch_size, max_length
        self.device, self.dtype, self.progress = device, dtype, progress
        self.processor = processor

    def features(self, X) -> np.ndarray:
        """The frozen embeddings the probe reads, (N, d)."""
        if not hasattr(self, "base_model_"):
            self.base_model_, proc = load_model(self.base, device=self.device, dtype=self.dtype)
            self.processor_ = self.processor if self.processor is not None else proc
        layer = resolve_layers(self.base_model_, [self.layer])[0]
        return embed(
            self.base_model_,
            X,
            self.processor_,
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
        y = as_labels(y, len(feats))
        if len(np.unique(y)) < 2:
            raise ValueError(
                "a linear probe needs examples of at least 2 classes; got only "
                f"class {np.unique(y).tolist()}"
            )
        self.classifier_ = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter)
        )
        self.classifier_.fit(feats, y)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Log-probabilities (N, max class + 1); classes unseen in training get -inf."""
        check_fitted(self, "classifier_")
        return self.decision_features(self.features(X))

    def decision_features(self, feats: np.ndarray) -> np.ndarray:
        """decision_function on precomputed frozen embeddings (N, d)."""
        check_fitted(self, "classifier_")
        logp = self.classifier_.predict_log_proba(feats)
        classes = self.classifier_.classes_
        out = np.full((len(logp), classes.max() + 1), -np.inf)
        out[:, classes] = logp
        return out


class HeadOnly(TaskMatrix):
    """Baseline W = I: the fine-tuned head applied to the base's final [CLS]. Needs no data."""

    def __init__(self, base, finetuned, **kwargs) -> None:
        """Same keywords as TaskMatrix; the layer is always the last one."""
        super().__init__(base, finetuned, layer=-1, **kwargs)

    def fit(self, X=None, y=None) -> HeadOnly:
        """Set W = I at the last layer (inputs are ignored)."""
        self._load()
        d, d_ft = hidden_size(self.base_model_), hidden_size(self.finetuned_model_)
        if d != d_ft:
            raise ValueError(
                f"head-only needs equal widths, but the base has hidden size {d} and "
                f"the fine-tuned model {d_ft}; fit a TaskMatrix instead"
            )
        top = num_layers(self.base_model_)
        self.stats_, self.maps_, self.layer_ = {}, {top: _identity(d)}, top
        self.alphas_, self.cv_errors_ = {top: 0.0}, {top: float("nan")}
        return self


class FineTuned(HeadOnly):
    """The fine-tuned model itself, run through the same inference path (the upper bound)."""

    def __init__(self, finetuned, **kwargs) -> None:
        super().__init__(finetuned, finetuned, norm="finetuned", **kwargs)

    def _load(self) -> None:
        if not hasattr(self, "finetuned_model_"):
            self.finetuned_model_, proc = load_model(
                self.finetuned, head=True, device=self.device, dtype=self.dtype
            )
            self.processor_ = self.processor if self.processor is not None else proc
            self.base_model_, self.head_ = self.finetuned_model_, Head(self.finetuned_model_)
