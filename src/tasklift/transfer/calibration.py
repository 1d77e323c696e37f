"""Calibration: one forward-backward pass of A and of B over the same inputs, recording each
matched module's input, output and their gradients, with token rows paired between the models
and the A-vs-B cross-covariances streamed into `GramStats`. Under torchrun the batches are
dealt to the processes and the statistics all-reduced, so every process solves the same maps."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_stats, deal, everywhere
from ..families import FIXED_ROLES, roles
from ..hooks import capture
from ..stats import GramStats
from ..timing import Timings
from .methods import TOKENS
from .pairing import affine_of, is_matrix, module_dims

__all__ = ["calibrate", "plan_passes", "align_tokens", "word_pooling", "SIGNALS"]

#: what a hook can record per module
SIGNALS = ("input", "output", "grad_input", "grad_output")


def _tokens(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Any captured tensor as (B, T, d): conv maps (B, C, *grid) become (B, grid, C)."""
    t = t.detach().float()
    if isinstance(module, nn.modules.conv._ConvNd):
        return t.flatten(2).transpose(1, 2)
    return t[:, None] if t.ndim == 2 else t.reshape(t.shape[0], -1, t.shape[-1])


def _grid(t: torch.Tensor) -> tuple[int, int] | None:
    """(prefix tokens, grid side) when the tokens are 0 or 1 prefix tokens then a square grid."""
    for prefix in (1, 0):
        side = math.isqrt(t.shape[1] - prefix)
        if side > 0 and side * side == t.shape[1] - prefix:
            return prefix, side
    return None


#: what counts as a word when pairing tokens of two tokenizers: a run of letters/digits, or
#: one punctuation mark (as BERT's pre-tokeniser splits; a token that spans both, as
#: SentencePiece's "▁don't" can, counts for the word it starts in)
WORD = re.compile(r"\w+|[^\w\s]")


