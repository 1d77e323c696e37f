import numpy as np
import pytest
import torch

from tasklift.maps import (
    LeastSquaresMap,
    NotFittedError,
    PermutationMap,
    ProcrustesMap,
    RidgeCVMap,
    RidgeMap,
    load_map,
)
from tasklift.solvers import cv_errors, permutation, procrustes, procrustes_svd, ridge_path
from tasklift.stats import GramStats

rng = np.random.default_rng(0)


def planted(n=500, d_in=20, d_out=7, noise=0.0, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, d_in))
    W = r.normal(size=(d_in, d_out))
    return X, W, X @ W + noise * r.normal(size=(n, d_out))


def test_planted_map_recovered():
    X, W, Y = planted()
    m = LeastSquaresMap().fit(X, Y)
    np.testing.assert_allclose(m.coef_.T, W, atol=1e-5)
    assert m.score(X, Y) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("n,d", [(300, 40), (25, 40)])  # over- and under-determined (min-norm)
def test_equals_numpy_lstsq(n, d):
    X, _, Y = planted(n=n, d_in=d, noise=0.5, seed=n)
    ref = np.linalg.lstsq(X, Y, rcond=None)[0]
    m = LeastSquaresMap().fit(X, Y)
    np.testing.assert_allclose(m.coef_.T, ref, atol=1e-6, rtol=1e-6)


def test_streamed_equals_one_shot_and_torch_reference():
    X, _, Y = planted(n=400, noise=0.3)
    s = GramStats(folds=3)
    for i in range(0, 400, 37):  # uneven batches
        s.update(torch.from_numpy(X[i : i + 37]), Y[i : i + 37])
    assert s.n == 400
    streamed = LeastSquaresMap().fit_stats(s).coef_
    one_shot = LeastSquaresMap().fit(X, Y).coef_
    ref = torch.linalg.lstsq(torch.from_numpy(X), torch.from_numpy(Y)).solution.numpy()
    np.testing.assert_allclose(streamed, one_shot, atol=1e-10)
    np.testing.assert_allclose(streamed.T, ref, atol=1e-8)


def test_affine_matches_lstsq_with_bias_column():
    X, _, Y = planted(noise=0.2)
    Y = Y + np.arange(Y.shape[1])
    m = LeastSquaresMap(fit_intercept=True).fit(X, Y)
    ref = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), Y, rcond=None)[0]
    np.testing.assert_allclose(m.coef_.T, ref[:-1], atol=1e-8)
    np.testing.assert_allclose(m.intercept_, ref[-1], atol=1e-8)


def test_ridge_closed_form_and_scale_free_alpha():
    X, _, Y = planted(noise=0.5)
    alpha = 0.3
    lam = alpha * np.trace(X.T @ X) / X.shape[1]
    ref = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ Y)
    np.testing.assert_allclose(RidgeMap(alpha=alpha).fit(X, Y).coef_.T, ref, atol=1e-8)
    np.testing.assert_allclose(RidgeMap(alpha=alpha).fit(10 * X, Y).coef_.T * 10, ref, atol=1e-8)


def test_cv_matches_explicit_folds():
    X, _, Y = planted(n=120, d_in=30, noise=1.0)
    s = GramStats(folds=4).update(X, Y)
    alphas = [0.0, 0.1, 1.0]
    errs = cv_errors(s, alphas)
    fold = np.arange(120) % 4
    ref = np.zeros(3)
    for k in range(4):
        tr, va = fold != k, fold == k
        for i, W in enumerate(ridge_path(X[tr].T @ X[tr], X[tr].T @ Y[tr], alphas)):
            ref[i] += ((X[va] @ W - Y[va]) ** 2).sum()
    np.testing.assert_allclose(errs, ref / Y.size, rtol=1e-8)
    m = RidgeCVMap(alphas=alphas).fit_stats(s)
    assert m.alpha_ == alphas[int(np.argmin(errs))]


