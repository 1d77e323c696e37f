"""Pairing token rows between A and B: one to one (patch grids of another size resampled),
the first token, the mean, or each word's tokens averaged and words matched by their
characters across two tokenizers (`word_pooling`)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["align_tokens", "word_pooling", "WORD"]


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
