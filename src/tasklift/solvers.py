"""The closed-form solvers behind the map family, as plain functions of accumulated statistics:
the ridge path from one eigendecomposition of XᵀX (least squares is its alpha = 0 member), k-fold
cross-validation errors computed from fold statistics alone, orthogonal Procrustes from XᵀY (with
a second signal settling only the directions XᵀY leaves open) and its 0/1 special case, the
Hungarian permutation. They hold the numerics, apart from any estimator state, so
`tasklift.maps` can wrap each one as a scikit-learn estimator and the tests can check each one
against its definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from .stats import GramStats

__all__ = [
    "ridge_path",
    "cv_errors",
    "procrustes",
    "procrustes_svd",
    "permutation",
    "Factors",
    "NULL_RTOL",
]


def eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending eigenvalues and eigenvectors of a symmetric float64 matrix, by torch's LAPACK
    (MKL in the CPU wheels: 1.5x numpy's OpenBLAS at d = 1536, the solves' largest cost)."""
    lam, u = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)))
    return lam.numpy(), u.numpy()


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
    evals, evecs = eigh(xx)
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

#: the weakest direction (σ / σ_max) `procrustes` resolves from the Gram M Mᵀ, whose eigenvalues
#: are σ²: below it the full SVD is used (slower at LLM widths)
GRAM_RTOL = 1e-6
#: from this cutoff up the Gram route's R is a (partial) isometry to about eps / rtol² (2e-10;
#: 9e-12 measured on the MiniLM-L6 -> L3 maps) without the Newton-Schulz step, which two
#: products of R's size would buy back: 20% of BiCo's solves on that pair
ISOMETRIC_RTOL = 1e-3


def _cutoff(s: np.ndarray, rtol: float, top: float | None) -> int:
    """How many of the descending singular values `s` exceed rtol · top (top: s's largest)."""
    top = (s[0] if s.size else 0.0) if top is None else top
    return int((s > rtol * top).sum()) if top > 0 else 0


#: below this many rows a Gram's eigenvalues are all taken at once (Lanczos pays off above it)
LANCZOS_MIN = 256


def _top(m: torch.Tensor) -> float:
    """The largest singular value of m (float64), from its smaller Gram: by Lanczos (ARPACK's
    eigsh from a seeded start on m scaled to entries of at most 1, at most 300 iterations, never
    forming the Gram: 0.035 s against 0.3 s for all its eigenvalues at d = 1536, equal to 3e-16
    on MiniLM's ties), or from all the Gram's eigenvalues under LANCZOS_MIN rows or when
    Lanczos fails."""
    m = m if m.shape[0] <= m.shape[1] else m.T
    size = float(m.abs().max()) if m.numel() else 0.0
    if size == 0.0:
        return 0.0
    m = m / size
    if m.shape[0] >= LANCZOS_MIN:
        from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

        n = m.shape[0]
        gram = LinearOperator(
            (n, n), matvec=lambda x: (m @ (m.T @ torch.from_numpy(x.ravel()))).numpy(), dtype=float
        )
        start = np.random.default_rng(0).standard_normal(n)
        try:
            lam = eigsh(gram, k=1, which="LA", v0=start, tol=0, maxiter=300,
                        return_eigenvectors=False)[0]  # fmt: skip
            return size * float(np.sqrt(max(lam, 0.0)))
        except ArpackError:  # no convergence (a subclass) or a degenerate start
            pass
    return size * float(torch.linalg.eigvalsh(m @ m.T)[-1].clamp_min(0.0).sqrt())


@dataclass(frozen=True, eq=False)
class Factors:
    """A tie-break matrix of low rank (a linear layer's output cross-covariance: d_in + 1):
    `dense` (m, n) as given, and `make()` -> float64 (left (m, rank), right (rank, n)) with
    left @ right = dense, made only where `procrustes` solves at that inner width (more
    directions open than it)."""

    dense: np.ndarray | torch.Tensor
    rank: int
    make: Callable[[], tuple[torch.Tensor, torch.Tensor]]

    @property
    def T(self) -> Factors:
        """The transpose, factors swapped and transposed."""
        return Factors(self.dense.T, self.rank, lambda: tuple(t.T for t in self.make()[::-1]))

    def __getitem__(self, index: tuple[slice, slice]) -> Factors:
        """A block (rows, cols): the left factor's rows, the right one's columns."""
        rows, cols = index

        def make():
            left, right = self.make()
            return left[rows], right[:, cols]

        return Factors(self.dense[rows, cols], self.rank, make)


