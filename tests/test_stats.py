import numpy as np
import pytest

from tasklift.stats import GramStats


def test_merge_of_shards_equals_single_pass():
    r = np.random.default_rng(1)
    X, Y = r.normal(size=(90, 5)), r.normal(size=(90, 3))
    whole = GramStats().update(X, Y)
    a, b = GramStats().update(X[:40], Y[:40]), GramStats().update(X[40:], Y[40:])
    merged = a.merge(b)
    for name in ("xx", "xy", "sx", "sy", "yy", "n"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)


def test_folds_do_not_depend_on_batching():
    r = np.random.default_rng(2)
    X, Y = r.normal(size=(50, 4)), r.normal(size=(50, 2))
    one = GramStats(folds=3).update(X, Y)
    many = GramStats(folds=3)
    for i in range(0, 50, 7):
        many.update(X[i : i + 7], Y[i : i + 7])
    for k in range(3):
        np.testing.assert_allclose(one.fold(k).xx, many.fold(k).xx)
        np.testing.assert_allclose(one.fold(k).xx + one.without(k).xx, one.xx)


def test_sse_from_stats_equals_direct():
    r = np.random.default_rng(3)
    X, Y = r.normal(size=(30, 4)), r.normal(size=(30, 2))
    W, b = r.normal(size=(4, 2)), r.normal(size=2)
    s = GramStats().update(X, Y)
    assert s.sse(W, b) == pytest.approx(((X @ W + b - Y) ** 2).sum(), rel=1e-10)


def test_state_dict_round_trip():
    r = np.random.default_rng(4)
    s = GramStats(folds=2).update(r.normal(size=(10, 3)), r.normal(size=(10, 2)))
    back = GramStats.from_state_dict(s.state_dict())
    np.testing.assert_array_equal(back.xy, s.xy)
    assert back.n == 10 and back.folds == 2


def test_width_change_between_batches_is_refused():
    s = GramStats().update(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="earlier batches"):
        s.update(np.ones((2, 4)), np.ones((2, 2)))


def test_gram_stats_keep_a_qr_that_solves_as_lstsq_with_cv_folds_intact():
    from tasklift.maps import LeastSquaresMap

    rng = np.random.default_rng(1)
    n, d = 300, 20
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (u * np.logspace(0, -8, d)) @ v.T + 2.0  # XᵀX's condition ~1e16; not centred
    Y = X @ rng.normal(size=(d, 3))
    s = GramStats(folds=3, qr=True)
    for i in range(0, n, 7):  # batches smaller than d: buffered before each QR
        s.update(X[i : i + 7], Y[i : i + 7], index=np.arange(i, min(i + 7, n)))
    want = np.linalg.lstsq(X, Y, rcond=None)[0]
    got = LeastSquaresMap(solver="qr").fit_stats(s).coef_.T
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6
    aff = LeastSquaresMap(solver="qr", fit_intercept=True).fit_stats(s)
    ref = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), Y, rcond=None)[0]
    both = np.vstack([aff.coef_.T, aff.intercept_])
    assert np.linalg.norm(both - ref) / np.linalg.norm(ref) < 1e-6
    assert s.fold(0).qr is None and s.fold(0).n == 100  # folds stay Gram-only views
    back = GramStats.from_state_dict(s.state_dict())
    np.testing.assert_array_equal(LeastSquaresMap(solver="qr").fit_stats(back).coef_.T, got)
    merged = (
        GramStats(folds=3, qr=True)
        .update(X[:150], Y[:150])
        .merge(GramStats(folds=3, qr=True).update(X[150:], Y[150:], index=np.arange(150, n)))
    )
    got2 = LeastSquaresMap(solver="qr").fit_stats(merged).coef_.T
    assert np.linalg.norm(got2 - want) / np.linalg.norm(want) < 1e-6
    with pytest.raises(ValueError, match="keep a QR"):
        LeastSquaresMap(solver="qr").fit_stats(GramStats().update(X, Y))


@pytest.mark.parametrize("bias", ["both", "x", "y", "none"])
def test_mapped_statistics_equal_those_of_the_mapped_rows(bias):
    """The statistics of (x W_xᵀ + b_x, y W_yᵀ + b_y), from those of (x, y) alone, per fold."""
    import torch

    r = np.random.default_rng(4)
    X, Y = r.normal(size=(40, 4)), r.normal(size=(40, 3))
    wx, wy = r.normal(size=(6, 4)), r.normal(size=(2, 3))
    bx = r.normal(size=6) if bias in ("both", "x") else None
    by = r.normal(size=2) if bias in ("both", "y") else None
    t = lambda v: None if v is None else torch.from_numpy(v)  # noqa: E731
    got = GramStats(folds=3, gram=False).update(X, Y).mapped((t(wx), t(bx)), (t(wy), t(by)))
    want = GramStats(folds=3, gram=False).update(
        X @ wx.T + (0 if bx is None else bx), Y @ wy.T + (0 if by is None else by)
    )
    for k in range(3):
        for name in ("xy", "sx", "sy", "n"):
            np.testing.assert_allclose(
                getattr(got.fold(k), name), getattr(want.fold(k), name), rtol=1e-12, atol=1e-12
            )
    with pytest.raises(ValueError, match=r"read widths \(4, 2\) but the rows have \(4, 3\)"):
        GramStats(gram=False).update(X, Y).mapped((t(wx), None), (t(wy[:, :2]), None))