def _word_of_tokens(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each token, the index of the word its characters fall in; -1 for special and padding
    tokens and for the tokens of a word that truncation cut short."""
    char_word, ends = [-1] * len(text), []
    for w, m in enumerate(WORD.finditer(text)):
        char_word[m.start() : m.end()] = [w] * (m.end() - m.start())
        ends.append(m.end())
    out, reach = [], {}
    for start, end in offsets:
        words = [char_word[c] for c in range(start, end) if char_word[c] >= 0]
        out.append(words[0] if words else -1)
        if words:
            reach[words[0]] = max(reach.get(words[0], 0), end)
    return [w if w >= 0 and reach[w] >= ends[w] else -1 for w in out]


def word_pooling(texts: Sequence[str], processors: Sequence, max_length: int) -> list[torch.Tensor]:
    """Per tokenizer, a (B, W, T) matrix that averages each word's tokens, words in common.

    Rows: the leading special token ([CLS] / <s>: the first attended position, whichever side
    pads) when both tokenizers have one, then every word (see `WORD`) that both tokenizers
    kept within `max_length` (truncation may cut them at different words); rows a text lacks
    are zero. T is what `encode` gives the model for the same texts.

    Raises:
        ValueError: a tokenizer without character offsets (not a "fast" tokenizer).
    """
    maps, firsts = [], []
    for proc in processors:
        try:
            enc = proc(
                list(texts),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
        except NotImplementedError:
            raise ValueError(
                f"token='word' needs character offsets, which {type(proc).__name__} does not "
                "give; load a fast tokenizer (use_fast=True) or use token='cls' / 'mean'"
            ) from None
        maps.append(
            [_word_of_tokens(t, o) for t, o in zip(texts, enc["offset_mapping"], strict=True)]
        )
        first = [mask.index(1) for mask in enc["attention_mask"]]
        special = enc["special_tokens_mask"]
        firsts.append([f if special[i][f] else None for i, f in enumerate(first)])
    rows = 2 + max((w for m in maps for ws in m for w in ws), default=-1)  # first token + words
    out = [torch.zeros(len(texts), rows, len(m[0])) for m in maps]
    for i in range(len(texts)):
        common = set.intersection(*(set(m[i]) - {-1} for m in maps))
        lead = all(f[i] is not None for f in firsts)
        for m, f, pool in zip(maps, firsts, out, strict=True):
            if lead:
                pool[i, 0, f[i]] = 1.0
            for t, w in enumerate(m[i]):
                if w in common:
                    pool[i, w + 1, t] = 1.0
    for pool in out:
        pool /= pool.sum(-1, keepdim=True).clamp_min(1)
    return out


def align_tokens(
    a: torch.Tensor, b: torch.Tensor, token: str, where: str, words=None, grids: bool = True
):
    """Pair token rows of A (B, T_a, d_a) with B's (B, T_b, d_b): (N, d_a), (N, d_b).

    token: "cls" (token 0), "mean", "all" (one to one; patch grids of another size are
    resampled onto A's grid), or "word" (each word's tokens averaged, words matched by their
    characters; `words` = the two `word_pooling` matrices of this batch).
    """
    if token == "word":
        pa, pb = words
        if (pa.shape[-1], pb.shape[-1]) != (a.shape[1], b.shape[1]):
            raise ValueError(
                f"{where}: token='word' pairs text tokens, but the captured tensors have "
                f"{a.shape[1]} and {b.shape[1]} tokens for {pa.shape[-1]} and {pb.shape[-1]}"
            )
        keep = pa.sum(-1) > 0  # the same rows in both: first token and words in common
        return (pa @ a)[keep], (pb @ b)[keep]
    if token == "cls":
        return a[:, 0], b[:, 0]
    if token == "mean":
        return a.mean(1), b.mean(1)
    if a.shape[1] != b.shape[1]:  # patch grids of another size: resample B's grid onto A's
        ga, gb = (_grid(a), _grid(b)) if grids else (None, None)  # text: 9 and 16 are no grids
        if ga is None or gb is None or ga[0] != gb[0]:
            raise ValueError(
                f"{where}: {a.shape[1]} tokens in A but {b.shape[1]} in B and they are not "
                "square patch grids; use token='cls', 'mean' or (text) 'word'"
            )
        p, side = ga
        grid = b[:, p:].transpose(1, 2).reshape(b.shape[0], b.shape[2], gb[1], gb[1])
        grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
        b = torch.cat([b[:, :p], grid.flatten(2).transpose(1, 2)], 1)
    return a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])


class InProj(nn.Module):
    """The fused q|k|v projection of an `nn.MultiheadAttention`, as a module of its own: MHA
    applies it (and out_proj) functionally, so no hook would see them otherwise. It holds no
    parameters: it reads the attention module's own."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "tasklift aligns nn.MultiheadAttention with one fused q|k|v projection only "
                "(no kdim/vdim, bias_k/bias_v or add_zero_attn)"
            )
        self.owner = [mha]  # a list, so it is not registered as a child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mha = self.owner[0]
        return F.linear(x, mha.in_proj_weight, mha.in_proj_bias)


def _unfused(mha: nn.MultiheadAttention, in_proj: InProj):
    """A forward for self-attention `mha` that calls `in_proj` and `mha.out_proj` as modules
    (so their hooks fire) and otherwise computes what MHA computes."""

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        if not (query is key is value):
            raise ValueError("tasklift calibrates self-attention (query is key is value) only")
        x = query if mha.batch_first else query.transpose(0, 1)  # (B, T, d)
        b, t, d = x.shape
        h = mha.num_heads
        q, k, v = in_proj(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None
        for m in (attn_mask, None if key_padding_mask is None else key_padding_mask[:, None, None]):
            if m is not None:
                m = (
                    torch.zeros(m.shape, dtype=q.dtype, device=m.device).masked_fill(
                        m, float("-inf")
                    )
                    if m.dtype == torch.bool
                    else m
                )
                mask = m if mask is None else mask + m
        p = mha.dropout if mha.training else 0.0
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal
        )
        out = mha.out_proj(o.transpose(1, 2).reshape(b, t, d))
        return (out if mha.batch_first else out.transpose(0, 1)), None

    return forward


