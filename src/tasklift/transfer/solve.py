"""From calibration statistics to τ_B: per-module maps (by the method's registry entry), transport
of every delta of τ_A, and GradFix's sign mask.

For a linear layer ∂L/∂W = g xᵀ, so a task vector is a sum of products of output gradients g and
input activations x; maps R_in, R_out (semi-orthogonal when widths differ, zero on directions
no calibration signal determines) fitted to A-vs-B cross-covariances carry it across:
ΔW_B = R_outᵀ ΔW_A R_in, δ_B = δ_A R_out for biases, norms and embeddings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..distributed import all_reduce_tensors, deal
from ..families import FIXED_ROLES, attention_blocks, family_of, head_counts, roles
from ..maps import MAPS
from ..solvers import NULL_RTOL, Factors, _assign
from ..stats import GramStats, MappedStats
from ..taskvector import LowRank, TaskVector, dense
from .calibration import SIGNALS
from .methods import TIE_BREAK, Method, get_method
from .pairing import is_matrix, module_dims

__all__ = [
    "solve_maps",
    "iter_maps",
    "zeroed",
    "transport",
    "gradient_sign_mask",
    "POST_STEPS",
    "TIE_BREAK",
]


def _embed_scale(model: nn.Module, width: int) -> float:
    """The factor a family multiplies its token embeddings by (sqrt(width) for Gemma)."""
    return float(np.sqrt(width)) if family_of(model).embed_scale else 1.0


def _cross(stats: GramStats, center: bool) -> tuple[np.ndarray, float]:
    """XᵀY, or the centred cross-covariance, scaled to unit Frobenius norm; and that norm."""
    xy = stats.centred()[3] if center else stats.xy
    norm = max(float(np.linalg.norm(xy)), 1e-300)
    return xy / norm, norm


def _tie(later: list[GramStats], center: bool) -> np.ndarray | Factors | None:
    """The later signals' cross-covariances, each at unit norm, summed; a linear layer's output
    signal alone of lower rank than its widths comes with its `Factors` (a wide layer's
    tie-break is then solved at that rank)."""
    if not later:
        return None
    if len(later) > 1 or not isinstance(later[0], MappedStats):
        return sum(_cross(s, center)[0] for s in later)
    s = later[0]
    (dense, norm), rank = _cross(s, center), s.rank + center
    if rank >= min(s.dims):
        return dense

    def make():
        left, right = s.factors(center)
        return left / norm, right

    return Factors(dense, rank, make)


def _fit(
    method: Method,
    stats: list[GramStats],
    chunks: int,
    groups,
    center: bool,
    rtol: float,
    order: list[int] | None = None,
) -> np.ndarray:
    """R (d_A, d_B) by the method's solver from the first signal; later signals (summed, each at
    unit norm) settle only what it leaves open. Split in `chunks` parts (fused q|k|v, or the
    key/value head groups), A's part i is aligned only with B's part `order[i]` (default i)."""
    first, tie = stats[0], _tie(stats[1:], center)
    kw = {"groups": groups} if method.heads_first else {}
    if method.solver == "ProcrustesMap":
        kw["null_rtol"] = rtol
    a, b = first.dims[0] // chunks, first.dims[1] // chunks
    R = np.zeros(first.dims)
    for i, j in enumerate(range(chunks) if order is None else order):
        rows, cols = slice(i * a, (i + 1) * a), slice(j * b, (j + 1) * b)
        part = first if chunks == 1 else first.select(rows, cols)
        solver = MAPS[method.solver](fit_intercept=center, **kw)
        solver.fit_stats(part, tie=None if tie is None else tie[rows, cols])
        R[rows, cols] = solver.coef_.T
    return R


def _kv_orders(source, target, pairs, stats, method: Method, roles_a, roles_b) -> dict:
    """{block of B: which of B's key/value heads each of A's takes}, where both models use
    grouped-query attention with as many key/value heads: per block, heads are matched by the
    Procrustes objective (nuclear norm) of the k and v projections' first output signal, so
    each KV head, and the query heads of its group, is aligned only with its counterpart."""
    (qa, kva), (qb, kvb) = head_counts(source), head_counts(target)
    if method.heads_first or method.solver is None or None in (kva, kvb):
        return {}
    if kva != kvb or kva < 2 or qa == kva or qb == kvb:
        return {}
    by_role = {rb: name for name, rb in roles_b.items()}
    orders = {}
    for j in sorted({blk for (role, blk) in by_role if role == "k"}):
        score = np.zeros((kva, kvb))
        for role in ("k", "v"):
            got = stats.get((by_role.get((role, j)), method.outputs[0]))
            if got is None or by_role.get((role, j)) not in pairs:
                break
            xy = got.xy
            a, b = xy.shape[0] // kva, xy.shape[1] // kvb
            for i in range(kva):
                for k in range(kvb):
                    block = xy[i * a : (i + 1) * a, k * b : (k + 1) * b]
                    score[i, k] += np.linalg.svd(block, compute_uv=False).sum()
        else:
            orders[j] = list(_assign(score)[1])
    return orders


def solve_maps(
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    stats: Mapping[tuple[str, str], GramStats] | None,
    method: str | Method = "bico",
    *,
    tie_break: float = TIE_BREAK,
    center: bool = False,
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    """R_in (d_in_A, d_in_B) and R_out (d_out_A, d_out_B) per target module, for `method`.

    Identity stands in where a side has no calibration signal and the widths agree; methods
    without a solver (naive, GradFix) use identities throughout and skip modules whose widths
    differ.

    Args:
        stats: `calibrate`'s output for (at least) the method's signals.
        tie_break: singular values of a side's first cross-covariance at or below this
            fraction of the largest are left to its later signals, or mapped to zero where
            none determines them (see `methods.TIE_BREAK`).
        center: align centred covariances (means removed) instead of raw second moments.
    """
    kw = dict(tie_break=tie_break, center=center)
    return dict(iter_maps(source, target, pairs, dict(stats or {}), method, **kw))


def iter_maps(
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    stats: dict[tuple[str, str], GramStats],
    method: str | Method = "bico",
    *,
    tie_break: float = TIE_BREAK,
    center: bool = False,
) -> Iterator[tuple[str, tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """`solve_maps` one module at a time, consuming `stats`: a module's statistics are dropped
    from the dict once its maps are made, so a caller that moves each module's delta at once
    never holds more than one module's maps (a 1.5B's FFN: 0.5 GB a block)."""
    method = get_method(method)
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    roles_a, roles_b = roles(source), roles(target)
    kv_orders = _kv_orders(source, target, pairs, stats, method, roles_a, roles_b)
    for b, a in pairs.items():
        (ia, oa), (ib, ob) = module_dims(mods_a[a]), module_dims(mods_b[b])
        if roles_b.get(b, ("",))[0] in FIXED_ROLES:  # per-head coordinates: as they are
            if (ia, oa) == (ib, ob):
                yield b, (None, None)
            continue
        rs = []
        for side, da, db, sigs in (("in", ia, ib, method.inputs), ("out", oa, ob, method.outputs)):
            if side == "in" and da == 0:
                rs.append(None)
                continue
            got = [stats[(b, sig)] for sig in sigs if (b, sig) in stats]
            if method.solver is None or not got:
                if da != db:
                    if method.solver is None:
                        break  # identity maps need equal widths: leave this module out
                    raise ValueError(f"no calibration signal for the {side}put side of {b}")
                rs.append(None)  # identity, never materialised (a vocabulary side is 150k wide)
                continue
            blk_a = attention_blocks(source, a, roles_a.get(a, ("",))[0]).get(side)
            blk_b = attention_blocks(target, b, roles_b.get(b, ("",))[0]).get(side)
            chunks, order = blk_b[0] if blk_b else 1, None
            grouped = method.heads_first and blk_a is not None and blk_b is not None
            groups = (blk_a[1], blk_b[1]) if grouped else None
            block = roles_b.get(b, ("", -1))[1]
            if blk_a and blk_b and block in kv_orders:  # GQA: per key/value head group
                chunks, order = len(kv_orders[block]), kv_orders[block]
            r = _fit(method, got, chunks, groups, center, tie_break, order)
            if roles_b.get(b, ("",))[0] == "tokens":  # Gemma scales embeddings by sqrt(width)
                r = r * _embed_scale(source, da) / _embed_scale(target, db)
            rs.append(torch.from_numpy(r).float())
        else:
            for sig in SIGNALS:
                stats.pop((b, sig), None)
            yield b, (rs[0], rs[1])


def zeroed(maps: Iterable, tally: list[int]) -> Iterator:
    """`maps` passed through while `tally` [zeroed, total] counts the directions they map to zero
    (no calibration signal determined them): ‖R‖²_F is the rank of a partial isometry."""
    for name, rs in maps:
        for r in rs:
            if r is not None:
                tally[0] += min(r.shape) - round(float(r.double().square().sum()))
                tally[1] += min(r.shape)
        yield name, rs


def _transposed(delta):
    return LowRank(delta.down.T, delta.up.T) if isinstance(delta, LowRank) else delta.T


def _move(delta, module: nn.Module, target: nn.Module, r_in, r_out, param: str):
    """One parameter's delta in B's coordinates and B's layout (a map of None is the identity;
    GPT-2's Conv1D keeps weights as (d_in, d_out), a Linear as (d_out, d_in), so a weight
    moved between the two is turned round); the factors of a `LowRank` delta move alone:
    R_outᵀ (up · down) R_in = (R_outᵀ up)(down R_in)."""
    if param == "weight" and isinstance(module, Conv1D):
        delta = _transposed(delta)  # to (d_out, d_in)
    if isinstance(delta, LowRank):
        up = delta.up if r_out is None else r_out.T @ delta.up
        moved = LowRank(up, delta.down if r_in is None else delta.down @ r_in)
    elif param in ("weight", "in_proj_weight") and is_matrix(module):  # (d_out, d_in, *kernel)
        if r_out is not None:
            delta = torch.einsum("oi...,ob->bi...", delta, r_out)
        moved = delta if r_in is None else torch.einsum("bi...,ic->bc...", delta, r_in)
    else:
        moved = delta if r_out is None else delta @ r_out  # biases, norms, embeddings: (..., d)
    return _transposed(moved) if param == "weight" and isinstance(target, Conv1D) else moved


def transport(
    tv: TaskVector,
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    maps: Mapping[str, tuple[torch.Tensor | None, torch.Tensor]],
    *,
    strict: bool = True,
) -> TaskVector:
    """τ_B: every delta of τ_A on a matched module moved by that module's maps.

    Deltas whose leading shape differs from B's parameter (e.g. position tables of another
    length) and modules without maps are left out; `len(result.deltas)` says what was covered.

    Raises:
        ValueError: (strict) no delta of τ_A could be moved (wrong pairs or task vector); a
            calibration pass over modules the task did not touch moves nothing with strict=False.
    """
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    params_b = dict(target.named_parameters())
    out = {}
    for b, a in pairs.items():
        if b not in maps:
            continue
        r_in, r_out = maps[b]
        for param, _ in mods_a[a].named_parameters(recurse=False):
            key = f"{a}.{param}"
            if key not in tv.deltas:
                continue
            moved = _move(tv.deltas[key], mods_a[a], mods_b[b], r_in, r_out, param)
            have = params_b.get(f"{b}.{param}")  # B may lack it (no q bias; a tied LM head)
            if have is not None and moved.shape == have.shape:
                out[f"{b}.{param}"] = moved
    if strict and not out:
        raise ValueError(
            "no delta of the task vector could be moved: do the module pairs and maps come "
            "from these models, and does the task vector hold their parameters?"
        )
    return TaskVector(out)


def gradient_sign_mask(
    tv: TaskVector,
    target: nn.Module,
    batches: Iterable,
    loss_fn: Callable,
    *,
    mode: str = "majority",
) -> TaskVector:
    """GradFix: keep the entries of τ (already in B's shapes) whose sign agrees with B's descent
    direction −∇L_B(θ_B): by a vote of the calibration examples' own gradient signs ("majority",
    GradFix's default) or by the sign of their summed gradient ("mean"). Ties are dropped. A
    gradient entry at or below NULL_RTOL × its parameter's largest is round-off (a BERT key
    bias's gradient is zero but for it) and votes neither way, so a vote never rests on the
    sign of float noise.

    `batches` are index arrays given to `loss_fn(target, idx)`; "majority" splits them into single
    examples (one backward pass each). Under torch.distributed each process takes its share of
    the batches and the votes are summed over all.
    """
    if mode not in ("majority", "mean"):
        raise ValueError(f"GradFix mode must be 'majority' or 'mean', not {mode!r}")
    params = dict(target.named_parameters())
    votes, seen = {k: torch.zeros(v.shape) for k, v in tv.deltas.items()}, set()
    for batch in deal(batches):
        for unit in (
            [batch[i : i + 1] for i in range(len(batch))] if mode == "majority" else [batch]
        ):
            target.zero_grad(set_to_none=True)
            loss_fn(target, unit).backward()
            for k, vote in votes.items():
                g = params[k].grad
                if g is not None:
                    g = -g.detach().float().cpu()
                    vote += _signs(g) if mode == "majority" else g
                    seen.add(k)
    target.zero_grad(set_to_none=True)
    flags = {k: torch.tensor(float(k in seen)) for k in votes}
    all_reduce_tensors(votes)
    all_reduce_tensors(flags)  # seen by any process
    seen = {k for k, f in flags.items() if f > 0}
    deltas = {k: dense(v) for k, v in tv.deltas.items()}  # a sign mask breaks low rank
    votes = votes if mode == "majority" else {k: _signs(v) for k, v in votes.items()}
    kept = {k: v * (v * votes[k] > 0) if k in seen else v for k, v in deltas.items()}
    return TaskVector(kept)


def _signs(g: torch.Tensor) -> torch.Tensor:
    """sign(g), with 0 for entries at or below NULL_RTOL × the largest finite |g| (round-off,
    not a direction); a NaN stays NaN (its entry is dropped), an empty g stays empty."""
    top = g.abs().nan_to_num(0.0, 0.0, 0.0).amax() if g.numel() else 0.0
    return g.sign() * (g.abs() > NULL_RTOL * top)


#: steps a registry entry's `post` names, applied to τ_B after transport
POST_STEPS = {
    "gradfix": gradient_sign_mask,
    "gradfix-mean": functools.partial(gradient_sign_mask, mode="mean"),
}
