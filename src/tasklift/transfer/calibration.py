"""Calibration: a forward-backward pass of A and of B over the same inputs, recording each
matched module's input, output and their gradients, with token rows paired between the models
and the A-vs-B cross-covariances streamed into `GramStats` (a classifier's B runs forward, then
backward once A_ft's head is carried onto it: `HeadStep`). Under torchrun the batches are
dealt to the processes and the statistics all-reduced, so every process solves the same maps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_stats, deal, everywhere
from ..families import FIXED_ROLES, roles
from ..hooks import capture
from ..stats import GramStats
from ..timing import Timings
from .methods import TOKENS
from .mha import InProj, unfused
from .pairing import affine_of, is_matrix, module_dims
from .tokens import align_tokens

__all__ = ["calibrate", "plan_passes", "HeadStep", "SIGNALS", "KEEP_BYTES", "keep_budget"]

#: what a hook can record per module
SIGNALS = ("input", "output", "grad_input", "grad_output")


def _tokens(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Any captured tensor as (B, T, d): conv maps (B, C, *grid) become (B, grid, C)."""
    t = t.detach().float()
    if isinstance(module, nn.modules.conv._ConvNd):
        return t.flatten(2).transpose(1, 2)
    return t[:, None] if t.ndim == 2 else t.reshape(t.shape[0], -1, t.shape[-1])


def _capture_pass(
    model: nn.Module, points: dict, batch, loss_fn, backward: bool, in_projs: dict
) -> dict[tuple, torch.Tensor]:
    """One forward (and backward) pass: {(module name, signal): (B, T, d)} for every point."""
    modules = dict(model.named_modules())
    got = {}
    store = lambda key, t: got.__setitem__(key, _tokens(t, modules[key[0]]).cpu())  # noqa: E731
    for name, in_proj in in_projs.items():  # MHA: its projections as hookable modules
        modules[name].forward = unfused(modules[name], in_proj)
    fast = torch.backends.mha.get_fastpath_enabled()
    # a TransformerEncoderLayer's fused fast path (eval, no grad) never calls MHA's forward
    torch.backends.mha.set_fastpath_enabled(fast and not in_projs)
    try:
        _run_pass(model, points, store, batch, loss_fn, backward)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for name in in_projs:
            del modules[name].forward  # back to the class's forward
    model.zero_grad(set_to_none=True)
    return got


