"""Choosing the task-vector scale on a validation split: every scale of the grid, or a Fibonacci
search (golden-section search on a grid) that evaluates at most `SEARCH_EVALS` of them.

Fibonacci search finds the maximum of a unimodal function over F_k − 1 points with k − 2
evaluations (F = 1, 1, 2, 3, 5, 8, 13, …), and no method needs fewer in the worst case: four
evaluations settle any grid of up to 7 scales exactly, the default 8-scale grid would need five.
Past the budget the search stops and the best scale evaluated so far stands, which on a
strictly unimodal score is then at most one grid step from the grid's best. Both promises need
strict unimodality: where two probed scales tie (accuracies on a few hundred validation rows
often do) the search keeps the side nearer scale 1 and can end up to four grid steps from the
grid's best (scores 1, 0, 0, 0, 0, 0, 0, 0 on the default grid give 1.0, not 0). Scores that
rise and fall more than once (noise) can mislead any search but the full grid; hence "grid"
stays Transfer's default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from ..taskvector import TaskVector
from .methods import SEARCHES

__all__ = ["SEARCHES", "SEARCH_EVALS", "best_scale", "search_scales", "choose_scale"]

#: validation evaluations a Fibonacci search may make
SEARCH_EVALS = 4


def best_scale(scores: Mapping[float, float]) -> float:
    """The best-scoring scale, ties going to the scale nearest 1 (the plain transfer); 1 if none."""
    best = scores or {1.0: 0.0}
    return max(best, key=lambda s: (best[s], -abs(s - 1.0)))


def search_scales(
    scales: Sequence[float],
    score: Callable[[float], float],
    search: str = "fibonacci",
    evals: int = SEARCH_EVALS,
) -> dict[float, float]:
    """{scale: score} of the scales evaluated: all of them ("grid"), or those a Fibonacci
    search over the sorted scales visits within `evals` evaluations ("fibonacci")."""
    grid = sorted({float(s) for s in scales})
    if search == "grid":
        return {s: score(s) for s in grid}
    scores: dict[float, float] = {}

    def at(i: int) -> float | None:
        """The score of grid index i (−inf past the grid's end); None once the budget is spent."""
        if i >= len(grid):
            return -math.inf
        if grid[i] not in scores:
            if len(scores) == evals:
                return None
            scores[grid[i]] = score(grid[i])
        return scores[grid[i]]

    def far(i: int) -> float:
        return abs(grid[i] - 1.0) if i < len(grid) else math.inf

    fib = [1, 1]
    while fib[-1] - 1 < len(grid):  # the bracket's F_k − 1 inner points hold the grid
        fib.append(fib[-1] + fib[-2])
    lo, k = -1, len(fib) - 1  # the maximum lies strictly inside (lo, lo + fib[k])
    while fib[k] > 2:
        i, j = lo + fib[k - 2], lo + fib[k - 1]
        si, sj = at(i), at(j)
        if si is None or sj is None:
            break
        if si < sj or (si == sj and far(j) < far(i)):  # ties keep the probe nearer scale 1
            lo = i  # (i, lo + fib[k]): its inner probe j sits at i + fib[k - 3]
        k -= 1
    if fib[k] == 2:
        at(lo + 1)  # the one point left (evaluated already unless the grid has one scale)
    return scores


def choose_scale(est, tv_b: TaskVector, b: nn.Module, X_val, y_val) -> tuple[float, dict]:
    """The scale of `est.scales` whose B + scale · τ_B scores best on (X_val, y_val) by
    `est._score_model`, found by `est.scale_search`, and {scale evaluated: score}; 1 and {}
    without X_val. τ_B is applied to B in place and removed again (B may be several GB)."""
    if X_val is None:
        return 1.0, {}

    def score(scale: float) -> float:
        with tv_b.applied(b, scale=scale):
            return est._score_model(b, X_val, y_val)

    scores = search_scales(est.scales, score, est.scale_search)
    return best_scale(scores), scores