@pytest.mark.parametrize("shapes", [((3, 2), (5, 9)), ((5, 9), (3, 2))], ids=["x", "y"])
@pytest.mark.parametrize("bias", ["both", "x", "none"])
@pytest.mark.parametrize("folds", [0, 3])
def test_mapped_statistics_factor_at_the_inputs_rank(shapes, bias, folds):
    """MappedStats.factors: L @ M is XᵀY of the mapped rows (centred: minus Σx Σyᵀ / n), of
    inner width d_in (+ 1 with a bias) of the smaller side whatever side mapped() took; they
    refuse new rows, factors a changed source or weight; alone, all_reduce is a no-op."""
    import torch

    (ix, ox), (iy, oy) = shapes  # mapped() takes the other side (the cheaper product)
    r = np.random.default_rng(5)
    X, Y = r.normal(size=(40, ix)), r.normal(size=(40, iy))
    wx, wy, bx, by = r.normal(size=(ox, ix)), r.normal(size=(oy, iy)), r.normal(size=ox), None
    bx = None if bias == "none" else bx
    by = r.normal(size=oy) if bias == "both" else None
    t = lambda v: None if v is None else torch.from_numpy(v)  # noqa: E731
    src = GramStats(folds=folds, gram=False).update(X, Y)
    got = src.mapped((t(wx), t(bx)), (t(wy), t(by)))
    rows = GramStats(gram=False).update(X @ wx.T + (0 if bx is None else bx),
                                        Y @ wy.T + (0 if by is None else by))  # fmt: skip
    assert got.rank == min(ix + (bx is not None), iy + (by is not None))
    for center in (False, True):
        left, right = got.factors(center)
        want = rows.centred()[3] if center else rows.xy
        np.testing.assert_allclose((left @ right).numpy(), want, rtol=1e-10, atol=1e-10)
        assert left.shape[1] == got.rank + center
    assert (
        got.all_reduce() is got and type(GramStats.from_state_dict(got.state_dict())) is GramStats
    )
    with pytest.raises(ValueError, match="derived"):
        got.update(X[:, :1], Y[:, :1])
    w = t(wx.copy())
    fresh = src.mapped((w, None), (t(wy), None))
    w.mul_(2.0)  # a weight changed in place
    with pytest.raises(ValueError, match="changed; map again"):
        fresh.factors()
    src.update(X, Y)
    with pytest.raises(ValueError, match="changed; map again"):
        got.factors()


def test_a_batch_that_overflows_float32_statistics_changes_nothing():
    """Finite float64 rows beyond float32's range are refused before the QR or sums move."""
    s = GramStats(gram=False, qr=True, dtype=np.float32).update(np.ones((4, 2)), np.ones((4, 1)))
    before = {k: v.clone() for k, v in s.state_dict().items()}
    with pytest.raises(ValueError, match="NaN or inf"):
        s.update(np.full((3, 2), 1e39), np.ones((3, 1)))
    assert all(np.array_equal(v, before[k]) for k, v in s.state_dict().items())


@pytest.mark.parametrize("folds", [0, 3])
def test_rows_zero_on_a_side_are_left_out_of_the_product_exactly(folds):
    """zero_rows=True multiplies XᵀY over the rows live on both sides only: every statistic
    equals the plain update's (an all-zero batch included)."""
    r = np.random.default_rng(5)
    X, Y = r.normal(size=(40, 4)), r.normal(size=(40, 3))
    X[::3], Y[1::4], Y[30:] = 0.0, 0.0, 0.0
    X[1], Y[2] = [0.0, -1.0, 0.0, -2.0], [0.0, 0.5, 0.0]  # live rows: no positive / one entry
    plain, skip = GramStats(folds=folds), GramStats(folds=folds)
    for i in range(0, 40, 10):
        plain.update(X[i : i + 10], Y[i : i + 10])
        skip.update(X[i : i + 10], Y[i : i + 10], zero_rows=True)
    for name in ("xx", "xy", "sx", "sy", "yy", "n"):
        np.testing.assert_allclose(getattr(skip, name), getattr(plain, name), rtol=1e-13)
    for k in range(max(folds, 1)):
        np.testing.assert_allclose(skip.fold(k).xy, plain.fold(k).xy, rtol=1e-13)


def test_live_rows_are_those_nonzero_on_both_sides():
    """`_live` keeps a row with any nonzero entry (negative or single ones too) on both sides,
    and compacts nothing when more than half of the rows are live."""
    import torch

    from tasklift.stats import _live

    x = torch.tensor([[0.0, -1.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([[0.0, 3.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert _live(x, y).tolist() == [True, False, False, False]
    assert _live(x, torch.ones(4, 2)).tolist() == [True, False, True, False]
    three = torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 2.0], [0.0, 0.0]])
    assert _live(torch.ones(4, 2), three) is None