@contextmanager
def _activation_grads_only(model: nn.Module, backward: bool) -> Iterator[None]:
    """Backward passes reach every activation but no parameter: the weights are frozen and each
    module's output that would then need no gradient (embeddings, patch convolutions: they
    read only the inputs) asks for one, so no weight gradient (a copy of the model's size:
    7 GB for a 1.5B in float32) is computed or held."""
    if not backward:
        yield
        return

    def wants_grad(module, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not out.requires_grad:
            out.requires_grad_(True)

    flags = {p: p.requires_grad for p in model.parameters()}
    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    hooks = [m.register_forward_hook(wants_grad) for m in owners]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _run_pass(model, points, store, batch, loss_fn, backward: bool) -> None:
    with (
        _activation_grads_only(model, backward),  # its hooks first: capture sees the grads
        capture(points, store),
        torch.set_grad_enabled(backward),
    ):
        loss = loss_fn(model, batch)
        if backward:
            loss.backward()


def _signals(target: nn.Module, pairs: Mapping[str, str], signals: Sequence[str]) -> dict:
    """{target module: the signals recorded for it}: vector modules have no input side, an LM
    head's output side is the vocabulary, per-head coordinates (`FIXED_ROLES`) none."""
    mods_b = dict(target.named_modules())
    role_b = {n: role for n, (role, _) in roles(target).items()}
    return {
        b: [
            s for s in signals
            if (is_matrix(mods_b[b]) or not s.endswith("input"))
            and not (role_b.get(b) == "lm_head" and s.endswith("output"))
            and role_b.get(b) not in FIXED_ROLES
        ]
        for b in pairs
    }  # fmt: skip


def plan_passes(
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    signals: Sequence[str],
    budget_bytes: float | None,
    itemsize: int = 8,
) -> list[dict[str, str]]:
    """Split `pairs` into calibration passes whose cross-covariances (d_A × d_B × `itemsize`
    bytes per module and signal) fit `budget_bytes` (None: one pass). A block's modules stay
    in one pass (its key/value heads are matched from its k and v together); a block larger
    than the budget gets a pass of its own."""
    if budget_bytes is None:
        return [dict(pairs)]
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    block = {n: blk for n, (_, blk) in roles(target).items()}
    units: dict[int, dict[str, str]] = {}
    cost: dict[int, float] = {}
    for b, sigs in _signals(target, pairs, signals).items():
        (ia, oa), (ib, ob) = module_dims(mods_a[pairs[b]]), module_dims(mods_b[b])
        size = sum((ia * ib if s.endswith("input") else oa * ob) for s in sigs) * itemsize
        key = block.get(b, -1)
        units.setdefault(key, {})[b] = pairs[b]
        cost[key] = cost.get(key, 0.0) + size
    passes, current, used = [], {}, 0.0
    for key in sorted(units):
        if current and used + cost[key] > budget_bytes:
            passes.append(current)
            current, used = {}, 0.0
        current.update(units[key])
        used += cost[key]
    return passes + ([current] if current else [])


def _grad(key: tuple) -> bool:
    """Whether a (module, signal) key is a gradient (captured during a backward pass)."""
    return key[1].startswith("grad")


def _split(points: dict, wait: bool) -> tuple[dict, dict]:
    """(points of the first pass, of the second): gradients wait for the head step, if any."""
    later = {k: v for k, v in points.items() if wait and _grad(k)}
    return {k: v for k, v in points.items() if k not in later}, later


def _pairer(pairs, sigs, out: dict, token, words, grids, dtype, clock: Timings) -> Callable:
    """(got_a, got_b, batch) -> None: pairs the rows of every signal both passes captured and
    accumulates them into `out`."""

    def pair(got_a: dict, got_b: dict, batch) -> None:
        with clock("statistics"):
            todo = [(b, a, sig) for b, a in pairs.items() for sig in sigs[b]
                    if (a, sig) in got_a and (b, sig) in got_b]  # fmt: skip
            # the same tensors on both sides (a block's q, k and v read one input, a norm's
            # output is the next layer's input): their rows are paired and multiplied once
            same = {k: (_ident(got_a[k[1:]]), _ident(got_b[(k[0], k[2])])) for k in todo}
            left = Counter(same.values())  # uses of each pair of tensors still to come
            pools, once = None, {}
            for b, a, sig in todo:
                if token == "word" and pools is None:  # both tokenizers: only if needed
                    pools = words(batch)
                acc = out.setdefault((b, sig), GramStats(gram=False, dtype=dtype))
                key = same[(b, a, sig)]
                left[key] -= 1
                if key not in once:
                    xa, xb = align_tokens(got_a[(a, sig)], got_b[(b, sig)], token,
                                          f"{a} -> {b} ({sig})", pools, grids)  # fmt: skip
                    # gradients of tokens the loss never reads are 0 (pooled rows: never)
                    zero = _grad((a, sig)) and token in ("all", "word")
                    if not left[key]:  # used once: straight in
                        acc.update(xa, xb, zero_rows=zero)
                        continue
                    once[key] = GramStats(gram=False, dtype=dtype).update(xa, xb, zero_rows=zero)
                acc.merge(once[key] if left[key] else once.pop(key))  # freed after its last

    return pair


def _ident(t: torch.Tensor) -> tuple:
    """What makes two live tensors hold the same numbers: memory, shape, strides, dtype."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype


def _bytes(got: Mapping) -> int:
    """Bytes of the captured tensors, each counted once however many signals share it."""
    seen = {_ident(t): t.numel() * t.element_size() for t in got.values()}
    return sum(seen.values())


def keep_budget(budget_bytes: float | None) -> int:
    """Bytes of A's gradient rows a classifier's calibration keeps: `KEEP_BYTES`, or less under
    a memory budget (`Transfer.max_stats_gb`)."""
    return KEEP_BYTES if budget_bytes is None else int(min(KEEP_BYTES, budget_bytes))


#: host memory for A's gradient rows kept from the first pass of a calibration with a head step
#: (`HeadStep`), so A runs once; batches past it are run again in the second pass
KEEP_BYTES = 2 * 2**30


@dataclass(frozen=True)
class HeadStep:
    """A_ft's head carried onto B inside calibration: B's gradients flow through that head, so
    they wait for it, but nothing else does. The first pass runs A forward (and backward, for
    the gradient rows it keeps; its head is A_ft's) and B forward, pairs every forward signal,
    and gives `align` the head layers' input statistics (first token, float64) before B's
    backward pass. The calibrated pairs must not include the head layers (refused) or anything
    after them (read before `align` writes them)."""

    target: str  # B's first head layer
    source: str  # A_ft's
    align: Callable[[GramStats], None]


def calibrate(
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    signals: Sequence[str] = ("input", "grad_output", "output"),
    token: str = "all",
    words: Callable[[object], Sequence[torch.Tensor]] | None = None,
    dtype=np.float64,
    grids: bool = True,
    timings: Timings | None = None,
    head: HeadStep | None = None,
    keep_bytes: int = KEEP_BYTES,
) -> dict[tuple[str, str], GramStats]:
    """Cross-covariance statistics A vs B of each calibration signal of every matched module.

    Args:
        pairs: target module -> source module (see `match_modules`).
        batches: calibration batches, each given to `loss_fn` for both models.
        loss_fn: (model, batch) -> scalar loss, e.g. the task loss through the model's head.
        signals: which of `SIGNALS` to record; vector modules (norms, embeddings) have only an
            output side, so no input signals.
        token: row pairing: "all", "cls", "mean" or "word" (see `align_tokens`).
        words: for token="word": batch -> (A's, B's) `word_pooling` matrices.
        dtype: precision of the cross-covariances (float32 halves them; see `GramStats`).
        grids: token counts that differ may be square patch grids, resampled (images); False
            for text, whose token counts are never grids.
        timings: records the seconds of the passes ("calibrate"), of pairing and accumulating
            the rows ("statistics") and of the head step ("head").
        head: align B's head from the first pass (see `HeadStep`); B's gradients then come
            from a second pass of B alone, paired with A's gradient rows kept from the first.
        keep_bytes: host memory for those rows; A runs again in the second pass for the
            batches past it.

    Returns:
        {(target module, signal): GramStats(gram=False) of rows (x_A, x_B)}: `.xy` is
        X_Aᵀ X_B (d_A, d_B). The outputs of modules affine per token on both sides (linear
        layers: `pairing.affine_of`) are not captured: their statistics are mapped from the
        inputs' (`GramStats.mapped`: exact but for a bf16 model's rounding of its outputs). A
        signal that never arrives (the input gradient of the first layer) is absent. Under
        torch.distributed each process calibrates its share of the batches
        (`distributed.deal`) and all return the statistics summed over all of them.

    Raises:
        KeyError: a module named in `pairs` does not exist.
        ValueError: unknown token pairing or signal; token counts that cannot be paired.
    """
    if token not in TOKENS:
        raise ValueError(f"unknown token alignment {token!r}; use one of {TOKENS}")
    if token == "word" and words is None:
        raise ValueError("token='word' needs words=: batch -> the two word_pooling matrices")
    bad = [s for s in signals if s not in SIGNALS]
    if bad:
        raise ValueError(f"unknown calibration signal(s) {bad}; use one of {SIGNALS}")
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    if head is not None and (head.target in pairs or head.source in pairs.values()):
        raise ValueError(
            f"the head layers {head.target!r} / {head.source!r} are carried by the head step, "
            "not calibrated: leave them out of pairs"
        )
    named = dict(pairs) if head is None else {**pairs, head.target: head.source}
    for b, a in named.items():
        for name, mods, model in ((a, mods_a, source), (b, mods_b, target)):
            if name not in mods:
                raise KeyError(f"{type(model).__name__} has no module {name!r}")
    sigs = _signals(target, pairs, signals)
    # affine per token on both sides, on every process: outputs' statistics from the inputs'
    maps = {b: (affine_of(mods_a[a]), affine_of(mods_b[b])) for b, a in pairs.items()}
    able = [{"input", "output"} <= set(sigs[b]) and None not in maps[b] for b in pairs]
    derived = {b: maps[b] for b, ok in zip(pairs, everywhere(able), strict=True) if ok}
    sigs = {b: [s for s in got if not (s == "output" and b in derived)] for b, got in sigs.items()}
    proj_a = {n: InProj(m) for n, m in mods_a.items() if isinstance(m, nn.MultiheadAttention)}
    proj_b = {n: InProj(m) for n, m in mods_b.items() if isinstance(m, nn.MultiheadAttention)}
    hook_a = lambda n: proj_a.get(n, mods_a[n])  # noqa: E731  (MHA: hook its q|k|v projection)
    hook_b = lambda n: proj_b.get(n, mods_b[n])  # noqa: E731
    pts_a = {(pairs[b], sig): (hook_a(pairs[b]), sig) for b in pairs for sig in sigs[b]}
    pts_b = {(b, sig): (hook_b(b), sig) for b in pairs for sig in sigs[b]}
    early_a, late_a = _split(pts_a, head is not None)  # B's gradients wait for B's head
    early_b, late_b = _split(pts_b, head is not None)
    out: dict[tuple[str, str], GramStats] = {}
    clock = Timings() if timings is None else timings
    pair = _pairer(pairs, sigs, out, token, words, grids, dtype, clock)
    if head is not None:  # the head layers' inputs, keyed apart from every pair's signals
        early_a[(head.source, "head")] = (hook_a(head.source), "input")
        early_b[(head.target, "head")] = (hook_b(head.target), "input")
        head_stats: dict[tuple[str, str], GramStats] = {}
        pair_head = _pairer({head.target: head.source}, {head.target: ["head"]}, head_stats,
                            "cls", None, grids, np.float64, clock)  # fmt: skip
    mine, kept, room, last = [], [], keep_bytes, 0
    for batch in deal(batches):  # the first pass (the only one without a head step)
        keep = bool(late_a) and room > 0 and room >= last  # A's gradients now, if they fit
        with clock("calibrate"):
            points = {**early_a, **(late_a if keep else {})}
            got_a = _capture_pass(source, points, batch, loss_fn, any(map(_grad, points)), proj_a)
            got_b = _capture_pass(target, early_b, batch, loss_fn, any(map(_grad, early_b)),
                                  proj_b)  # fmt: skip
        pair(got_a, got_b, batch)
        if head is not None:
            pair_head(got_a, got_b, batch)
            rows = {k: got_a[k] for k in late_a if k in got_a} if keep else {}
            last = _bytes(rows) if keep else last
            keep = keep and last <= room  # a longer batch than the last may not fit
            room -= last if keep else 0
            mine.append(batch)
            kept.append(rows if keep else None)
        del got_a, got_b
    if head is not None:
        with clock("head"):
            head_stats = all_reduce_stats(head_stats, lambda: GramStats(gram=False))
            head.align(head_stats[(head.target, "head")])
    bar = tqdm(range(len(mine) if late_b else 0), desc="calibrate (B's gradients)",
               disable=getattr(batches, "disable", True), leave=False)  # fmt: skip
    for i in bar:  # the second pass: B's gradients through the carried head
        with clock("calibrate"):
            got_a = kept[i]
            if got_a is None:  # not kept: A again
                got_a = _capture_pass(source, late_a, mine[i], loss_fn, True, proj_a)
            got_b = _capture_pass(target, late_b, mine[i], loss_fn, True, proj_b)
        kept[i] = None  # freed once paired
        pair(got_a, got_b, mine[i])
        del got_a, got_b
    del kept
    out = all_reduce_stats(out, lambda: GramStats(gram=False, dtype=dtype))
    with clock("statistics"):
        for b, affine in derived.items():
            if (b, "input") in out:
                out[(b, "output")] = out[(b, "input")].mapped(*affine)
    return out
