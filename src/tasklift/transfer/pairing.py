"""Which module of A each module of B takes: names agree up to the block index, depths are
matched proportionally (or by a given block map), and fused q|k|v projections are marked so
their three parts are aligned separately.

Across architecture families names do not agree (BERT's `attention.self.query` is MPNet's
`attention.attn.q`), so `ROLES` names each family's modules by role, the way PEFT lists target
modules per model type: embeddings, q/k/v/o, the norms, FFN in/out, and the task head. Two models
of different families are paired role by role.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..models import backbone, blocks

__all__ = [
    "match_modules",
    "family",
    "head_pair",
    "ROLES",
    "HEADS",
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
_MATRIX = (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


_BERT = {
    r"embeddings\.word_embeddings": "tokens",
    r"embeddings\.LayerNorm": "embed_norm",
    r"encoder\.layer\.(\d+)\.attention\.self\.query": "q",
    r"encoder\.layer\.(\d+)\.attention\.self\.key": "k",
    r"encoder\.layer\.(\d+)\.attention\.self\.value": "v",
    r"encoder\.layer\.(\d+)\.attention\.output\.dense": "o",
    r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm": "attn_norm",
    r"encoder\.layer\.(\d+)\.intermediate\.dense": "ffn_in",
    r"encoder\.layer\.(\d+)\.output\.dense": "ffn_out",
    r"encoder\.layer\.(\d+)\.output\.LayerNorm": "ffn_norm",
}
#: module roles per family (config.model_type), by name relative to the backbone; (\d+) is the
#: block. Position tables are left out: their offsets differ (RoBERTa and MPNet start at 2).
ROLES: dict[str, dict[str, str]] = {
    "bert": _BERT,
    "roberta": _BERT,
    "mpnet": {
        r"embeddings\.word_embeddings": "tokens",
        r"embeddings\.LayerNorm": "embed_norm",
        r"encoder\.layer\.(\d+)\.attention\.attn\.q": "q",
        r"encoder\.layer\.(\d+)\.attention\.attn\.k": "k",
        r"encoder\.layer\.(\d+)\.attention\.attn\.v": "v",
        r"encoder\.layer\.(\d+)\.attention\.attn\.o": "o",
        r"encoder\.layer\.(\d+)\.attention\.LayerNorm": "attn_norm",
        r"encoder\.layer\.(\d+)\.intermediate\.dense": "ffn_in",
        r"encoder\.layer\.(\d+)\.output\.dense": "ffn_out",
        r"encoder\.layer\.(\d+)\.output\.LayerNorm": "ffn_norm",
    },
}
#: the task head of each family's sequence classifier, as (dense + tanh, output layer): BERT's
#: pooler reads token 0 exactly as RoBERTa's and MPNet's classifier.dense does
HEADS: dict[str, tuple[str, str]] = {
    "bert": ("bert.pooler.dense", "classifier"),
    "roberta": ("classifier.dense", "classifier.out_proj"),
    "mpnet": ("classifier.dense", "classifier.out_proj"),
}


def family(model: nn.Module) -> str:
    """The model's architecture family (config.model_type), or its class name."""
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def _cross(source: nn.Module, target: nn.Module) -> bool:
    """True when the two models are of different families that `ROLES` both knows."""
    fa, fb = family(source), family(target)
    return fa != fb and fa in ROLES and fb in ROLES and ROLES[fa] is not ROLES[fb]


def head_pair(source: nn.Module, target: nn.Module, head: list[str]) -> tuple[list, list]:
    """(A's head layers, B's head layers): each family's `HEADS` entry where both families are
    known (BERT's pooler belongs to the task head: it is trained with the classifier, and
    checkpoints such as MiniLM-L3 ship without one), else `head` on both sides.

    Raises:
        ValueError: the families differ and one has no known head.
    """
    fa, fb = family(source), family(target)
    if fa in HEADS and fb in HEADS:
        return list(HEADS[fa]), list(HEADS[fb])
    if fa != fb and _cross(source, target):
        raise ValueError(f"no known classification head for model family {fa!r} or {fb!r}")
    return list(head), list(head)


def _roles(model: nn.Module) -> dict[tuple[str, int], str]:
    """{(role, block or -1): module name} for every module the model's family names."""
    enc = backbone(model)
    prefix = next((n for n, m in model.named_modules() if m is enc), "")
    prefix = f"{prefix}." if prefix else ""
    out = {}
    for name, _ in model.named_modules():
        rel = name[len(prefix) :] if name.startswith(prefix) else None
        for pattern, role in ROLES[family(model)].items():
            hit = re.fullmatch(pattern, rel) if rel is not None else None
            if hit:
                out[(role, int(hit.group(1)) if hit.groups() else -1)] = name
    return out


def owns_params(module: nn.Module) -> bool:
    """True if the module holds parameters of its own (not only through children)."""
    return next(module.parameters(recurse=False), None) is not None


def is_matrix(module: nn.Module) -> bool:
    """True for layers with an input and an output side (linear, GPT-2 Conv1D, convolutions,
    and MultiheadAttention, whose own matrix is its fused q|k|v projection)."""
    return isinstance(module, _MATRIX)


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


def match_modules(
    source: nn.Module, target: nn.Module, block_map: Mapping[int, int] | None = None
) -> dict[str, str]:
    """Pair each parameter-holding module of the target with the source module of the same role.

    Names must agree up to the block index; target block j takes source block
    round(j (L_A − 1) / (L_B − 1)) (proportional depth), or `block_map[j]` when given
    (target blocks missing from it are left untouched). Models of different families that
    `ROLES` knows are paired by role instead of name.

    Returns:
        {target module name: source module name}.
    """
    pa, la = _block_list(source)
    pb, lb = _block_list(target)
    if block_map is None:
        block_map = {j: round(j * (la - 1) / max(lb - 1, 1)) for j in range(lb)} if la else {}
    block_map = {int(k): int(v) for k, v in block_map.items()}
    if _cross(source, target):
        roles_a = _roles(source)
        return {
            name: roles_a[(role, block_map[j] if j >= 0 else -1)]
            for (role, j), name in _roles(target).items()
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
