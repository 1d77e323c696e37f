"""A streamed QR factorisation of paired rows: least squares as numpy.linalg.lstsq solves it, in
O(d²) memory whatever N."""

from __future__ import annotations

import numpy as np
import torch

from .rows import Array, as_float64


class QRStats:
    """A streamed QR factorisation of X: the triangular R and QᵀY, updated batch by batch.

    Least squares from R (argmin ‖R W − QᵀY‖ has the same solutions as argmin ‖X W − Y‖) never
    forms XᵀX, so it does not square X's condition number: on badly conditioned embeddings it
    keeps the directions that `GramStats` must drop, and equals `numpy.linalg.lstsq` on all of X.
    Memory is O(d² + d·d_out) whatever N (batches are buffered until they hold d rows, then
    folded in by one QR); two accumulators merge by one more QR (all-reduce friendly). Rows are
    never stored beyond that buffer.

    Args:
        fit_intercept: factor [X, 1], so `solve` can return a bias as W's last row (and, since
            the leading block of R is the R of X alone, the plain solve too).
    """

    def __init__(self, *, fit_intercept: bool = False) -> None:
        self.fit_intercept = fit_intercept
        self.n = 0
        self._r: np.ndarray | None = None  # (m, d_in [+1]), m <= d_in [+1]
        self._qty: np.ndarray | None = None  # (m, d_out)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def _fold_in(self, X: np.ndarray, Y: np.ndarray) -> None:
        if self._r is not None:
            X, Y = np.vstack([self._r, X]), np.vstack([self._qty, Y])
        q, self._r = np.linalg.qr(X, mode="reduced")
        self._qty = q.T @ Y

    def _flush(self) -> None:
        if self._pending:
            xs, ys = zip(*self._pending, strict=True)
            self._pending = []
            self._fold_in(np.vstack(xs), np.vstack(ys))

    @property
    def r(self) -> np.ndarray | None:
        """The triangular factor R (m, d_in [+1]), or None before the first update."""
        self._flush()
        return self._r

    @property
    def qty(self) -> np.ndarray | None:
        """QᵀY (m, d_out), or None before the first update."""
        self._flush()
        return self._qty

    def update(self, X: Array, Y: Array) -> QRStats:
        """Fold a batch of paired rows X (B, d_in), Y (B, d_out) into R and QᵀY; returns self."""
        X, Y = as_float64(X, "X"), as_float64(Y, "Y")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; pair them row by row"
            )
        if self.fit_intercept:
            X = np.hstack([X, np.ones((X.shape[0], 1))])
        first = self._pending[0] if self._pending else (self._r, self._qty)
        if first[0] is not None and (X.shape[1], Y.shape[1]) != (
            first[0].shape[1],
            first[1].shape[1],
        ):
            raise ValueError(
                f"batch has widths (X {X.shape[1]}, Y {Y.shape[1]}) but earlier batches had "
                f"{(first[0].shape[1], first[1].shape[1])}"
            )
        self._pending.append((X, Y))
        self.n += X.shape[0]
        if sum(len(x) for x, _ in self._pending) >= X.shape[1]:
            self._flush()
        return self

    def merge(self, other: QRStats) -> QRStats:
        """Add another accumulator's rows (e.g. another process's); returns self."""
        if other.fit_intercept != self.fit_intercept:
            raise ValueError("cannot merge QRStats that disagree on fit_intercept")
        mine, theirs = (self.r, self.qty), (other.r, other.qty)
        if mine[0] is not None and theirs[0] is not None:
            if [m.shape[1] for m in mine] != [t.shape[1] for t in theirs]:
                raise ValueError(
                    f"cannot merge QRStats of widths {[t.shape[1] for t in theirs]} into "
                    f"{[m.shape[1] for m in mine]}"
                )
        if other.r is not None:
            self._flush()
            self._fold_in(other.r, other.qty)
            self.n += other.n
        return self

    def all_reduce(self, group=None) -> QRStats:
        """Merge the factors of every process of torch.distributed, in rank order, so all hold
        the same R of the whole dataset (a no-op when not running distributed)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        parts = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, (self.n, self.r, self.qty), group=group)
        self.n, self._r, self._qty = 0, None, None
        for n, r, qty in parts:
            if r is not None:
                self._fold_in(r, qty)
                self.n += n
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that recreate this accumulator."""
        if self.r is None:
            raise ValueError("no rows accumulated yet: nothing to save")
        return {
            "r": torch.from_numpy(self.r),
            "qty": torch.from_numpy(self.qty),
            "n": torch.tensor(self.n),
            "fit_intercept": torch.tensor(self.fit_intercept),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> QRStats:
        """Inverse of `state_dict`."""
        out = cls(fit_intercept=bool(state["fit_intercept"]))
        out._r, out._qty = state["r"].numpy().copy(), state["qty"].numpy().copy()
        out.n = int(state["n"])
        return out

    def solve(self, rcond: float | None = None, *, intercept: bool | None = None) -> np.ndarray:
        """The minimum-norm least-squares W (d_in [+1], d_out); singular values of X below
        rcond · σ_max count as zero (default: numpy.linalg.lstsq's eps · max(N, d)).

        intercept: return a bias as W's last row (default: `fit_intercept`); False on
            statistics with an intercept column solves without it (R's leading block).
        """
        r, qty = self.r, self.qty
        if r is None:
            raise ValueError("cannot solve from an empty QRStats; update it with some rows first")
        intercept = self.fit_intercept if intercept is None else intercept
        if intercept and not self.fit_intercept:
            raise ValueError("these QRStats have no intercept column; use fit_intercept=True")
        if self.fit_intercept and not intercept:
            r = r[:, :-1]  # X = Q R[:, :d]: the leading block is X's own triangular factor
        if rcond is None:
            rcond = np.finfo(np.float64).eps * max(self.n, r.shape[1])
        return np.linalg.lstsq(r, qty, rcond=rcond)[0]
