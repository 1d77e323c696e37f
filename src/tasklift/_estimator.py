"""The shared classifier contract: predict = argmax of decision_function, score = accuracy."""

from __future__ import annotations

import numpy as np
import torch

from .maps import NotFittedError


def check_fitted(est: object, attr: str) -> None:
    """Raise NotFittedError naming the estimator if `attr` was never learned."""
    if not hasattr(est, attr):
        raise NotFittedError(f"this {type(est).__name__} is not fitted yet; call fit() first")


def as_labels(y, n: int) -> np.ndarray:
    """Labels as an int array of length n, or a ValueError naming the mismatch."""
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if y.shape != (n,):
        raise ValueError(f"labels have shape {y.shape} but there are {n} inputs")
    return y.astype(np.int64)


class ClassifierMixin:
    """predict / score for anything with decision_function(X) -> (N, classes) logits array."""

    def decision_function(self, X, **kwargs) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X, **kwargs) -> np.ndarray:
        """Predicted class index per input (kwargs go to decision_function, e.g. layer=)."""
        return self.decision_function(X, **kwargs).argmax(-1)

    def score(self, X, y, **kwargs) -> float:
        """Accuracy on (X, y)."""
        pred = self.predict(X, **kwargs)
        return float((pred == as_labels(y, len(pred))).mean())
