import numpy as np
import pytest
import torch

from tasklift.rows import as_rows, finite_sums
from tasklift.stats import GramStats


def test_rows_are_taken_without_copies_and_any_layout_is_accepted():
    t = torch.randn(5, 3)
    assert as_rows(t, "X").data_ptr() == t.data_ptr()  # float32 tensors as they are
    flipped = np.arange(12.0).reshape(4, 3)[::-1]  # negative strides, which torch refuses
    np.testing.assert_array_equal(as_rows(flipped, "X").numpy(), flipped)
    frozen = np.ones((2, 2))
    frozen.flags.writeable = False
    assert as_rows(frozen, "X").dtype == torch.float64
    assert as_rows(torch.ones(2, 2, dtype=torch.bfloat16), "X").dtype == torch.float32
    with pytest.raises(ValueError, match="X must be 2-D"):
        as_rows(np.ones(3), "X")


def test_nan_and_inf_rows_are_counted_and_refused_before_anything_is_kept():
    X = np.ones((6, 3))
    X[1, 0], X[4, 2] = np.nan, np.inf
    with pytest.raises(ValueError, match="X has 2 row"):
        finite_sums(torch.from_numpy(X), "X")
    X[1, 0], X[4, 2] = np.inf, -np.inf  # opposite infinities in different columns
    s = GramStats()
    with pytest.raises(ValueError, match="Y has 2 row"):
        s.update(np.ones((6, 3)), X)
    assert s.dims is None and s.n == 0  # nothing half-kept: the next batch sets the widths
    s.update(np.ones((6, 2)), np.ones((6, 2)))
    assert s.dims == (2, 2) and s.n == 6
