"""Which module of A each module of B takes: names agree up to the block index, depths are
matched proportionally (or by a given block map), and fused q|k|v projections are marked so
their three parts are aligned separately."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..models import blocks

__all__ = [
    "match_modules",
    "owns_params",
    "module_dims",
    "is_matrix",
    "FUSED",
    "HEADS_OUT",
    "HEADS_IN",
]

#: fused q/k/v projections: their output side is split in three before it is aligned
FUSED = re.compile(r"(^|\.)(c_attn|qkv|query_key_value|Wqkv)$")
#: layers whose output (HEADS_OUT) or input (HEADS_IN) side is blocked by attention head
HEADS_OUT = re.compile(r"(^|\.)(query|key|value|q_proj|k_proj|v_proj|q_lin|k_lin|v_lin)$")
HEADS_IN = re.compile(r"(^|\.)(attention\.output\.dense|out_proj|o_proj|out_lin|attn\.c_proj)$")
_MATRIX = (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def owns_params(module: nn.Module) -> bool:
    """True if the module holds parameters of its own (not only through children)."""
    return next(module.parameters(recurse=False), None) is not None


def is_matrix(module: nn.Module) -> bool:
    """True for layers with an input and an output side (linear, GPT-2 Conv1D, convolutions)."""
    return isinstance(module, _MATRIX)


def module_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a matrix module; vector modules (norms, embeddings) report d_in = 0."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
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


def match_modules(
    source: nn.Module, target: nn.Module, block_map: Mapping[int, int] | None = None
) -> dict[str, str]:
    """Pair each parameter-holding module of the target with the source module of the same role.

    Names must agree up to the block index; target block j takes source block
    round(j (L_A − 1) / (L_B − 1)) (proportional depth), or `block_map[j]` when given
    (target blocks missing from it are left untouched).

    Returns:
        {target module name: source module name}.
    """
    pa, la = _block_list(source)
    pb, lb = _block_list(target)
    if block_map is None:
        block_map = {j: round(j * (la - 1) / max(lb - 1, 1)) for j in range(lb)} if la else {}
    block_map = {int(k): int(v) for k, v in block_map.items()}
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
