"""Architecture families, described rather than coded: one declarative entry per family names
the role of every module (embeddings, q/k/v/o, norms, FFN gate/in/out, heads), its attention
layout (query and key/value head counts, fused q|k|v), its heads, and quirks such as Gemma's
scaled embeddings, the way mergekit describes architectures. Transfer pairs modules and blocks
their maps by these roles; adding a family is one entry here and its test.

Patterns are regular expressions on module names relative to the backbone; `(\\d+)` captures
the block. Position tables get no role: their offsets differ between families (RoBERTa and
MPNet start at 2) and RoPE families have none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "Family", "FAMILIES", "GENERIC", "family_of", "roles", "role_of", "head_counts",
    "attention_blocks", "VOCAB_ROLES", "FIXED_ROLES",
]  # fmt: skip

#: roles whose side is the vocabulary: never calibrated, moved only between equal vocabularies
VOCAB_ROLES = ("tokens", "lm_head")
#: roles laid out in per-head coordinates, which RoPE fixes (Gemma's q/k norms): carried as they
#: are between equal head sizes, left out otherwise; never calibrated
FIXED_ROLES = ("q_norm", "k_norm")
#: which side of an attention role is blocked by heads, and by which kind of head
_HEAD_SIDES = {"q": ("out", "q"), "k": ("out", "kv"), "v": ("out", "kv"), "o": ("in", "q")}


@dataclass(frozen=True)
class Family:
    """One architecture family.

    Args:
        name: the family's name.
        model_types: the `config.model_type` values it covers.
        roles: {name pattern relative to the backbone: role}.
        head: the sequence classifier's head layers (dense + tanh, then output), full names;
            empty where the classifier's own head is found by `transfer.head.head_linears`.
        lm_head: the causal LM's output layer (full name), "" for encoders.
        heads, kv_heads: config keys of the query and key/value head counts ("" = no GQA).
        embed_scale: token embeddings are multiplied by sqrt(hidden) (Gemma).
    """

    name: str
    model_types: tuple[str, ...]
    roles: Mapping[str, str] = field(repr=False)
    head: tuple[str, ...] = ()
    lm_head: str = ""
    heads: str = "num_attention_heads"
    kv_heads: str = ""
    embed_scale: bool = False


_BERT_ROLES = {
    r"embeddings\.word_embeddings": "tokens",
    r"embeddings\.LayerNorm": "embed_norm",
    r"encoder\.layer\.(\d+)\.attention\.self\.query": "q",
    r"encoder\.layer\.(\d+)\.attention\.self\.key": "k",
    r"encoder\.layer\.(\d+)\.attention\.self\.value": "v",
    r"encoder\.layer\.(\d+)\.attention\.output\.dense": "o",
    r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm": "post_attn_norm",
    r"encoder\.layer\.(\d+)\.intermediate\.dense": "ffn_in",
    r"encoder\.layer\.(\d+)\.output\.dense": "ffn_out",
    r"encoder\.layer\.(\d+)\.output\.LayerNorm": "post_ffn_norm",
}
_LLAMA_ROLES = {
    r"embed_tokens": "tokens",
    r"layers\.(\d+)\.input_layernorm": "pre_attn_norm",
    r"layers\.(\d+)\.self_attn\.q_proj": "q",
    r"layers\.(\d+)\.self_attn\.k_proj": "k",
    r"layers\.(\d+)\.self_attn\.v_proj": "v",
    r"layers\.(\d+)\.self_attn\.o_proj": "o",
    r"layers\.(\d+)\.post_attention_layernorm": "pre_ffn_norm",
    r"layers\.(\d+)\.mlp\.gate_proj": "ffn_gate",
    r"layers\.(\d+)\.mlp\.up_proj": "ffn_in",
    r"layers\.(\d+)\.mlp\.down_proj": "ffn_out",
    r"norm": "final_norm",
}
_DECODER = dict(lm_head="lm_head", kv_heads="num_key_value_heads")
#: RMSNorms of each head's queries and keys (Qwen3, Gemma-3): per-head coordinates, which RoPE
#: fixes, so the residual stream's map must not touch them
_QK_NORMS = {
    r"layers\.(\d+)\.self_attn\.q_norm": "q_norm",
    r"layers\.(\d+)\.self_attn\.k_norm": "k_norm",
}

FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",), _BERT_ROLES, head=("bert.pooler.dense", "classifier")),
    Family("roberta", ("roberta",), _BERT_ROLES, head=("classifier.dense", "classifier.out_proj")),
    Family(
        "mpnet",
        ("mpnet",),
        {
            r"embeddings\.word_embeddings": "tokens",
            r"embeddings\.LayerNorm": "embed_norm",
            r"encoder\.layer\.(\d+)\.attention\.attn\.q": "q",
            r"encoder\.layer\.(\d+)\.attention\.attn\.k": "k",
            r"encoder\.layer\.(\d+)\.attention\.attn\.v": "v",
            r"encoder\.layer\.(\d+)\.attention\.attn\.o": "o",
            r"encoder\.layer\.(\d+)\.attention\.LayerNorm": "post_attn_norm",
            r"encoder\.layer\.(\d+)\.intermediate\.dense": "ffn_in",
            r"encoder\.layer\.(\d+)\.output\.dense": "ffn_out",
            r"encoder\.layer\.(\d+)\.output\.LayerNorm": "post_ffn_norm",
        },
        head=("classifier.dense", "classifier.out_proj"),
    ),  # fmt: skip
    Family(
        "distilbert",
        ("distilbert",),
        {
            r"embeddings\.word_embeddings": "tokens",
            r"embeddings\.LayerNorm": "embed_norm",
            r"transformer\.layer\.(\d+)\.attention\.q_lin": "q",
            r"transformer\.layer\.(\d+)\.attention\.k_lin": "k",
            r"transformer\.layer\.(\d+)\.attention\.v_lin": "v",
            r"transformer\.layer\.(\d+)\.attention\.out_lin": "o",
            r"transformer\.layer\.(\d+)\.sa_layer_norm": "post_attn_norm",
            r"transformer\.layer\.(\d+)\.ffn\.lin1": "ffn_in",
            r"transformer\.layer\.(\d+)\.ffn\.lin2": "ffn_out",
            r"transformer\.layer\.(\d+)\.output_layer_norm": "post_ffn_norm",
        },
        head=("pre_classifier", "classifier"),
    ),  # fmt: skip
    Family(
        "vit",
        ("vit", "deit"),
        {
            r"embeddings\.patch_embeddings\.projection": "patches",
            r"encoder\.layer\.(\d+)\.layernorm_before": "pre_attn_norm",
            r"encoder\.layer\.(\d+)\.attention\.attention\.query": "q",
            r"encoder\.layer\.(\d+)\.attention\.attention\.key": "k",
            r"encoder\.layer\.(\d+)\.attention\.attention\.value": "v",
            r"encoder\.layer\.(\d+)\.attention\.output\.dense": "o",
            r"encoder\.layer\.(\d+)\.layernorm_after": "pre_ffn_norm",
            r"encoder\.layer\.(\d+)\.intermediate\.dense": "ffn_in",
            r"encoder\.layer\.(\d+)\.output\.dense": "ffn_out",
            r"layernorm": "final_norm",
        },
    ),  # fmt: skip
    Family(
        "clip",
        ("clip_vision_model", "siglip_vision_model"),
        {
            r"embeddings\.patch_embedding": "patches",
            r"encoder\.layers\.(\d+)\.layer_norm1": "pre_attn_norm",
            r"encoder\.layers\.(\d+)\.self_attn\.q_proj": "q",
            r"encoder\.layers\.(\d+)\.self_attn\.k_proj": "k",
            r"encoder\.layers\.(\d+)\.self_attn\.v_proj": "v",
            r"encoder\.layers\.(\d+)\.self_attn\.out_proj": "o",
            r"encoder\.layers\.(\d+)\.layer_norm2": "pre_ffn_norm",
            r"encoder\.layers\.(\d+)\.mlp\.fc1": "ffn_in",
            r"encoder\.layers\.(\d+)\.mlp\.fc2": "ffn_out",
            r"post_layernorm": "final_norm",
        },
    ),  # fmt: skip
    Family(
        "gpt2",
        ("gpt2",),
        {
            r"wte": "tokens",
            r"h\.(\d+)\.ln_1": "pre_attn_norm",
            r"h\.(\d+)\.attn\.c_attn": "qkv",
            r"h\.(\d+)\.attn\.c_proj": "o",
            r"h\.(\d+)\.ln_2": "pre_ffn_norm",
            r"h\.(\d+)\.mlp\.c_fc": "ffn_in",
            r"h\.(\d+)\.mlp\.c_proj": "ffn_out",
            r"ln_f": "final_norm",
        },
        lm_head="lm_head",
    ),  # fmt: skip
    Family("llama", ("llama", "mistral", "qwen2"), _LLAMA_ROLES, **_DECODER),
    Family("qwen3", ("qwen3",), {**_LLAMA_ROLES, **_QK_NORMS}, **_DECODER),
    Family(
        "gemma3",
        ("gemma3_text", "gemma3", "gemma2"),
        {
            **_LLAMA_ROLES,
            **_QK_NORMS,
            r"layers\.(\d+)\.post_attention_layernorm": "post_attn_norm",
            r"layers\.(\d+)\.pre_feedforward_layernorm": "pre_ffn_norm",
            r"layers\.(\d+)\.post_feedforward_layernorm": "post_ffn_norm",
        },
        embed_scale=True,
        **_DECODER,
    ),  # fmt: skip
)
#: models of no known family: roles by the last part of a module's name
GENERIC = Family(
    "generic",
    (),
    {r"(?:.*\.)?(?:query|q_proj|q_lin)": "q", r"(?:.*\.)?(?:key|k_proj|k_lin)": "k",
     r"(?:.*\.)?(?:value|v_proj|v_lin)": "v",
     r"(?:.*\.)?(?:attention\.output\.dense|out_proj|o_proj|out_lin|attn\.c_proj)": "o",
     r"(?:.*\.)?(?:c_attn|qkv|query_key_value|Wqkv)": "qkv"},
)  # fmt: skip
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(model: nn.Module) -> Family:
    """The model's family by its config.model_type (a vision tower's own config first), else
    `GENERIC`, which knows attention layers by their names' last part."""
    config = getattr(model, "config", None)
    return _BY_TYPE.get(getattr(config, "model_type", None), GENERIC)


