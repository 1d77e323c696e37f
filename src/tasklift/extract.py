"""Pooled embeddings of every requested layer from ONE forward pass, streamed batch by batch.

Layer i means hidden state i as in HF's `output_hidden_states`: 0 is the input of the first
block (embeddings), i ≥ 1 the output of block i. Hooks pool inside the forward (memory B × d per
layer, not B × T × d) and the pass stops after the deepest requested block.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import is_texts, num_items, take
from .defaults import POOLS
from .hooks import capture, run
from .models import blocks, encode, final_norm, is_cnn, layer_width, token_limit

__all__ = ["resolve_layers", "iter_embeddings", "embed", "pooled_width", "POOLS", "NORMED_POOLS"]

#: pools whose tokens pass the model's own final norm first (DINOv2's classifier input)
NORMED_POOLS = ("cls+mean",)


def resolve_layers(model: nn.Module, layers: str | int | Sequence[int] = "all") -> list[int]:
    """Normalise a layer selector ("all", i, -1, [i, j]) to sorted indices in 0..L.

    Raises:
        ValueError: an index outside 0..L (or -(L+1)..-1).
    """
    n = len(blocks(model))
    if isinstance(layers, str):
        if layers != "all":
            return resolve_layers(model, [int(x) for x in layers.split(",")])
        return list(range(n + 1))
    out = []
    for i in [layers] if isinstance(layers, int) else layers:
        if not -(n + 1) <= i <= n:
            raise ValueError(
                f"layer {i} is out of range: this model has {n} blocks, so layers are "
                f"0..{n} (0 = embeddings, -1 = last)"
            )
        out.append(i % (n + 1))
    return sorted(set(out))


def pooled_width(model: nn.Module, layer: int, pool: str) -> int:
    """Width of hidden state `layer` once pooled: twice the layer's for "cls+mean" (a CNN's
    feature maps are averaged whatever the pool)."""
    return layer_width(model, layer) * (2 if pool in NORMED_POOLS and not is_cnn(model) else 1)


def _mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return h.mean(1)
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


def _pool(
    h: torch.Tensor,
    mask: torch.Tensor | None,
    pool: str,
    norm: nn.Module | None = None,
    skip: int = 1,
) -> torch.Tensor:
    if h.ndim == 4:  # a CNN's (B, C, H, W) feature map: global average pooling, whatever `pool`
        return h.mean((2, 3))
    if pool in NORMED_POOLS:  # [CLS] joined to the mean of the tokens after the first `skip`
        h = h if norm is None else norm(h)
        rest = _mean(h[:, skip:], None if mask is None else mask[:, skip:])
        return torch.cat([h[:, 0], rest], -1)
    if pool in ("cls", "first"):
        return h[:, 0]
    if pool == "last":  # a decoder's summary: its last attended token, whichever side pads
        if mask is None:
            return h[:, -1]
        last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
        return h[torch.arange(h.shape[0]), last.to(h.device)]
    return _mean(h, mask)


def _length_order(inputs, processor, max_length: int) -> np.ndarray:
    """Texts by token count (one extra, unpadded tokenisation: ~2 s per 20k tweets, 1% of
    their extraction), so each batch pads little; any other input keeps its order."""
    if not is_texts(inputs):
        return np.arange(num_items(inputs))
    if processor is None:
        return np.argsort([len(t) for t in inputs], kind="stable")
    lengths = []
    for start in range(0, len(inputs), 2048):  # in parts: 20k texts at once hold 169 MB
        ids = processor(inputs[start : start + 2048], truncation=True, max_length=max_length)
        lengths += [len(x) for x in ids["input_ids"]]
    return np.argsort(lengths, kind="stable")


def _points(model: nn.Module, layers: list[int]) -> dict[int, tuple[nn.Module, str]]:
    bl = blocks(model)
    return {i: (bl[0], "input") if i == 0 else (bl[i - 1], "output") for i in layers}


def iter_embeddings(
    model: nn.Module,
    inputs,
    processor=None,
    *,
    layers: str | int | Sequence[int] = "all",
    pool: str = "cls",
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "extract",
) -> Iterator[tuple[np.ndarray, dict[int, torch.Tensor]]]:
    """Yield, per batch, (row indices, {layer: pooled embedding (B, d) float32 on CPU}).

    Text is batched in order of token count (less padding: 1.5x faster on CPU than the given
    order); the indices say which input rows each batch holds. The order depends only on the
    inputs and the tokenizer, so two streams over the same inputs with the same tokenizer (base
    and fine-tuned) yield the same rows batch for batch.

    Args:
        model: HF encoder or classifier (its device and dtype are used).
        inputs: list of strings, image array (N, C, H, W), or dict of encoded tensors.
        processor: tokenizer / image processor for raw inputs.
        layers: "all", an index, or a list (see `resolve_layers`).
        pool: "cls" / "first" (token 0), "mean" (over the attention mask), "last" (the last
            attended token: what a decoder's sequence classifier reads) or "cls+mean" (each
            token through the model's own final norm, then [CLS] joined to the mean of the
            patch tokens, register tokens left out: what DINOv2's classifier reads; 2 x wide).
        max_length: token limit for texts (`models.token_limit`: default 128 or the model's
            maximum if lower; more than that maximum is an error).

    Raises:
        ValueError: empty inputs, unknown pool, bad layer index or max_length.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; use one of {POOLS}")
    n = num_items(inputs)
    if n == 0:
        raise ValueError("the dataset is empty: nothing to extract")
    layers = resolve_layers(model, layers)
    if is_texts(inputs):
        max_length = token_limit(max_length, model, processor)
    param = next(model.parameters())
    found: dict[int, torch.Tensor] = {}
    mask = None

    norm = final_norm(model) if pool in NORMED_POOLS else None
    skip = 1 + (getattr(getattr(model, "config", None), "num_register_tokens", 0) or 0)

    def store(i, h):
        found[i] = _pool(h, mask, pool, norm, skip).detach().to("cpu", torch.float32)

    points = _points(model, layers)
    order = _length_order(inputs, processor, max_length)
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        batch = encode(take(inputs, idx), processor, max_length=max_length)
        batch = {
            k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype)
            for k, v in batch.items()
        }
        mask = batch.get("attention_mask")
        found.clear()
        # Hooks live for one batch only, so no hook outlives a `yield` (two interleaved
        # generators over models that share modules would otherwise fire each other's hooks).
        with capture(points, store, stop_after=layers[-1]), torch.inference_mode():
            run(functools.partial(model, **batch))
        yield idx, dict(found)


def embed(model: nn.Module, inputs, processor=None, **kwargs) -> dict[int, torch.Tensor]:
    """Like `iter_embeddings` but gathered in input order: {layer: (N, d)}."""
    out: dict[int, torch.Tensor] = {}
    for idx, batch in iter_embeddings(model, inputs, processor, **kwargs):
        for i, v in batch.items():
            if i not in out:
                out[i] = torch.empty(num_items(inputs), v.shape[1])
            out[i][torch.from_numpy(idx)] = v
    return out
