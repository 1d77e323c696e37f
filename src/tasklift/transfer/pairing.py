"""Which module of A each module of B takes: names agree up to the block index, depths are
matched proportionally (or by a given block map); models of two different known families
(`tasklift.families`) are paired by role instead, since their names do not agree (BERT's
`attention.self.query` is MPNet's `attention.attn.q`; Gemma's `post_attention_layernorm` is not
Llama's).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..families import GENERIC, family_of, roles
from ..models import blocks
from ..stats import AffineMap

__all__ = [
    "match_modules",
    "head_pair",
    "owns_params",
    "module_dims",
    "is_matrix",
    "affine_of",
    "is_affine",
    "split_alike",
    "token_refusal",
    "unpaired",
]

_MATRIX = (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


def _cross(source: nn.Module, target: nn.Module) -> bool:
    """True when the two models are of different families that `FAMILIES` both describes."""
    fa, fb = family_of(source), family_of(target)
    return fa is not fb and GENERIC not in (fa, fb)


def head_pair(source: nn.Module, target: nn.Module, head: list[str]) -> tuple[list, list]:
    """(A's head layers, B's head layers): each family's `head` where both families name one
    (BERT's pooler belongs to the task head: it is trained with the classifier, and
    checkpoints such as MiniLM-L3 ship without one), else `head` on both sides.

    Raises:
        ValueError: the families differ and one has no known head.
    """
    fa, fb = family_of(source), family_of(target)
    if fa.head and fb.head:
        return list(fa.head), list(fb.head)
    if _cross(source, target):
        raise ValueError(
            f"no known classification head for model family {fa.name!r} or {fb.name!r}"
        )
    return list(head), list(head)


def _by_role(model: nn.Module) -> dict[tuple[str, int], str]:
    """{(role, block or -1): module name}."""
    return {rb: name for name, rb in roles(model).items()}


def owns_params(module: nn.Module) -> bool:
    """True if the module holds parameters of its own (not only through children)."""
    return next(module.parameters(recurse=False), None) is not None


def is_matrix(module: nn.Module) -> bool:
    """True for layers with an input and an output side (linear, GPT-2 Conv1D, convolutions,
    and MultiheadAttention, whose own matrix is its fused q|k|v projection)."""
    return isinstance(module, _MATRIX)


#: linear layers, exactly these classes (a subclass such as a quantised linear packs its weight;
#: MHA's out_proj is torch's NonDynamicallyQuantizableLinear, a plain linear)
_LINEARS = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def _affine_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (weight, bias) parameters of an `is_affine` module as held, else None."""
    kind = type(module)
    if kind in _LINEARS or kind is Conv1D:
        return module.weight, module.bias
    if kind is nn.MultiheadAttention and module._qkv_same_embed_dim:
        return module.in_proj_weight, module.in_proj_bias
    if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.groups == 1:
        ones = all(v == 1 for v in (*module.kernel_size, *module.stride, *module.dilation))
        if ones and (module.padding in ("valid", "same") or not any(module.padding)):
            return module.weight, module.bias
    return None


def is_affine(module: nn.Module) -> bool:
    """True for modules whose class maps each token's row x to x Wᵀ + b (linear, Conv1D, MHA's
    fused q|k|v, 1x1 stride-1 convolutions), so output statistics follow from input ones."""
    return _affine_params(module) is not None


def _plain_call(module: nn.Module) -> bool:
    """True when calling the module runs its class's forward and no hooks of its own."""
    forward = vars(module).get("forward")  # accelerate restores a bound copy of the class's
    own = forward is None or getattr(forward, "__func__", None) is type(module).forward
    return own and not (module._forward_hooks or module._forward_pre_hooks)


def affine_of(module: nn.Module) -> AffineMap | None:
    """(W (d_out, d_in), bias) of an `is_affine` module computing x Wᵀ + b with the weights it
    holds, detached; else None (hooks, a replaced forward, weights offloaded or sharded)."""
    got = _affine_params(module)
    if got is None or not _plain_call(module):
        return None
    plain = lambda t: t.device.type != "meta" and type(t.data) is torch.Tensor  # noqa: E731
    w, b = got
    if not all(plain(t) for t in got if t is not None) or w.dim() < 2:
        return None
    w = w.detach().T if type(module) is Conv1D else w.detach().flatten(1)
    if tuple(w.shape[::-1]) != module_dims(module):  # a shard of the weight, not all of it
        return None
    return w, None if b is None else b.detach()


def module_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a matrix module; vector modules (norms, embeddings) report d_in = 0."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.MultiheadAttention):  # in_proj_weight (3d, d); out_proj: a child
        return module.embed_dim, 3 * module.embed_dim
    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels
    return 0, max(p.shape[-1] for p in module.parameters(recurse=False))


def _block_list(model: nn.Module) -> tuple[str, int]:
    """(name of the transformer-block ModuleList, its length), or ("", 0) where there is none."""
    try:
        found = blocks(model)
    except (ValueError, AttributeError):
        return "", 0
    return next(n for n, m in model.named_modules() if m is found), len(found)