def _top_factors(left: torch.Tensor, right: torch.Tensor) -> float:
    """The largest singular value of left @ right, from the triangular factors of their QRs."""
    r = torch.linalg.qr(left, mode="r")[1] @ torch.linalg.qr(right.T, mode="r")[1].T
    return float(torch.linalg.matrix_norm(r, ord=2)) if r.numel() else 0.0


def _procrustes_factors(p: torch.Tensor, m: torch.Tensor, rtol: float, top: float):
    """`procrustes` of p @ m (p (k, q), m (q, n)) without a tie, as factors (left, right):
    with p = Q₁R₁ and mᵀ = Q₂R₂, p m = Q₁ (R₁R₂ᵀ) Q₂ᵀ, so the SVD of the q x q core serves."""
    q1, r1 = torch.linalg.qr(p)
    q2, r2 = torch.linalg.qr(m.T)
    u, s, vt = torch.linalg.svd(r1 @ r2.T)
    c = _cutoff(s.numpy(), rtol, top)
    return q1 @ u[:, :c], vt[:c] @ q2.T


def procrustes(
    xy: np.ndarray, tie: np.ndarray | Factors | None = None, *, rtol: float = NULL_RTOL, top=None
) -> tuple[np.ndarray, int]:
    """Orthogonal Procrustes: the R maximising tr(Rᵀ XᵀY) over ‖R‖₂ ≤ 1 with the least norm, and
    how many of its directions XᵀY left open (singular values ≤ rtol·σ_max, or rtol·`top`).

    Where XᵀY has full rank this is the (semi-)orthogonal U Vᵀ, argmin ‖X R − Y‖. Directions it
    leaves open are settled by `tie` (a second signal's XᵀY, same shape, dense or as `Factors`:
    then solved at its rank without a Gram of the open directions), and only they: R keeps
    every direction XᵀY determines; the tie's part there counts only above rtol × the tie's own
    largest singular value. Directions that neither determines are mapped to zero (R is then a
    partial isometry, RRᵀR = R): any completion there would be a basis picked by round-off, so
    a τ carried by R would change with the summation order of the statistics.
    R = (M Mᵀ)^(-1/2) M from the eigendecomposition of the smaller Gram M Mᵀ (4-5x faster than
    an SVD of M at LLM widths; within 1e-9 of it for spectra spanning 1e-4, 1e-5 relative for
    2e-6: `tests/test_maps.py`), then, for rtol below ISOMETRIC_RTOL (or a `top` below σ_max,
    which loosens that bound), one Newton-Schulz step that restores exact (partial) isometry;
    for rtol below GRAM_RTOL, `procrustes_svd`.
    Shapes: xy (d_in, d_out) -> R.
    """
    if rtol < GRAM_RTOL:  # the Gram squares σ: it cannot resolve directions this weak
        s = np.linalg.svd(xy, compute_uv=False)
        tie = tie.dense if isinstance(tie, Factors) else tie
        return procrustes_svd(xy, tie, rtol=rtol, top=top), min(xy.shape) - _cutoff(s, rtol, top)
    if isinstance(tie, Factors):
        tie = Factors(_float64(tie.dense), tie.rank, tie.make)
    elif tie is not None:
        tie = _float64(tie)
    R, open_dims = _procrustes_gram(_float64(xy), tie, rtol, top)
    return R.numpy(), open_dims


