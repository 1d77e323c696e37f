"""The map family between embedding spaces (least squares, ridge, ridge-CV, Procrustes and
permutation) as scikit-learn estimators, each wrapping one closed-form solver of
`tasklift.solvers` and fitted from a `GramStats`, so streaming, sharding and k-fold selection come
free (`fit(X, Y)` is sugar for `fit_stats(GramStats().update(X, Y))`). Learned state: `coef_`
(d_out, d_in), `intercept_` (d_out,), so `transform(X) = X coef_ᵀ + b`. Task matrices use the
least-squares/ridge members; BiCo the Procrustes member, and the permutation re-basin baseline its
0/1 special case. All of them save to one safetensors format (`save` / `load_map`), and a saved
map loads back as the same class with the same parameters (`MAPS` names them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from .io import load_tensors, save_tensors
from .qr import QRStats
from .rows import Array, as_float64
from .solvers import (
    NULL_RTOL,
    Factors,
    _moments,
    cv_errors,
    permutation,
    procrustes,
    ridge_path,
)
from .stats import GramStats

__all__ = [
    "NotFittedError",
    "LinearMap",
    "LeastSquaresMap",
    "RidgeMap",
    "RidgeCVMap",
    "ProcrustesMap",
    "PermutationMap",
    "MAPS",
    "load_map",
    "identity_map",
    "DEFAULT_ALPHAS",
]

#: Ridge strengths tried by cross-validation, relative to the mean eigenvalue of XᵀX.
DEFAULT_ALPHAS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class NotFittedError(ValueError, AttributeError):
    """Raised when a map or estimator is used before `fit`."""


class LinearMap(RegressorMixin, BaseEstimator):
    """Base of the family: fit / fit_stats, transform, score (R²), save; subclasses give `_solve`.

    Learned: `coef_` (d_out, d_in), `intercept_` (d_out,), `n_samples_seen_`; subclasses may
    add scalars (e.g. `alpha_`) listed in `_learned`.
    """

    _learned: tuple[str, ...] = ()

    def __init__(self, *, fit_intercept: bool = False) -> None:
        self.fit_intercept = fit_intercept

    def fit(self, X: Array, Y: Array) -> LinearMap:
        """Fit on in-memory rows X (N, d_in), Y (N, d_out); returns self."""
        return self.fit_stats(GramStats(folds=self._folds()).update(X, Y))

    def _folds(self) -> int:
        return 0

    def _needs_gram(self) -> bool:
        return True

    def fit_stats(self, stats: GramStats, *, tie: np.ndarray | Factors | None = None) -> LinearMap:
        """Fit from accumulated statistics; resets any earlier fit and returns self.

        `tie`: a second signal's cross-covariance (d_in, d_out), or its `solvers.Factors`,
        that settles only what `stats` leaves open (ProcrustesMap; the other maps refuse it).
        """
        if stats.n == 0:
            raise ValueError("cannot fit a map on an empty dataset")
        mx, my, xx, xy = _moments(stats, self.fit_intercept, self._needs_gram())
        if tie is None:
            W = self._solve(xx, xy, stats)  # (d_in, d_out)
        elif isinstance(self, ProcrustesMap):
            tie = tie if isinstance(tie, Factors) else np.asarray(tie, dtype=np.float64)
            W = self._solve(xx, xy, stats, tie=tie)
        else:
            raise ValueError(f"{type(self).__name__} takes no tie-break statistics")
        self.coef_ = W.T.copy()
        self.intercept_ = np.zeros(W.shape[1]) if mx is None else my - mx @ W
        self.n_samples_seen_ = stats.n
        return self

    def _solve(self, xx: np.ndarray | None, xy: np.ndarray, stats: GramStats) -> np.ndarray:
        raise NotImplementedError

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coef_")

    def _check(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def transform(self, X: Array) -> Array:
        """Map rows X (N, d_in) -> (N, d_out); torch in, torch out (same device and dtype)."""
        self._check()
        if isinstance(X, torch.Tensor):
            W = torch.as_tensor(self.coef_, dtype=X.dtype, device=X.device)
            return X @ W.T + torch.as_tensor(self.intercept_, dtype=X.dtype, device=X.device)
        X = as_float64(X, "X")
        if X.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"X has {X.shape[1]} features but the map expects {self.coef_.shape[1]}"
            )
        return X @ self.coef_.T + self.intercept_

    predict = transform

    def score(self, X: Array, Y: Array) -> float:
        """Coefficient of determination R² of transform(X) against Y (1 is perfect)."""
        pred, Y = as_float64(self.transform(X), "prediction"), as_float64(Y, "Y")
        ss_res = ((Y - pred) ** 2).sum()
        ss_tot = ((Y - Y.mean(0)) ** 2).sum()
        return float(1 - ss_res / ss_tot) if ss_tot > 0 else float(ss_res == 0)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata) that rebuild this fitted map: the one format of the family."""
        self._check()
        tensors = {
            "coef": torch.from_numpy(np.ascontiguousarray(self.coef_)),
            "intercept": torch.from_numpy(np.ascontiguousarray(self.intercept_)),
        }
        learned = {k: getattr(self, k) for k in ("n_samples_seen_", *self._learned)}
        if hasattr(self, "cv_errors_"):
            tensors["cv_errors"] = torch.from_numpy(np.asarray(self.cv_errors_, dtype=np.float64))
        return tensors, {"class": type(self).__name__, "params": self.get_params(), **learned}

    @staticmethod
    def from_state(tensors: dict[str, torch.Tensor], meta: dict) -> LinearMap:
        """Inverse of `state`: the same class, parameters and learned values."""
        kind = MAPS.get(meta.get("class"))
        if kind is None:
            raise ValueError(f"unknown map class {meta.get('class')!r}; known: {sorted(MAPS)}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
        out = kind(**params)
        out.coef_, out.intercept_ = tensors["coef"].numpy(), tensors["intercept"].numpy()
        for k in ("n_samples_seen_", *kind._learned):
            setattr(out, k, meta[k])
        if "cv_errors" in tensors:
            out.cv_errors_ = tensors["cv_errors"].numpy()
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, **meta: object) -> None:
        """Write the fitted map and its parameters to a safetensors file (atomically); an
        existing `path` is replaced only if tasklift wrote it and `overwrite` is set."""
        tensors, info = self.state()
        save_tensors(path, tensors, {**info, **meta}, overwrite=overwrite)


