"""Streamed sufficient statistics of paired rows (X, Y), so any N fits in O(d²) memory.

Least squares, ridge, affine fits, Procrustes and their cross-validation need only
n, Σx, Σy, XᵀX, XᵀY and Σ‖y‖²; these are accumulated batch by batch in float64 because
forming XᵀX squares the condition number.
"""

from __future__ import annotations

import numpy as np
import torch

from .qr import QRStats
from .rows import Array, as_float64, as_rows, column_sums, finite_sums

__all__ = ["GramStats", "MappedStats", "QRStats", "Array", "as_float64"]


#: a per-row affine map x -> x Wᵀ + b: (W (d_out, d_in), b or None)
AffineMap = tuple[torch.Tensor, torch.Tensor | None]


def _float64_map(m: AffineMap) -> AffineMap:
    """The map's tensors as detached float64 CPU copies."""
    return tuple(None if t is None else t.detach().to("cpu", torch.float64) for t in m)


def _folds(pos: np.ndarray, k: int):
    """(fold, row mask) for each fold holding some of the rows at `pos`; mask None: all rows."""
    if k == 1:
        yield 0, None
        return
    fold = pos % k
    for i in range(k):
        rows = fold == i
        if rows.any():
            yield i, torch.from_numpy(rows)


def _live(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """The rows where x and y both have a nonzero entry (any other row adds nothing to XᵀY),
    or None when more than half are: copying nearly all rows would cost memory for little."""
    live = None
    for t in (x, y):
        some = (t.amax(1) != 0) | (t.amin(1) != 0)  # 10x aminmax's speed
        live = some if live is None else live & some
    return None if 2 * int(live.sum()) > live.numel() else live


class GramStats:
    """Running n, Σx, Σy, XᵀX, XᵀY and Σ‖y‖², optionally split into k folds for cross-validation.

    Rows are dealt to folds round-robin by their global position, so the folds do not depend
    on how the stream was batched. Totals are sums over folds.

    Args:
        folds: number of cross-validation folds to keep (0 or 1: totals only).
        gram: also keep XᵀX and Σ‖y‖² (least squares and ridge need them; Procrustes and
            permutation maps, as in BiCo's calibration, need only XᵀY and the sums).
        qr: also keep a streamed QR of all rows (`qr`, a `QRStats`), so plain least squares can
            be solved as numpy.linalg.lstsq would (`LeastSquaresMap(solver="qr")`) while the
            folds still serve cross-validation.
        dtype: precision of XᵀX, XᵀY and each batch's sums (float32 halves a large
            cross-covariance; the running sums, counts and everything solved from them stay
            float64).

    Shapes:
        xx (d_in, d_in), xy (d_in, d_out), sx (d_in,), sy (d_out,); n and yy are scalars.

    Example:
        >>> s = GramStats(folds=5)
        >>> for xb, yb in batches: s.update(xb, yb)
        >>> LeastSquaresMap().fit_stats(s)
    """

    def __init__(
        self, *, folds: int = 0, gram: bool = True, qr: bool = False, dtype=np.float64
    ) -> None:
        self.folds, self.gram, self.dtype = folds, gram, np.dtype(dtype)
        self.qr = QRStats(fit_intercept=True) if qr else None
        self._k = max(int(folds), 1)
        self._n = np.zeros(self._k, dtype=np.int64)
        self._sx = self._sy = self._xx = self._xy = None
        self._yy = np.zeros(self._k)

    def _fields(self) -> tuple[str, ...]:
        """Names of the per-fold arrays this accumulator keeps."""
        return ("_n", "_sx", "_sy", "_xy") + (("_xx", "_yy") if self.gram else ())

    def _allocate(self, di: int, do: int) -> None:
        k = self._k
        self._sx, self._sy = np.zeros((k, di)), np.zeros((k, do))
        self._xy = np.zeros((k, di, do), dtype=self.dtype)
        if self.gram:
            self._xx = np.zeros((k, di, di), dtype=self.dtype)

    @property
    def dims(self) -> tuple[int, int] | None:
        """(d_in, d_out), or None before the first update."""
        return None if self._xy is None else self._xy.shape[1:]

    def update(
        self, X: Array, Y: Array, index: np.ndarray | None = None, *, zero_rows: bool = False
    ) -> GramStats:
        """Add a batch of paired rows X (B, d_in), Y (B, d_out); returns self.

        Args:
            index: the rows' global positions in the dataset, which decide their folds; pass it
                when batches arrive out of order or from several processes, so folds match a
                single in-order pass. Default: the running row count.
            zero_rows: rows may be all zero on a side (gradients of tokens the loss never
                reads: padding, a classifier's last layer off its first token): where most
                are, XᵀY is multiplied over the other rows only. Exact up to summation order
                (those rows add zero to it; counts, sums and XᵀX take every row); the check
                costs a row max and min of both batches.
        """
        X, Y = as_rows(X, "X"), as_rows(Y, "Y")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; pair them row by row"
            )
        if self._xy is not None and (X.shape[1], Y.shape[1]) != self.dims:
            raise ValueError(
                f"batch has widths (X {X.shape[1]}, Y {Y.shape[1]}) "
                f"but earlier batches had {self.dims}"
            )
        pos = self.n + np.arange(X.shape[0]) if index is None else np.asarray(index)
        if pos.shape != (X.shape[0],):
            raise ValueError(f"index has shape {pos.shape} but the batch has {X.shape[0]} rows")
        prod = torch.float32 if self.dtype == np.float32 else torch.float64
        xp, yp = X.to(prod), Y.to(prod)  # sums too in the products' precision (float64 default)
        sums = finite_sums(xp, "X"), finite_sums(yp, "Y")  # refused before any state changes
        if self._xy is None:
            self._allocate(X.shape[1], Y.shape[1])
        if self.qr is not None:
            self.qr.update(X, Y)
        for k, rows in _folds(pos, self._k):
            xk, yk = (xp, yp) if rows is None else (xp[rows], yp[rows])
            sx, sy = sums if rows is None else (column_sums(xk), column_sums(yk))
            self._n[k] += xk.shape[0]
            self._sx[k] += sx
            self._sy[k] += sy
            live = _live(xk, yk) if zero_rows else None
            xl, yl = (xk, yk) if live is None else (xk[live], yk[live])
            self._xy[k] += (xl.T @ yl).numpy()
            if self.gram:
                self._xx[k] += (xk.T @ xk).numpy()
                self._yy[k] += float(yk.double().square().sum())
        return self

    def merge(self, other: GramStats) -> GramStats:
        """Add another accumulator's counts and sums (e.g. from another shard); returns self."""
        if other._xy is None:
            return self
        if self.qr is not None and other.qr is None:
            raise ValueError("cannot merge stats without a QR into stats that keep one")
        if self._xy is not None and (other._k, other.dims, other.gram) != (
            self._k,
            self.dims,
            self.gram,
        ):
            raise ValueError(
                f"cannot merge stats with folds/dims/gram {other._k}/{other.dims}/{other.gram} "
                f"into {self._k}/{self.dims}/{self.gram}"
            )
        if self.qr is not None:
            self.qr.merge(other.qr)
        if self._xy is None:
            for k in ("folds", "gram", "dtype", "_k", *other._fields()):
                v = getattr(other, k)
                setattr(self, k, v.copy() if isinstance(v, np.ndarray) else v)
            return self
        for name in self._fields():
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def normalised(self, weight: float = 1.0) -> GramStats:
        """A copy whose sums are multiplied by weight / ‖XᵀY‖_F (counts kept), so that signals
        of different scale can be merged with chosen relative weights."""
        norm = max(float(torch.from_numpy(self.xy).norm()), 1e-300)
        out = GramStats(folds=self.folds, gram=self.gram)
        out.merge(self)
        for name in self._fields()[1:]:
            setattr(out, name, weight * getattr(out, name) / norm)
        return out

    def select(self, x_cols: slice, y_cols: slice) -> GramStats:
        """The statistics of the column blocks X[:, x_cols] and Y[:, y_cols] alone."""
        out = GramStats(folds=self.folds, gram=self.gram, dtype=self.dtype)
        out._n = self._n.copy()
        if self._xy is not None:
            out._sx, out._sy = self._sx[:, x_cols].copy(), self._sy[:, y_cols].copy()
            out._xy = self._xy[:, x_cols, y_cols].copy()
            if self.gram:
                out._xx, out._yy = self._xx[:, x_cols, x_cols].copy(), self._yy.copy()
        return out

    def _affine_factors(self, k: int | None, maps: tuple, left: bool) -> tuple:
        """Fold k's statistics (None: the totals) of the mapped rows (x W_xᵀ + b_x, y W_yᵀ +
        b_y), float64 maps: XᵀY = L @ M with the bias terms on an extra inner column, of width
        d_in (+ 1) of the x side (`left`) or the y side; and the new Σx, Σy."""
        (wx, bx), (wy, by) = maps
        pick = (lambda a: a[k]) if k is not None else (lambda a: a.sum(0, dtype=np.float64))
        n, xy = float(pick(self._n)), torch.from_numpy(pick(self._xy)).double()
        sx, sy = torch.from_numpy(pick(self._sx)), torch.from_numpy(pick(self._sy))
        sx_out = wx @ sx + (0 if bx is None else n * bx)
        sy_out = wy @ sy + (0 if by is None else n * by)
        if left:  # [W_x b_x] · [XᵀY W_yᵀ + Σx b_yᵀ; Σy_outᵀ]
            m = xy @ wy.T + (0 if by is None else torch.outer(sx, by))
            lf, rt = (wx, m) if bx is None else (torch.cat([wx, bx[:, None]], 1),
                                                 torch.cat([m, sy_out[None]]))  # fmt: skip
        else:  # [W_x XᵀY + b_x Σyᵀ  Σx_out] · [W_y b_y]ᵀ
            m = wx @ xy + (0 if bx is None else torch.outer(bx, sy))
            lf, rt = (m, wy.T) if by is None else (torch.cat([m, sx_out[:, None]], 1),
                                                   torch.cat([wy, by[:, None]], 1).T)  # fmt: skip
        return lf, rt, sx_out, sy_out

    def mapped(self, x_map: AffineMap, y_map: AffineMap) -> MappedStats:
        """The gram=False statistics of the rows (x W_xᵀ + b_x, y W_yᵀ + b_y), from these alone:
        a linear layer's outputs' from its inputs', in O(d³) once rather than O(N d²). They
        keep what made them, so XᵀY is also at hand as factors of rank d_in + 1
        (`MappedStats.factors`).

        Raises:
            ValueError: gram=True or empty statistics, or a W whose d_in is not their width.
        """
        if self.gram or self._xy is None:
            raise ValueError("mapped() needs accumulated gram=False statistics (XᵀY and sums)")
        maps = tuple(_float64_map(m) for m in (x_map, y_map))
        (wx, _), (wy, _) = maps
        if (wx.shape[1], wy.shape[1]) != self.dims:
            raise ValueError(
                f"the maps read widths ({wx.shape[1]}, {wy.shape[1]}) but the rows have "
                f"{self.dims}; pass each W as (d_out, d_in)"
            )
        (ox, ix), (oy, iy) = wx.shape, wy.shape
        left = ox * iy * (ix + oy) >= ix * oy * (iy + ox)  # the cheaper product
        out = MappedStats(self, (x_map, y_map))
        out._n = self._n.copy()
        out._sx, out._sy = np.zeros((self._k, ox)), np.zeros((self._k, oy))
        out._xy = np.zeros((self._k, ox, oy), dtype=self.dtype)
        for k in range(self._k):
            lf, rt, out._sx[k], out._sy[k] = self._affine_factors(k, maps, left)
            out._xy[k] = (lf @ rt).numpy()
        return out

    def all_reduce(self, group=None) -> GramStats:
        """Sum the statistics over every process of torch.distributed (a no-op when not running
        distributed); afterwards each process holds the statistics of the whole dataset.

        Processes that saw no rows still take part (with zeros of the right shape).
        """
        import torch.distributed as dist

        from .distributed import collective_device, rank_world

        if rank_world(group)[1] == 1:
            return self
        device = collective_device(group)
        dims = torch.tensor(self.dims or (0, 0), device=device)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX, group=group)
        if self._xy is None:  # an empty shard: join with zeros
            self._allocate(*(int(v) for v in dims))
        for name in self._fields():
            t = torch.from_numpy(getattr(self, name)).to(device)
            dist.all_reduce(t, group=group)
            setattr(self, name, t.cpu().numpy())
        if self.qr is not None:
            self.qr.all_reduce(group)
        return self

    def _pick(self, include: np.ndarray) -> GramStats:
        out = GramStats(gram=self.gram)
        if self._xy is not None:
            out._n = self._n[include].sum(0, keepdims=True)
            for name in self._fields()[1:]:
                setattr(out, name, getattr(self, name)[include].sum(0, keepdims=True))
        return out

    def fold(self, k: int) -> GramStats:
        """Statistics of fold k alone (the validation part)."""
        return self._pick(np.arange(self._k) == k)

    def without(self, k: int) -> GramStats:
        """Statistics of every fold but k (the training part)."""
        return self._pick(np.arange(self._k) != k)

    def _total(self, name: str) -> np.ndarray:
        if self._xy is None:
            raise ValueError(
                "no rows accumulated yet: the dataset is empty; pass at least one batch"
            )
        if name not in self._fields():
            raise ValueError(
                f"these statistics were accumulated with gram=False: no {name.lstrip('_')}; "
                "use GramStats(gram=True) for least squares or ridge"
            )
        return getattr(self, name).sum(0, dtype=np.float64)  # solved in float64 whatever `dtype`

    n = property(lambda self: int(self._n.sum()), doc="Number of rows seen.")
    sx = property(lambda self: self._total("_sx"), doc="Σx (d_in,).")
    sy = property(lambda self: self._total("_sy"), doc="Σy (d_out,).")
    xx = property(lambda self: self._total("_xx"), doc="XᵀX (d_in, d_in).")
    xy = property(lambda self: self._total("_xy"), doc="XᵀY (d_in, d_out).")
    yy = property(lambda self: float(self._total("_yy")), doc="Σ‖y‖² (scalar).")

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Return (mean_x, mean_y, XcᵀXc, XcᵀYc) with the column means removed (XcᵀXc is None
        for gram=False statistics)."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        xx = self.xx - n * np.outer(mx, mx) if self.gram else None
        return mx, my, xx, self.xy - n * np.outer(mx, my)

    def sse(self, W: np.ndarray, b: np.ndarray | None = None) -> float:
        """Σ‖x W + b − y‖² over the accumulated rows, computed from the statistics alone."""
        xx, xy = self.xx, self.xy
        out = np.einsum("ij,ij->", W, xx @ W) - 2 * np.einsum("ij,ij->", W, xy) + self.yy
        if b is not None:
            out += 2 * b @ (W.T @ self.sx) + self.n * (b @ b) - 2 * b @ self.sy
        return float(max(out, 0.0))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that recreate this accumulator (for saving or all-reducing)."""
        if self._xy is None:
            raise ValueError("no rows accumulated yet: nothing to save")
        out = {k.lstrip("_"): torch.from_numpy(getattr(self, k)) for k in self._fields()}
        if self.qr is not None:
            out.update({f"qr.{k}": v for k, v in self.qr.state_dict().items()})
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> GramStats:
        """Inverse of `state_dict`."""
        out = GramStats(folds=int(state["n"].shape[0]), gram="xx" in state)
        for k, v in state.items():
            if not k.startswith("qr."):
                setattr(out, "_" + k, v.numpy().copy())
        qr = {k[3:]: v for k, v in state.items() if k.startswith("qr.")}
        out.qr = QRStats.from_state_dict(qr) if qr else None
        return out


class MappedStats(GramStats):
    """`GramStats.mapped`'s result: the statistics of affinely mapped rows, which keep the
    statistics and maps they came from (references, no copies), so `factors` gives XᵀY at
    its low rank. Derived, not accumulated: they refuse new rows, and `factors` refuses a
    source that took rows or weights changed in place since."""

    def __init__(self, source: GramStats, maps: tuple) -> None:
        super().__init__(folds=source.folds, gram=False, dtype=source.dtype)
        self._source, self._maps, self._seen = source, maps, self._stamp(source, maps)

    @staticmethod
    def _stamp(source: GramStats, maps: tuple) -> tuple:
        return source._n.copy(), [None if t is None else t._version for m in maps for t in m]

    def update(self, *args, **kwargs) -> GramStats:
        """Refused: mapped statistics are derived."""
        raise ValueError("mapped statistics are derived: update the inputs' and map them again")

    def merge(self, other: GramStats) -> GramStats:
        """Refused: mapped statistics are derived."""
        raise ValueError("mapped statistics are derived: merge the inputs' and map them again")

    def all_reduce(self, group=None) -> MappedStats:
        """A no-op alone; refused across processes (they are made from all-reduced inputs)."""
        from .distributed import rank_world

        if rank_world(group)[1] > 1:
            raise ValueError("all-reduce the input statistics before mapping them, not after")
        return self

    @property
    def rank(self) -> int:
        """The inner width of `factors` (centred: one more), a bound on XᵀY's rank: d_in (+ 1
        with a bias) of the side with the smaller input."""
        (wx, bx), (wy, by) = self._maps
        return min(wx.shape[1] + (bx is not None), wy.shape[1] + (by is not None))

    def factors(self, center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 (L, M) with L @ M = XᵀY (centred with `center`) of inner width `rank` (+ 1
        centred): what a Procrustes tie-break needs of a wide linear layer's output without
        its d_out² Gram.

        Raises:
            ValueError: the source statistics took rows, or a weight changed, since.
        """
        new, old = self._stamp(self._source, self._maps), self._seen
        if not np.array_equal(new[0], old[0]) or new[1] != old[1]:
            raise ValueError("the statistics or weights these were mapped from changed; map again")
        (wx, bx), (wy, by) = self._maps
        left = wx.shape[1] + (bx is not None) <= wy.shape[1] + (by is not None)
        maps = tuple(_float64_map(m) for m in self._maps)
        lf, rt, sx, sy = self._source._affine_factors(None, maps, left)
        if center:  # XᵀY − Σx Σyᵀ / n
            lf, rt = torch.cat([lf, -sx[:, None] / self.n], 1), torch.cat([rt, sy[None]])
        return lf, rt
