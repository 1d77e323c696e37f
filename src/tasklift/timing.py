"""`Timings`: seconds per named phase, measured with a context manager; a phase entered inside
another is subtracted from it, so the phases never overlap and sum to at most the wall time."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["Timings"]

T = TypeVar("T")


class Timings(dict):
    """{phase: seconds}, accumulated over every `with timings(phase):` block.

    Example:
        >>> t = Timings()
        >>> with t("load"):
        ...     with t("solve"):  # counted as solve only, not as load too
        ...         pass
    """

    def __init__(self) -> None:
        super().__init__()
        self._inner: list[float] = []  # per open phase: seconds spent in phases inside it

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self[phase] = self.get(phase, 0.0) + took - self._inner.pop()
            if self._inner:
                self._inner[-1] += took

    def each(self, items: Iterable[T], phase: str) -> Iterator[T]:
        """`items` with the time spent producing each one (a generator's work) under `phase`."""
        it = iter(items)
        while True:
            with self(phase):
                item = next(it, _END)
            if item is _END:
                return
            yield item


_END = object()