def proportional_depth(la: int, lb: int) -> dict[int, int]:
    """B's block j takes A's block round(j (L_A − 1) / (L_B − 1))."""
    return {j: round(j * (la - 1) / max(lb - 1, 1)) for j in range(lb)}


def match_modules(
    source: nn.Module, target: nn.Module, block_map: Mapping[int, int] | None = None
) -> dict[str, str]:
    """Pair each parameter-holding module of the target with the source module of the same role.

    Names must agree up to the block index; target block j takes source block
    round(j (L_A − 1) / (L_B − 1)) (proportional depth), or `block_map[j]` when given
    (target blocks missing from it are left untouched). Models of different families that
    `tasklift.families` describes are paired by role instead of name.

    Returns:
        {target module name: source module name}.
    """
    pa, la = _block_list(source)
    pb, lb = _block_list(target)
    if block_map is None:
        block_map = proportional_depth(la, lb) if la else {}
    block_map = {int(k): int(v) for k, v in block_map.items()}
    bad = {k: v for k, v in block_map.items() if not (0 <= k < lb and 0 <= v < la)}
    if bad:  # a block that does not exist would silently move nothing
        raise ValueError(
            f"block_map {bad} names blocks that do not exist: the target has blocks 0..{lb - 1} "
            f"(keys), the source 0..{la - 1} (values)"
        )
    if _cross(source, target):
        roles_a = _by_role(source)
        return {
            name: roles_a[(role, block_map[j] if j >= 0 else -1)]
            for (role, j), name in _by_role(target).items()
            if (j < 0 or j in block_map) and (role, block_map[j] if j >= 0 else -1) in roles_a
        }
    have = {n for n, m in source.named_modules() if owns_params(m)}
    pairs = {}
    for name, m in target.named_modules():
        if not owns_params(m):
            continue
        src = name
        if pb and name.startswith(pb + "."):
            j, _, rest = name[len(pb) + 1 :].partition(".")
            if int(j) not in block_map:
                continue
            src = f"{pa}.{block_map[int(j)]}" + (f".{rest}" if rest else "")
        if src in have:
            pairs[name] = src
    return pairs


def _splits(tokenizer, texts: list[str], max_length: int) -> list[list]:
    """Where `tokenizer` splits each text: its tokens' character offsets (special tokens
    (0, 0))."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [[tuple(map(int, o)) for o in row] for row in enc["offset_mapping"]]


def split_alike(texts: list[str], tokenizers: tuple, max_length: int) -> tuple[int, str | None]:
    """How many of `texts` A's and B's tokenizers split into the same tokens (by character
    offsets), and the first text they split differently (None if none): token='all' pairs
    tokens by position, sound only where every text splits alike."""
    tok_a, tok_b = tokenizers
    if tok_a is tok_b:
        return len(texts), None
    try:
        got = _splits(tok_a, texts, max_length), _splits(tok_b, texts, max_length)
    except NotImplementedError:  # a slow tokenizer: compare the token strings
        enc = [t(texts, truncation=True, max_length=max_length)["input_ids"] for t in tokenizers]
        got = [
            [t.convert_ids_to_tokens(r) for r in e] for t, e in zip(tokenizers, enc, strict=True)
        ]
    differ = [t for t, a, b in zip(texts, *got, strict=True) if a != b]
    return len(texts) - len(differ), (differ[0] if differ else None)


def unpaired(source: nn.Module, target: nn.Module) -> str:
    """The refusal where no module of B pairs with one of A."""
    fa, fb = family_of(source).name, family_of(target).name
    return f"no module of B ({fb}) pairs with one of A ({fa})"


def token_refusal(texts, tokenizers: tuple, max_length: int, *, padded: bool = False) -> str | None:
    """Why token='all' cannot pair these texts' tokens (None where it can): the two tokenizers
    split some of them differently, or (`padded`: batches padded on each tokenizer's own side)
    pad on different sides, so rows paired by position would be unrelated tokens (silently
    wrong statistics). `tasklift check` and `Transfer.fit` ask the same."""
    if not texts or None in tokenizers:
        return None
    sides = [getattr(t, "padding_side", "right") for t in tokenizers]
    if padded and sides[0] != sides[1]:
        return (
            f"A's tokenizer pads on the {sides[0]} and B's on the {sides[1]}: token='all' "
            "would pair padding with tokens; set both tokenizers' padding_side alike or pass "
            "token='word'"
        )
    alike, first = split_alike(list(texts), tokenizers, max_length)
    if first is None:
        return None
    return (
        f"A's and B's tokenizers split {len(texts) - alike} of {len(texts)} calibration texts "
        f"differently (e.g. {first[:60]!r}): token='all' would pair unrelated tokens by "
        "position; pass token='word' (words matched by characters), 'cls' or 'mean'"
    )