def load_map(path: str | os.PathLike) -> LinearMap:
    """Read a map written by `LinearMap.save`, as the class that saved it."""
    tensors, info = load_tensors(path)
    return LinearMap.from_state(tensors, info)


def identity_map(d: int) -> LinearMap:
    """The map W = I (what least squares gives when X = Y): the head-only baseline's map."""
    m = LeastSquaresMap()
    m.coef_, m.intercept_, m.n_samples_seen_ = np.eye(d), np.zeros(d), 0
    return m


def check_solver(solver: str) -> None:
    """Refuse a least-squares route other than "gram" (from XᵀX) or "qr" (streamed QR)."""
    if solver not in ("gram", "qr"):
        raise ValueError(f"solver must be 'gram' or 'qr', not {solver!r}")


class LeastSquaresMap(LinearMap):
    """argmin ‖X W − Y‖², the paper's task matrix; minimum-norm when under-determined (N < d).

    Two routes: "gram" solves from XᵀX (`GramStats`: cheap, foldable for CV, but it squares the
    condition number, so directions with σ_min/σ_max below ~1e-7 are dropped); "qr" from a
    streamed QR of X (`QRStats`, or the one `GramStats(qr=True)` keeps: equal to
    numpy.linalg.lstsq however badly X is conditioned).

    Args:
        fit_intercept: also fit a bias (affine map); the reference task matrix has none.
        rcond: relative cutoff: eigenvalues of XᵀX (gram; default eps · d · 10) or singular
            values of X (qr; default eps · max(N, d), as lstsq) below it count as zero.
        solver: "gram" or "qr" (QRStats given to `fit_stats` are always solved by QR).
    """

    def __init__(
        self, *, fit_intercept: bool = False, rcond: float | None = None, solver: str = "gram"
    ) -> None:
        self.fit_intercept, self.rcond, self.solver = fit_intercept, rcond, solver

    def fit(self, X: Array, Y: Array) -> LinearMap:
        """Fit on in-memory rows X (N, d_in), Y (N, d_out) by `solver`; returns self."""
        if self.solver == "qr":
            return self.fit_stats(QRStats(fit_intercept=self.fit_intercept).update(X, Y))
        return super().fit(X, Y)

    def fit_stats(self, stats, *, tie=None) -> LinearMap:
        """Fit from `GramStats` (by `solver`: "qr" reads the QR they keep) or `QRStats`."""
        check_solver(self.solver)
        if isinstance(stats, GramStats) and self.solver == "qr":
            if stats.qr is None:
                raise ValueError(
                    "solver='qr' needs statistics that keep a QR: GramStats(qr=True) or QRStats"
                )
            stats = stats.qr
        if not isinstance(stats, QRStats):
            return super().fit_stats(stats, tie=tie)
        W = stats.solve(self.rcond, intercept=self.fit_intercept)
        self.coef_ = (W[:-1] if self.fit_intercept else W).T.copy()
        self.intercept_ = W[-1].copy() if self.fit_intercept else np.zeros(W.shape[1])
        self.n_samples_seen_ = stats.n
        return self

    def _solve(self, xx, xy, stats):
        return ridge_path(xx, xy, [0.0], self.rcond)[0]