def _capture_pass(
    model: nn.Module, points: dict, batch, loss_fn, backward: bool, in_projs: dict
) -> dict[tuple, torch.Tensor]:
    """One forward (and backward) pass: {(module name, signal): (B, T, d)} for every point."""
    modules = dict(model.named_modules())
    got = {}
    store = lambda key, t: got.__setitem__(key, _tokens(t, modules[key[0]]).cpu())  # noqa: E731
    for name, in_proj in in_projs.items():  # MHA: its projections as hookable modules
        modules[name].forward = _unfused(modules[name], in_proj)
    try:
        _run_pass(model, points, store, batch, loss_fn, backward)
    finally:
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
        timings: records the seconds of the passes ("calibrate") and of pairing and
            accumulating the rows ("statistics").

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
        raise ValueError(f"unknown calibration signal(s) {bad}; use of {SIGNALS}")
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    for b, a in pairs.items():
        for name, mods, model in ((a, mods_a, source), (b, mods_b, target)):
            if name not in mods:
                raise KeyError(f"{type(model).__name__} has no module {name!r}")
    sigs = _signals(target, pairs, signals)
    # affine per token on both sides, on every process: outputs' statistics from the inputs'
    maps = {b: (affine_of(mods_a[a]), affine_of(mods_b[b])) for b, a in pairs.items()}
    able = [{"input", "output"} <= set(sigs[b]) and None not in maps[b] for b in pairs]
    derived = {b: maps[b] for b, ok in zip(pairs, everywhere(able), strict=True) if ok}
    sigs = {b: [s for s in got if not (s == "output" and b in derived)] for b, got in sigs.items()}
    backward = any(s.startswith("grad") for s in signals)
    proj_a = {n: InProj(m) for n, m in mods_a.items() if isinstance(m, nn.MultiheadAttention)}
    proj_b = {n: InProj(m) for n, m in mods_b.items() if isinstance(m, nn.MultiheadAttention)}
    hook_a = lambda n: proj_a.get(n, mods_a[n])  # noqa: E731  (MHA: hook its q|k|v projection)
    hook_b = lambda n: proj_b.get(n, mods_b[n])  # noqa: E731
    pts_a = {(pairs[b], sig): (hook_a(pairs[b]), sig) for b in pairs for sig in sigs[b]}
    pts_b = {(b, sig): (hook_b(b), sig) for b in pairs for sig in sigs[b]}
    out: dict[tuple[str, str], GramStats] = {}
    clock = Timings() if timings is None else timings
    for batch in deal(batches):
        with clock("calibrate"):
            got_a = _capture_pass(source, pts_a, batch, loss_fn, backward, proj_a)
            got_b = _capture_pass(target, pts_b, batch, loss_fn, backward, proj_b)
        with clock("statistics"):
            pools = words(batch) if token == "word" else None
            for b, a in pairs.items():
                for sig in sigs[b]:
                    if (a, sig) not in got_a or (b, sig) not in got_b:
                        continue  # e.g. no gradient reaches the model's raw inputs
                    where = f"{a} -> {b} ({sig})"
                    xa, xb = align_tokens(
                        got_a[(a, sig)], got_b[(b, sig)], token, where, pools, grids
                    )
                    out.setdefault((b, sig), GramStats(gram=False, dtype=dtype)).update(xa, xb)
    out = all_reduce_stats(out, lambda: GramStats(gram=False, dtype=dtype))
    with clock("statistics"):
        for b, affine in derived.items():
            if (b, "input") in out:
                out[(b, "output")] = out[(b, "input")].mapped(*affine)
    return out
