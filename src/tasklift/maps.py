"""One solver family for linear maps between embedding spaces: least squares, ridge, ridge-CV,
Procrustes and permutation.

Every map is a scikit-learn estimator fitted from a `GramStats` (so streaming, sharding and
k-fold selection come free); `fit(X, Y)` is sugar for `fit_stats(GramStats().update(X, Y))`.
Learned state: `coef_` (d_out, d_in), `intercept_` (d_out,), so `transform(X) = X coef_ᵀ + b`.
Task matrices use the least-squares/ridge members; BiCo the Procrustes member, and the
permutation re-basin baseline its 0/1 special case. All of them save to one safetensors format
(`save` / `load_map`), and a saved map loads back as the same class with the same parameters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from .io import load_tensors, save_tensors
from .stats import Array, GramStats, QRStats, as_float64

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
    "procrustes",
    "permutation",
    "ridge_path",
    "cv_errors",
    "DEFAULT_ALPHAS",
]

#: Ridge strengths tried by cross-validation, relative to the mean eigenvalue of XᵀX.
DEFAULT_ALPHAS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class NotFittedError(ValueError, AttributeError):
    """Raised when a map or estimator is used before `fit`."""


def ridge_path(
    xx: np.ndarray, xy: np.ndarray, alphas: Sequence[float], rcond: float | None = None
) -> list[np.ndarray]:
    """Solve (XᵀX + λI) W = XᵀY for each relative strength, from one eigendecomposition.

    λ = alpha · trace(XᵀX)/d, so alphas are scale-free. alpha = 0 gives the minimum-norm
    least-squares solution: eigenvalues below rcond · max eigenvalue count as zero; rcond
    defaults to eps · d · 10. Forming XᵀX squares X's condition number, so directions with
    σ_min/σ_max below about 1e-7 are dropped where `numpy.linalg.lstsq` keeps them.

    Shapes: xx (d_in, d_in), xy (d_in, d_out) -> list of W (d_in, d_out).
    """
    evals, evecs = np.linalg.eigh(xx)
    top = max(evals[-1], 0.0)
    rcond = np.finfo(np.float64).eps * xx.shape[0] * 10 if rcond is None else rcond
    keep = evals > rcond * top
    proj = evecs.T @ xy  # (d_in, d_out) in the eigenbasis
    scale = np.trace(xx) / xx.shape[0]
    out = []
    for alpha in alphas:
        lam = alpha * scale
        inv = np.where(keep, 1.0 / np.where(keep, evals + lam, 1.0), 0.0)
        out.append(evecs @ (inv[:, None] * proj))
    return out


#: singular values of XᵀY at or below this fraction of the largest are its numerical null space:
#: float32 round-off of the captured signals, not information about the alignment
NULL_RTOL = 1e-6


def procrustes(
    xy: np.ndarray, tie: np.ndarray | None = None, *, rtol: float = NULL_RTOL
) -> tuple[np.ndarray, int]:
    """Orthogonal Procrustes: the R with RᵀR = I (or RRᵀ = I if wider) maximising tr(Rᵀ XᵀY),
    and how many of its directions XᵀY left open (singular values ≤ rtol·σ_max).

    This is argmin ‖X R − Y‖ over (semi-)orthogonal R; semi-orthogonal when d_in ≠ d_out. The
    open directions are arbitrary in plain Procrustes; with `tie` (a second signal's XᵀY, same
    shape) they, and only they, are chosen to maximise tr(Rᵀ tie): R keeps every direction XᵀY
    determines. Shapes: xy (d_in, d_out) -> R (d_in, d_out).
    """
    u, s, vt = np.linalg.svd(xy, full_matrices=tie is not None)
    k = min(xy.shape)
    r = int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    if tie is None or r == k:
        return u[:, :k] @ vt[:k], k - r
    un, vn = u[:, r:], vt[r:].T  # bases of the null spaces on either side
    q, _ = procrustes(un.T @ tie @ vn)  # the best (semi-)orthogonal map between them
    return u[:, :r] @ vt[:r] + un @ q @ vn.T, k - r


def _assign(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment maximising the summed score (rectangular: the smaller side is used)."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(score, maximize=True)


def permutation(xy: np.ndarray, groups: tuple[int, int] | None = None) -> np.ndarray:
    """The 0/1 (partial) permutation P maximising tr(Pᵀ XᵀY): Procrustes restricted to permutations.

    With `groups=(g_in, g_out)` (e.g. attention heads of A and B) the coordinates are split into
    that many contiguous groups, groups are matched first (each pair scored by its best unit
    matching), then units inside every matched pair: heads, then units.
    Shapes: xy (d_in, d_out) -> P (d_in, d_out), one 1 per row or column (whichever is fewer).
    """
    P = np.zeros_like(xy, dtype=np.float64)
    if groups is None:
        rows, cols = _assign(xy)
        P[rows, cols] = 1.0
        return P
    (ga, gb), (da, db) = groups, xy.shape
    if da % ga or db % gb:
        raise ValueError(f"cannot split a {xy.shape} map into {groups} groups of equal size")
    sa, sb = da // ga, db // gb
    block = lambda i, j: xy[i * sa : (i + 1) * sa, j * sb : (j + 1) * sb]  # noqa: E731
    best = np.zeros((ga, gb))
    for i in range(ga):
        for j in range(gb):
            r, c = _assign(block(i, j))
            best[i, j] = block(i, j)[r, c].sum()
    for i, j in zip(*_assign(best), strict=True):
        r, c = _assign(block(i, j))
        P[i * sa + r, j * sb + c] = 1.0
    return P


def _moments(stats: GramStats, fit_intercept: bool, gram: bool = True):
    """(mean_x, mean_y, XᵀX, XᵀY), centred when an intercept is fitted (means None otherwise);
    XᵀX is None unless `gram` (reading it from gram=False statistics raises a clear error)."""
    if gram and not stats.gram:
        raise ValueError(
            "these statistics were accumulated with gram=False (no XᵀX); least squares and "
            "ridge need GramStats(gram=True)"
        )
    if fit_intercept:
        return stats.centred()
    return None, None, (stats.xx if gram else None), stats.xy


def cv_errors(
    stats: GramStats, alphas: Sequence[float], *, fit_intercept: bool = False
) -> np.ndarray:
    """Mean squared validation error per alpha, by k-fold CV computed from the fold statistics.

    Raises:
        ValueError: the statistics were accumulated without folds (GramStats(folds=k), k ≥ 2).
    """
    if stats.folds < 2:
        raise ValueError(
            "cross-validation needs GramStats(folds=k) with k >= 2; "
            f"these statistics have folds={stats.folds}"
        )
    sse = np.zeros(len(alphas))
    for k in range(stats.folds):
        train, val = stats.without(k), stats.fold(k)
        mx, my, xx, xy = _moments(train, fit_intercept)
        for i, W in enumerate(ridge_path(xx, xy, alphas)):
            b = None if mx is None else my - mx @ W
            sse[i] += val.sse(W, b)
    return sse / (stats.n * stats.dims[1])


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

    def fit_stats(self, stats: GramStats, *, tie: np.ndarray | None = None) -> LinearMap:
        """Fit from accumulated statistics; resets any earlier fit and returns self.

        `tie`: a second signal's cross-covariance (d_in, d_out) that settles only what `stats`
        leaves open (ProcrustesMap; the other maps refuse it).
        """
        if stats.n == 0:
            raise ValueError("cannot fit a map on an empty dataset")
        mx, my, xx, xy = _moments(stats, self.fit_intercept, self._needs_gram())
        if tie is None:
            W = self._solve(xx, xy, stats)  # (d_in, d_out)
        elif isinstance(self, ProcrustesMap):
            W = self._solve(xx, xy, stats, tie=np.asarray(tie, dtype=np.float64))
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
    (see `procrustes`); `null_dims_` counts them.

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