class RidgeMap(LinearMap):
    """argmin ‖X W − Y‖² + λ‖W‖² with λ = alpha · trace(XᵀX)/d (a scale-free alpha).

    Args:
        alpha: relative ridge strength (0 is least squares).
        fit_intercept: also fit an unpenalised bias.
    """

    def __init__(self, *, alpha: float = 1e-3, fit_intercept: bool = False) -> None:
        self.alpha, self.fit_intercept = alpha, fit_intercept

    def _solve(self, xx, xy, stats):
        return ridge_path(xx, xy, [float(self.alpha)])[0]


class RidgeCVMap(LinearMap):
    """Ridge with alpha chosen by k-fold cross-validation on the statistics alone.

    Args:
        alphas: relative strengths to choose from; the choice lands in `alpha_`, the mean
            squared validation errors in `cv_errors_`.
        cv: folds used by `fit(X, Y)`; `fit_stats` uses the folds its statistics carry.
        fit_intercept: also fit an unpenalised bias.
    """

    _learned = ("alpha_",)

    def __init__(
        self,
        *,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        cv: int = 5,
        fit_intercept: bool = False,
    ) -> None:
        self.alphas, self.cv, self.fit_intercept = alphas, cv, fit_intercept

    def _folds(self) -> int:
        return self.cv

    def _solve(self, xx, xy, stats):
        self.cv_errors_ = cv_errors(stats, self.alphas, fit_intercept=self.fit_intercept)
        self.alpha_ = float(self.alphas[int(np.argmin(self.cv_errors_))])
        return ridge_path(xx, xy, [self.alpha_])[0]


class ProcrustesMap(LinearMap):
    """(Semi-)orthogonal R = argmax tr(Rᵀ XᵀY), i.e. argmin ‖X R − Y‖ (optionally centred, scaled).

    Needs only XᵀY (GramStats(gram=False) suffices) unless `scale` is set. `fit_stats(stats,
    tie=M)` lets a second signal's cross-covariance M settle the directions XᵀY leaves open
    (see `procrustes`); `null_dims_` counts them. Directions neither settles map to zero.

    Args:
        fit_intercept: centre X and Y first (covariances, not raw products) and fit a bias.
        scale: also fit one global scale s (similarity Procrustes).
        null_rtol: singular values at or below this fraction of the largest are null.
    """

    _learned = ("null_dims_",)

    def __init__(
        self, *, fit_intercept: bool = False, scale: bool = False, null_rtol: float = NULL_RTOL
    ) -> None:
        self.fit_intercept, self.scale, self.null_rtol = fit_intercept, scale, null_rtol

    def _needs_gram(self) -> bool:
        return self.scale

    def _solve(self, xx, xy, stats, tie=None):
        R, self.null_dims_ = procrustes(xy, tie, rtol=self.null_rtol)
        if self.scale:
            R = R * (np.einsum("ij,ij->", R, xy) / np.trace(xx))
        return R


class PermutationMap(LinearMap):
    """The 0/1 (partial) permutation maximising tr(Pᵀ XᵀY): re-basin by Hungarian matching.

    Args:
        groups: (g_in, g_out) contiguous groups (attention heads) matched first, then units.
        fit_intercept: centre X and Y first and fit a bias.
    """

    def __init__(
        self, *, groups: tuple[int, int] | None = None, fit_intercept: bool = False
    ) -> None:
        self.groups, self.fit_intercept = groups, fit_intercept

    def _needs_gram(self) -> bool:
        return False

    def _solve(self, xx, xy, stats):
        return permutation(xy, self.groups)


#: every member of the family, by class name (how saved maps are rebuilt)
MAPS: dict[str, type[LinearMap]] = {
    c.__name__: c for c in (LeastSquaresMap, RidgeMap, RidgeCVMap, ProcrustesMap, PermutationMap)
}