def test_ridge_cv_removes_double_descent():
    # N close to d: plain least squares interpolates noise; CV picks a ridge that generalises.
    X, W, Y = planted(n=60, d_in=55, noise=1.0, seed=3)
    Xt, _, Yt = planted(n=500, d_in=55, noise=1.0, seed=4)
    Yt = Xt @ W + np.random.default_rng(4).normal(size=Yt.shape)
    s = GramStats(folds=5).update(X, Y)
    plain = LeastSquaresMap().fit_stats(s).score(Xt, Yt)
    cv = RidgeCVMap(alphas=[0.0, 0.01, 0.1, 1.0]).fit_stats(s).score(Xt, Yt)
    assert cv > plain + 0.1


def test_procrustes_orthogonal_and_recovers_rotation():
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    X = rng.normal(size=(200, 16))
    m = ProcrustesMap().fit(X, X @ q)
    np.testing.assert_allclose(m.coef_ @ m.coef_.T, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(m.coef_.T, q, atol=1e-8)


def test_procrustes_semi_orthogonal_for_width_mismatch():
    wide, _ = procrustes(rng.normal(size=(8, 12)))  # d_in < d_out: orthonormal rows
    tall, _ = procrustes(rng.normal(size=(12, 8)))  # d_in > d_out: orthonormal columns
    np.testing.assert_allclose(wide @ wide.T, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(tall.T @ tall, np.eye(8), atol=1e-10)


@pytest.mark.parametrize("spread, tol", [(1e-2, 1e-12), (1e-4, 1e-9), (2e-6, 1e-5)])
@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_procrustes_equals_the_svd_definition(spread, tol, shape):
    """The Gram-eigendecomposition route agrees with U Vᵀ of the SVD, and is exactly
    (semi-)orthogonal, for singular values spanning 1e-2 to 2e-6."""
    k = min(shape)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
    xy = (u * np.logspace(0, np.log10(spread), k)) @ v.T
    R, open_dims = procrustes(xy)
    want = procrustes_svd(xy)
    assert open_dims == 0
    assert np.linalg.norm(R - want) / np.linalg.norm(want) < tol
    gram = R @ R.T if shape[0] < shape[1] else R.T @ R
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-10)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_procrustes_at_a_coarse_cutoff_is_isometric_without_the_newton_schulz_step(shape):
    """rtol = 1e-3 (BiCo's default) skips the Newton-Schulz step: R is still the SVD
    definition's and a partial isometry to 1e-9, with singular values just above the cutoff
    (2e-3) kept and those below (5e-4) mapped to zero, and the tie's part too."""
    k = min(shape)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
    s = np.r_[np.logspace(0, np.log10(2e-3), k - 5), np.full(5, 5e-4)]
    xy, tie = (u * s) @ v.T, rng.normal(size=shape)
    R, open_dims = procrustes(xy, tie, rtol=1e-3)
    assert open_dims == 5
    np.testing.assert_allclose(R, procrustes_svd(xy, tie, rtol=1e-3), atol=1e-9)
    np.testing.assert_allclose(R @ R.T @ R, R, atol=1e-9)


def test_procrustes_trusting_directions_below_float32_round_off_takes_the_full_svd():
    """rtol below 1e-6 (directions the Gram's σ² cannot resolve, trusted only when A's and B's
    activations agree bit for bit): R is the SVD definition's, down to σ = 1e-10."""
    u, _ = np.linalg.qr(rng.normal(size=(30, 20)))
    v, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    xy = (u * np.logspace(0, -10, 20)) @ v.T
    R, open_dims = procrustes(xy, rtol=1e-12)
    assert open_dims == 0
    np.testing.assert_allclose(R, procrustes_svd(xy, rtol=1e-12), atol=1e-6)  # eps / 1e-10
    np.testing.assert_allclose(R.T @ R, np.eye(20), atol=1e-12)
    assert procrustes(xy)[1] == 8  # the default cutoff: σ ≤ 1e-6 open, mapped to zero


def _tie_case(shape, tie_rank):
    """XᵀY of rank 12 and a tie of `tie_rank` (0: none at all), of one shape."""
    x, y = rng.normal(size=(12, shape[0])), rng.normal(size=(12, shape[1]))
    if tie_rank == 0:
        return x.T @ y, np.zeros(shape)
    x2, y2 = rng.normal(size=(tie_rank, shape[0])), rng.normal(size=(tie_rank, shape[1]))
    return x.T @ y, x2.T @ y2


@pytest.mark.parametrize("shape", [(20, 32), (32, 20), (24, 24)])
@pytest.mark.parametrize("tie_rank", [40, 4, 0], ids=["full-tie", "low-rank-tie", "zero-tie"])
def test_procrustes_tie_settles_only_the_open_directions(shape, tie_rank):
    """Rank-deficient XᵀY (rank 12): R is the full-SVD definition's, optimal for XᵀY and, within
    the open directions, for the tie; what neither determines maps to zero, so R is a partial
    isometry (RRᵀR = R) of rank 12 + what the tie settles."""
    xy, tie = _tie_case(shape, tie_rank)
    R, open_dims = procrustes(xy, tie)
    want = procrustes_svd(xy, tie)
    k = min(shape)
    assert open_dims == k - 12
    np.testing.assert_allclose(R, want, atol=1e-9)
    np.testing.assert_allclose(R @ R.T @ R, R, atol=1e-10)
    assert np.linalg.matrix_rank(R, tol=1e-6) == 12 + min(tie_rank, k - 12)
    np.testing.assert_allclose(np.trace(R.T @ xy), np.linalg.svd(xy, compute_uv=False).sum())


def _factored(left: np.ndarray, right: np.ndarray, made: list | None = None):
    from tasklift.solvers import Factors

    def make():
        (made if made is not None else []).append(1)
        return torch.from_numpy(left), torch.from_numpy(right)

    return Factors(left @ right, left.shape[1], make)


@pytest.mark.parametrize("shape", [(20, 32), (32, 20), (300, 280)])
@pytest.mark.parametrize("tie_rank", [4, 40], ids=["q4", "q40"])
def test_procrustes_with_a_factored_tie_equals_the_dense_tie(shape, tie_rank):
    """A tie given as Factors (rank q) gives the dense tie's R, the full-SVD definition's:
    solved at rank q where more directions are open than q (the factors are made), from the
    dense matrix otherwise; slicing and transposing slice and transpose both."""
    xy, _ = _tie_case(shape, 0)
    g = np.random.default_rng(11)
    left, right = g.normal(size=(shape[0], tie_rank)), g.normal(size=(tie_rank, shape[1]))
    made = []
    R, open_dims = procrustes(xy, _factored(left, right, made))
    tie = left @ right
    np.testing.assert_allclose(R, procrustes(xy, tie)[0], atol=1e-9)
    np.testing.assert_allclose(R, procrustes_svd(xy, tie), atol=1e-9)
    assert open_dims == min(shape) - 12 and len(made) == (tie_rank < open_dims)
    f, rows, cols = _factored(left, right), slice(2, 9), slice(1, 15)
    for part, want in ((f[rows, cols], tie[rows, cols]), (f.T, tie.T)):
        np.testing.assert_allclose(part.dense, want)
        np.testing.assert_allclose((part.make()[0] @ part.make()[1]).numpy(), want, atol=1e-12)


def test_a_factored_tie_keeps_the_cutoff_relative_to_the_whole_tie():
    """Most of the tie lies in the directions XᵀY determines (projected out); of the rest, the
    open directions whose singular values fall between 1e-3 of the remainder's largest and 1e-3
    of the whole tie's largest stay open (mapped to zero), as in the full-SVD definition; the
    factors repeat a column (rank-deficient), which changes nothing."""
    xy, _ = _tie_case((60, 80), 0)  # rank 12: 48 directions open, more than the tie's rank
    u, _, vt = np.linalg.svd(xy)
    inside = 100 * u[:, :12] @ np.diag(np.linspace(1, 2, 12)) @ vt[:12]
    spread = np.array([1.0, 0.05, 0.02, 5e-4])  # 0.05 and 0.02: open by the whole tie's 0.2
    left = np.hstack([u[:, :12] * 100, u[:, 12:16] * spread, u[:, 12:13]])
    right = np.vstack([np.diag(np.linspace(1, 2, 12)) @ vt[:12], vt[12:16], 0 * vt[12:13]])
    np.testing.assert_allclose(left @ right, inside + u[:, 12:16] @ np.diag(spread) @ vt[12:16])
    made = []
    R = procrustes(xy, _factored(left, right, made), rtol=1e-3)[0]
    want = procrustes_svd(xy, left @ right, rtol=1e-3)
    np.testing.assert_allclose(R, want, atol=1e-9)
    assert made and np.linalg.matrix_rank(R, tol=1e-6) == 13  # 12 determined + 1 settled


@pytest.mark.parametrize("case", ["random", "transposed", "orthogonal", "rank-1", "zero", "small"])
def test_largest_singular_value_by_lanczos_equals_the_svds(case):
    """`_top` takes Lanczos from LANCZOS_MIN rows up: to round-off of numpy's SVD, also where
    every singular value ties (an orthogonal matrix) or one alone is non-zero."""
    from tasklift.solvers import LANCZOS_MIN, _top

    g = np.random.default_rng(3)
    n = LANCZOS_MIN + 44
    m = {
        "random": lambda: g.normal(size=(n, n + 100)),
        "transposed": lambda: g.normal(size=(n + 100, n)),
        "orthogonal": lambda: 3.0 * np.linalg.qr(g.normal(size=(n, n)))[0],
        "rank-1": lambda: np.outer(g.normal(size=n), g.normal(size=n + 7)),
        "tiny": lambda: 1e-200 * g.normal(size=(n, n)),
        "zero": lambda: np.zeros((n, n)),
        "small": lambda: g.normal(size=(20, 30)),
    }[case]()
    want = np.linalg.svd(m, compute_uv=False)[0] if m.any() else 0.0
    assert _top(torch.from_numpy(m)) == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_procrustes_with_a_tie_at_lanczos_widths_equals_the_svd_definition():
    xy, tie = _tie_case((300, 280), 40)
    np.testing.assert_allclose(procrustes(xy, tie)[0], procrustes_svd(xy, tie), atol=1e-9)


@pytest.mark.parametrize("tie_rank", [None, 4, "inside"], ids=["no-tie", "low-rank", "inside"])
def test_procrustes_is_stable_where_no_signal_determines_a_direction(tie_rank):
    """Perturbing XᵀY (and the tie) by 1e-10 of their size, as float summation order does, moves
    R by about that much even where 8 directions are open to every signal: they map to zero
    instead of to a basis that round-off picks (which moved R by O(1)). A tie that lies inside
    the directions XᵀY determines ("inside") has only round-off in the open ones: it settles
    none of them (its cutoff is relative to its own size, not to that round-off's)."""
    xy, tie = _tie_case((24, 32), 0 if tie_rank in (None, "inside") else tie_rank)
    if tie_rank == "inside":
        u, _, vt = np.linalg.svd(xy)
        tie = u[:, :12] @ rng.normal(size=(12, 12)) @ vt[:12]
    tie = None if tie_rank is None else tie
    R = procrustes(xy, tie)[0]
    assert np.linalg.matrix_rank(R, tol=1e-6) == (16 if tie_rank == 4 else 12)
    noise = np.random.default_rng(7)
    shake = lambda m: m + 1e-10 * np.abs(m).max() * noise.normal(size=m.shape)  # noqa: E731
    for _ in range(3):
        R2 = procrustes(shake(xy), None if tie is None else shake(tie))[0]
        assert np.abs(R2 - R).max() < 1e-6


@pytest.mark.parametrize(
    "m",
    [
        LeastSquaresMap(fit_intercept=True, rcond=1e-12),
        RidgeMap(alpha=0.1),
        RidgeCVMap(alphas=(0.0, 0.1), cv=3),
        ProcrustesMap(scale=True),
        PermutationMap(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_save_load_round_trip_keeps_class_parameters_and_learned_values(m, tmp_path):
    """One format for the whole family: the same class, parameters and learned state come back."""
    X, _, Y = planted(noise=0.1)
    m.fit(X, Y)
    m.save(tmp_path / "m.safetensors")
    back = load_map(tmp_path / "m.safetensors")
    assert type(back) is type(m) and back.get_params() == m.get_params()
    np.testing.assert_array_equal(back.transform(X), m.transform(X))
    if isinstance(m, RidgeCVMap):
        assert back.alpha_ == m.alpha_ and np.array_equal(back.cv_errors_, m.cv_errors_)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_errors_are_clear(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        LeastSquaresMap().transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        GramStats().update(np.array([[np.nan, 1.0]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="empty"):
        LeastSquaresMap().fit_stats(GramStats())
    with pytest.raises(ValueError, match="rows"):
        GramStats().update(np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="folds"):
        RidgeCVMap(alphas=[0.1, 1.0]).fit_stats(
            GramStats().update(np.ones((5, 2)), np.ones((5, 2)))
        )
    with pytest.raises(ValueError, match="features"):
        LeastSquaresMap().fit(np.eye(3), np.eye(3)).transform(np.ones((1, 4)))
    with pytest.raises(FileNotFoundError):
        load_map(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="gram=False"):
        LeastSquaresMap().fit_stats(GramStats(gram=False).update(np.eye(3), np.eye(3)))


def test_torch_transform_keeps_dtype():
    X, _, Y = planted()
    m = LeastSquaresMap().fit(X, Y)
    out = m.transform(torch.from_numpy(X).float())
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), Y, atol=1e-3)


def test_permutation_recovers_a_permutation_and_is_partial_when_rectangular():
    X = rng.normal(size=(200, 6))
    perm = np.eye(6)[rng.permutation(6)]
    np.testing.assert_array_equal(permutation(X.T @ (X @ perm)), perm)
    P = permutation(rng.normal(size=(4, 7)))  # every source unit used once, 3 target units unused
    np.testing.assert_array_equal(P.sum(1), np.ones(4))
    assert P.sum() == 4 and P.max() == 1


def test_permutation_matches_heads_then_units():
    """Heads (groups of 3 units) are permuted as blocks and units inside each head: both found."""
    X = rng.normal(size=(300, 6))
    heads = np.kron(np.eye(2)[[1, 0]], np.eye(3))  # swap the two heads
    units = np.kron(np.eye(2), np.eye(3)[[2, 0, 1]])  # rotate units inside each head
    perm = heads @ units
    np.testing.assert_array_equal(permutation(X.T @ (X @ perm), groups=(2, 2)), perm)
    with pytest.raises(ValueError, match="groups"):
        permutation(np.eye(6), groups=(4, 2))


@pytest.mark.parametrize("rows", [0, 1, 3, 7, 64])
def test_the_blocked_gram_is_the_lower_triangle_eigh_reads(rows):
    """`_lower_gram` (row blocks, nothing above the diagonal computed) has m mᵀ's lower
    triangle, above it m mᵀ's entries or zeros (the blocks never computed), and m mᵀ's
    eigendecomposition; a transposed (strided) m too, as the tall-input route passes it."""
    import torch

    from tasklift.solvers import _lower_gram

    m = torch.from_numpy(np.random.default_rng(rows).normal(size=(rows, 5)))
    got, full = _lower_gram(m), m @ m.T
    torch.testing.assert_close(torch.tril(got), torch.tril(full), rtol=0, atol=1e-12)
    upper = torch.triu(got, 1)
    above = torch.triu(full, 1)
    torch.testing.assert_close(torch.where(upper == 0, above, upper), above, rtol=0, atol=1e-12)
    if rows >= 8:  # blocks of 2 rows and more: some never computed
        assert (upper == 0).sum() > rows * (rows - 1) // 4
    lam, u = torch.linalg.eigh(got)
    torch.testing.assert_close((u * lam) @ u.T, full, rtol=0, atol=1e-10)
    tall = torch.from_numpy(np.random.default_rng(rows).normal(size=(5, rows))).T  # strided
    torch.testing.assert_close(torch.tril(_lower_gram(tall)), torch.tril(tall @ tall.T))