def _float64(m: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float64 tensor of its own (a copy: any strides, read-only arrays too)."""
    if isinstance(m, torch.Tensor):
        return m.to(torch.float64, copy=True)
    return torch.from_numpy(np.array(m, dtype=np.float64))


def _procrustes_gram(
    xy: torch.Tensor, tie: torch.Tensor | Factors | None, rtol: float, top: float | None
) -> tuple[torch.Tensor, int]:
    """`procrustes` by the Gram route, in torch float64: one library's threads (torch's
    LAPACK for the eigendecompositions, so its BLAS for the products too; numpy's OpenBLAS
    threads idling beside them slowed the solves)."""
    if xy.shape[0] > xy.shape[1]:  # work on the wide side: the Gram is the smaller one
        R, open_dims = _procrustes_gram(xy.T, None if tie is None else tie.T, rtol, top)
        return R.T, open_dims
    k = xy.shape[0]
    lam, u = torch.linalg.eigh(_lower_gram(xy))
    lam, u = lam.flip(0), u.flip(1)  # descending, as singular values
    s = lam.clamp_min(0.0).sqrt()
    r = _cutoff(s.numpy(), rtol, top)
    vt_r = (u[:, :r].T @ xy) / s[:r, None]  # Vᵀ of the determined directions
    R = u[:, :r] @ vt_r
    if r < k and tie is not None:  # the open directions: tie's best map between the null spaces
        un = u[:, r:]
        if isinstance(tie, Factors) and tie.rank < k - r:  # solved at the tie's low rank
            left, right = (t.to(torch.float64) for t in tie.make())
            p, m = un.T @ left, right - (right @ vt_r.T) @ vt_r
            left, right = _procrustes_factors(p, m, rtol, _top_factors(left, right))
            R = R + (un @ left) @ right
        else:
            tie = tie.dense if isinstance(tie, Factors) else tie
            d = un.T @ tie  # tie, seen from A's null space into B's (cheap when few are open)
            d = d - (d @ vt_r.T) @ vt_r
            R = R + un @ _procrustes_gram(d, None, rtol, _top(tie))[0]
    if rtol >= ISOMETRIC_RTOL and (top is None or top >= s[0]):
        return R, k - r
    return 1.5 * R - 0.5 * (R @ R.T) @ R, k - r


#: row blocks of `_lower_gram`: 4 computes 5/8 of the full product (0.6x its time at d = 1536)
GRAM_BLOCKS = 4


def _lower_gram(m: torch.Tensor) -> torch.Tensor:
    """m mᵀ's lower triangle, by row blocks (the blocks above the diagonal are left zero, never
    computed: `torch.linalg.eigh` reads only the lower triangle)."""
    k = m.shape[0]
    gram = m.new_zeros((k, k))
    for lo, hi in pairwise([k * i // GRAM_BLOCKS for i in range(GRAM_BLOCKS + 1)]):
        torch.mm(m[lo:hi], m[:hi].T, out=gram[lo:hi, :hi])
    return gram


def procrustes_svd(
    xy: np.ndarray, tie: np.ndarray | None = None, *, rtol: float = NULL_RTOL, top=None
) -> np.ndarray:
    """`procrustes` by its definition, from full SVDs (the open directions mapped between
    explicit null bases of both sides, the rest to zero): the reference, slow at LLM widths."""
    u, s, vt = np.linalg.svd(xy, full_matrices=tie is not None)
    k = min(xy.shape)
    r = _cutoff(s, rtol, top)
    R = u[:, :r] @ vt[:r]
    if tie is None or r == k:
        return R
    un, vn = u[:, r:], vt[r:].T  # bases of the null spaces on either side
    inner = procrustes_svd(un.T @ tie @ vn, rtol=rtol, top=_top(_float64(tie)))
    return R + un @ inner @ vn.T


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


def mean_cv_error(stats: GramStats) -> float:
    """The k-fold CV error (as `cv_errors` measures it) of predicting each held-out fold by the
    other folds' mean of Y: the floor any fitted map must beat to carry information."""
    sse = 0.0
    for k in range(stats.folds):
        train, val = stats.without(k), stats.fold(k)
        mu = train.sy / train.n
        sse += val.yy - 2 * float(mu @ val.sy) + val.n * float(mu @ mu)
    return sse / (stats.n * stats.dims[1])
