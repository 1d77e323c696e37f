import numpy as np

from tasklift.maps import LeastSquaresMap
from tasklift.qr import QRStats


def test_streamed_qr_equals_lstsq_where_the_gram_route_cannot():
    rng = np.random.default_rng(0)
    n, d = 400, 20
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (u * np.logspace(0, -10, d)) @ v.T  # condition number 1e10: XᵀX's is 1e20
    W_true = rng.normal(size=(d, 3))
    Y = X @ W_true + 1e-12 * rng.normal(size=(n, 3))
    want = np.linalg.lstsq(X, Y, rcond=None)[0]
    qr = QRStats()
    for i in range(0, n, 37):  # uneven batches, the first smaller than d rows... and larger
        qr.update(X[i : i + 37], Y[i : i + 37])
    got = LeastSquaresMap().fit_stats(qr).coef_.T
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6
    gram = LeastSquaresMap().fit(X, Y).coef_.T
    assert np.linalg.norm(gram - want) / np.linalg.norm(want) > 1e-3  # drops small directions
    half = QRStats().update(X[:150], Y[:150]).merge(QRStats().update(X[150:], Y[150:]))
    merged = half.solve()  # merging two streams = one stream (to the conditioning's precision)
    assert np.linalg.norm(merged - want) / np.linalg.norm(want) < 1e-6
    affine = LeastSquaresMap(fit_intercept=True, solver="qr").fit(X[:, :5] + 3.0, Y[:, 0:1])
    ref = np.linalg.lstsq(np.hstack([X[:, :5] + 3.0, np.ones((n, 1))]), Y[:, 0:1], rcond=None)[0]
    np.testing.assert_allclose(affine.coef_.T, ref[:-1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(affine.intercept_, ref[-1], rtol=1e-6, atol=1e-9)