def _prefix(model: nn.Module) -> str:
    from .models import backbone

    enc = backbone(model)
    prefix = next((n for n, m in model.named_modules() if m is enc), "")
    return f"{prefix}." if prefix else ""


def roles(model: nn.Module) -> dict[str, tuple[str, int]]:
    """{module name: (role, block or -1)} for every module the model's family names."""
    fam, prefix, out = family_of(model), _prefix(model), {}
    for name, _ in model.named_modules():
        if name == fam.lm_head and name:
            out[name] = ("lm_head", -1)
        if not name.startswith(prefix):
            continue
        for pattern, role in fam.roles.items():
            hit = re.fullmatch(pattern, name[len(prefix) :])
            if hit:
                out[name] = (role, int(hit.group(1)) if hit.groups() else -1)
    return out


def role_of(model: nn.Module, name: str) -> str | None:
    """The role of module `name` in `model`, or None."""
    return roles(model).get(name, (None, -1))[0]


def head_counts(model: nn.Module) -> tuple[int | None, int | None]:
    """(query heads, key/value heads) from the config (a vision tower's own config first)."""
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", config)
    fam = family_of(model)
    q = getattr(config, fam.heads, None)
    kv = getattr(config, fam.kv_heads, None) if fam.kv_heads else None
    return q, kv or q


def attention_blocks(
    model: nn.Module, name: str, role: str | None
) -> dict[str, tuple[int, int, str]]:
    """{side: (parts, heads per part, kind)} of module `name`'s head-blocked sides: a fused
    q|k|v output is 3 parts of query heads; a side laid out by heads is 1 part of query ("q")
    or key/value ("kv") heads; empty for other modules."""
    q, kv = head_counts(model)
    if role == "qkv" or isinstance(dict(model.named_modules()).get(name), nn.MultiheadAttention):
        mha = dict(model.named_modules()).get(name)
        heads = mha.num_heads if isinstance(mha, nn.MultiheadAttention) else q
        return {"out": (3, heads, "q")}
    if role in _HEAD_SIDES and q is not None:
        side, kind = _HEAD_SIDES[role]
        return {side: (1, q if kind == "q" else kv, kind)}
    return {}
