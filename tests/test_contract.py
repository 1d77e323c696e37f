"""The scikit-learn contract, checked on every tasklift estimator (maps, task matrices, baselines,
transfer): clone / get_params / set_params round-trip, nothing learned before fit, learned names
end in `_`, fit starts afresh (a changed parameter takes effect), classes_ and predict agree."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SkNotFitted
from sklearn.utils.validation import check_is_fitted

from conftest import permuted, tiny_classifier
from tasklift import FineTuned, HeadOnly, LinearProbe, TaskMatrix, Transfer
from tasklift.maps import (
    LeastSquaresMap,
    NotFittedError,
    PermutationMap,
    ProcrustesMap,
    RidgeCVMap,
    RidgeMap,
)

MAPS = [LeastSquaresMap(), RidgeMap(alpha=0.1), RidgeCVMap(alphas=(0.0, 1.0), cv=3),
        ProcrustesMap(), PermutationMap()]  # fmt: skip


def _learned(est) -> set[str]:
    return {k for k in vars(est) if k.endswith("_") and not k.startswith("_")}


@pytest.mark.parametrize("m", MAPS, ids=lambda m: type(m).__name__)
def test_maps_follow_the_contract(m):
    X = np.random.default_rng(0).normal(size=(40, 6))
    twin = clone(m)
    assert twin.get_params() == m.get_params() and not _learned(twin)
    with pytest.raises(SkNotFitted):
        check_is_fitted(twin)
    twin.fit(X, X[:, ::-1])
    check_is_fitted(twin)
    assert {"coef_", "intercept_", "n_samples_seen_"} <= _learned(twin)
    assert twin.get_params() == m.get_params()  # fitting never changes a parameter
    twin.set_params(fit_intercept=True).fit(X + 5, X[:, ::-1])
    assert np.abs(twin.intercept_).max() > 0  # the changed parameter took effect


@pytest.fixture(scope="module")
def models():
    """A tiny base, its fine-tuned classifier, and a second, different base."""
    ft = tiny_classifier("bert", seed=0)
    other = tiny_classifier("bert", seed=5)
    return ft.bert, ft, other.bert


def _estimators(models):
    base, ft, _ = models
    return {
        "TaskMatrix": (TaskMatrix(base, ft, layer="auto", alpha=[0.0, 1.0], cv=3), "base"),
        "HeadOnly": (HeadOnly(base, ft), "base"),
        "FineTuned": (FineTuned(ft), "finetuned"),
        "LinearProbe": (LinearProbe(base), "base"),
    }


@pytest.mark.parametrize("name", ["TaskMatrix", "HeadOnly", "FineTuned", "LinearProbe"])
def test_classifiers_follow_the_contract(models, name):
    base, ft, other = models
    est, model_param = _estimators(models)[name]
    g = torch.Generator().manual_seed(0)
    X = {"input_ids": torch.randint(3, 50, (60, 8), generator=g)}
    y = np.arange(60) % 3
    twin = clone(est)
    params = twin.get_params()
    assert set(params) == set(type(est)().get_params())  # explicit keywords only
    assert not _learned(twin)
    with pytest.raises((SkNotFitted, NotFittedError)):
        twin.predict(X)
    with pytest.raises(SkNotFitted):
        check_is_fitted(twin)
    twin.fit(X, y)
    check_is_fitted(twin)
    assert _learned(twin) and all(k.endswith("_") for k in _learned(twin))
    assert list(twin.classes_) == [0, 1, 2]
    pred = twin.predict(X)
    assert set(pred) <= set(twin.classes_)
    assert twin.score(X, y) == pytest.approx(np.mean(pred == y))
    assert clone(twin).get_params().keys() == params.keys()
    # fit starts afresh: a changed model parameter is used, not the model loaded first
    before = twin.decision_function(X)
    new = other if model_param == "base" else tiny_classifier("bert", seed=7)
    twin.set_params(**{model_param: new}).fit(X, y)
    assert not np.allclose(twin.decision_function(X), before)


def test_transfer_follows_the_contract():
    a = tiny_classifier("bert", seed=0)
    a_ft = tiny_classifier("bert", seed=0)
    with torch.no_grad():
        for p in a_ft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    b = permuted(a, "bert").bert
    est = Transfer(a.bert, a_ft, b, method="naive", scales=(1.0,))
    twin = clone(est)
    assert twin.get_params().keys() == Transfer().get_params().keys() and not _learned(twin)
    with pytest.raises(SkNotFitted):
        check_is_fitted(twin)
    X = {"input_ids": torch.randint(1, 50, (32, 8), generator=torch.Generator().manual_seed(1))}
    y = a_ft(**X).logits.argmax(-1).numpy()
    twin.fit(X, y)
    check_is_fitted(twin)
    assert list(twin.classes_) == [0, 1, 2] and set(twin.predict(X)) <= {0, 1, 2}
    naive = twin.task_vector_
    twin.set_params(method="bico").fit(X, y)  # the changed parameter takes effect
    assert (twin.task_vector_ - naive).norm() > 0.5 * naive.norm()  # permuted, not copied
