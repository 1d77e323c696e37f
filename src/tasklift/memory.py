"""Memory of a transfer (`Transfer.fit`), predicted from the two models' configs alone.

The models are built on the meta device (a 70B costs nothing): widths, depths and parameter
counts are the real ones, read through their `tasklift.families` roles, and the module pairs and
calibration passes are those `Transfer` makes (`match_modules`, `plan_passes`). Each phase of a
fit (`_PHASES`) holds some of the components; models, activations and forwards live on the
models' device (`ON_DEVICE`), statistics, captures, task vectors and solves in host memory.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .families import VOCAB_ROLES, roles
from .models import backbone
from .transfer.calibration import _signals, keep_budget, plan_passes
from .transfer.head import head_linears
from .transfer.methods import STATS_DTYPE, get_method
from .transfer.pairing import (
    head_pair,
    is_affine,
    is_matrix,
    match_modules,
    module_dims,
    owns_params,
)

__all__ = ["skeleton", "transfer_memory", "SHAPES", "ON_DEVICE"]

#: autograd activations saved per token and block (elements), within 1-4% of saved_tensors_hooks
#: counts on Qwen2-0.5B, 1.5B and MiniLM blocks (frozen weights, SDPA, padded batches): 6·d (two
#: norm inputs; q, k, v at the query width, as SDPA gets them with a padding mask; the attention
#: output) + f per FFN elementwise input (3 with a gate: act(gate), up, their product)
_SAVED_D, _SAVED_F = 6, {False: 1, True: 3}
#: float32 (tokens × vocabulary) arrays of a causal LM as its backward starts: the log-softmax
#: output, its gradient, the logits' gradient
_LOGIT_COPIES = 3
#: float64 d_A × d_B arrays alive while one side of a module is solved: both signals' XᵀY, the
#: tie-break sum, R and its Newton-Schulz temporaries (a cutoff below 1e-3; an upper bound
#: above, where the step is skipped), the coefficient copy, the assembled map
_SOLVE_COPIES = 8
#: modules of a block that read one input tensor (captured once when the model is float32)
_SAME_INPUT = {"q": "attn", "k": "attn", "v": "attn", "ffn_gate": "ffn", "ffn_in": "ffn"}
#: components held on the models' device; the others are host memory
ON_DEVICE = ("finetuned", "copies", "source", "target", "activations", "validation")
#: what each phase of a fit holds: loading (a classifier's "copies": A under A_ft's head, B with
#: the carried head), a calibration batch, a module's solve, a validation batch; A and B count
#: at "load" unless loaded lazily, an adapter's factors (kept by `fit`) at "validate"
_PHASES = {
    "load": "finetuned copies task_vector",
    "calibrate": "source target task_vector statistics captures kept activations update",
    "solve": "source target task_vector statistics moved solve",
    "validate": "target moved validation",
}

#: big decoders' published shapes, for `skeleton` (no download): (model type, hidden, FFN,
#: blocks, heads, KV heads, vocabulary); Llama-3.3-70B has Llama-3.1-70B's
SHAPES = {
    "qwen2.5-7b": ("qwen2", 3584, 18944, 28, 28, 4, 152064),
    "llama-3.1-8b": ("llama", 4096, 14336, 32, 32, 8, 128256),
    "llama-3.1-70b": ("llama", 8192, 28672, 80, 64, 8, 128256),
}


def skeleton(config, num_labels: int | None = None) -> nn.Module:
    """The model a transformers config (or a name of `SHAPES`) describes, on the meta device
    (no memory): a causal LM, or with `num_labels` a sequence classifier."""
    import transformers as tf

    if isinstance(config, str):
        kind, d, f, n, h, kv, v = SHAPES[config]
        config = tf.AutoConfig.for_model(kind, hidden_size=d, intermediate_size=f,
                                         num_hidden_layers=n, num_attention_heads=h,
                                         num_key_value_heads=kv, vocab_size=v,
                                         tie_word_embeddings=False)  # fmt: skip
    config, auto = copy.deepcopy(config), tf.AutoModelForCausalLM
    if num_labels is not None:
        config.num_labels, auto = num_labels, tf.AutoModelForSequenceClassification
    with torch.device("meta"):
        return auto.from_config(config)


def _params(model: nn.Module, names: Sequence[str] | None = None) -> int:
    """Parameters of the model (tied ones once), or of the modules `names` alone."""
    if names is None:
        return sum(p.numel() for p in model.parameters())
    mods = dict(model.named_modules())
    return sum(p.numel() for n in names for p in mods[n].parameters(recurse=False))


def _delta(model: nn.Module, names: Sequence[str], rank: int | None) -> int:
    """float32 bytes of a task vector on modules `names`: LoRA factors of `rank`, or dense."""
    if rank is None:
        return 4 * _params(model, names)
    mods = dict(model.named_modules())
    return 4 * rank * sum(sum(module_dims(mods[n])) for n in names if is_matrix(mods[n]))


def _activations(model: nn.Module, tokens: int, itemsize: int, lm: bool, backward: bool) -> int:
    """Bytes autograd holds for one forward-backward over `tokens` tokens (see `_SAVED_D`);
    without a backward, the logits and their log-softmax alone."""
    mods, found = dict(model.named_modules()), roles(model)
    gated = any(role == "ffn_gate" for role, _ in found.values())
    per_block = [module_dims(mods[n]) for n, (role, _) in found.items() if role == "ffn_in"]
    saved = sum(_SAVED_D * d + _SAVED_F[gated] * f for d, f in per_block) * itemsize
    logits = model.get_output_embeddings().out_features * 4 if lm else 0
    return tokens * (saved + _LOGIT_COPIES * logits if backward else 2 * logits)


def _pairs(a: nn.Module, b: nn.Module, adapted, num_labels) -> dict[str, str]:
    """{B module: A module} calibrated: those τ_A changes, but heads and other vocabularies."""
    pairs = match_modules(a, b)
    if num_labels is not None:  # the task head is carried over, not calibrated
        head_a, head_b = head_pair(a, b, head_linears(a))
        pairs = {t: s for t, s in pairs.items() if t not in head_b and s not in head_a}
    elif a.config.vocab_size != b.config.vocab_size:
        vocab = {n for n, (role, _) in roles(b).items() if role in VOCAB_ROLES}
        pairs = {t: s for t, s in pairs.items() if t not in vocab}
    if adapted is not None:
        pairs = {t: s for t, s in pairs.items() if s.rsplit(".", 1)[-1] in adapted}
    return pairs


def _pass(a, b, part: dict, signals, tokens: int, itemsize: int, alias: bool) -> dict[str, int]:
    """Statistics, captures and the largest update and solve transients of one pass (`alias`:
    float32 models, whose captures are views, so modules reading one input share it), and
    "a_grad_width": A's gradient elements per token, each module's once (what a classifier
    keeps between its passes: `calibration.HeadStep`; position embeddings' are counted per
    input though one serves a batch, and a gradient two modules share twice: an upper bound).
    Affine modules' outputs are not captured: mapped from their inputs' statistics in float64."""
    mods_a, mods_b, role_b = dict(a.named_modules()), dict(b.named_modules()), roles(b)
    out, seen, grads = (
        dict(statistics=0, captures=0, a_grad_width=0, update=0, solve=0),
        set(),
        set(),
    )
    for name, sigs in _signals(b, part, signals).items():
        (ia, oa), (ib, ob) = module_dims(mods_a[part[name]]), module_dims(mods_b[name])
        role, block = role_b.get(name, ("", -1))
        mapped = "input" in sigs and is_affine(mods_a[part[name]]) and is_affine(mods_b[name])
        for sig in sigs:
            wa, wb = (ia, ib) if sig.endswith("input") else (oa, ob)
            out["statistics"] += wa * wb * itemsize + (wa + wb) * 8  # XᵀY and the float64 sums
            key = (block, _SAME_INPUT.get(role, name), sig)
            if mapped and sig == "output":  # float64 W_A, W_B, XᵀY, W_A XᵀY or XᵀY W_Bᵀ, the
                # product (biases added in place), and its copy in the statistics' precision
                xy64 = ia * ib if itemsize != 8 else 0
                update = 8 * (oa * ia + ob * ib + xy64 + max(oa * ib, ia * ob) + oa * ob)
                update += oa * ob * itemsize if itemsize != 8 else 0
            else:
                if not (alias and sig == "input" and key in seen):
                    out["captures"] += tokens * (wa + wb) * 4
                if sig.startswith("grad") and (part[name], sig) not in grads:
                    out["a_grad_width"] += wa
                    grads.add((part[name], sig))
                # XᵀY of a batch, and float64 copies of its float32 rows for float64 statistics
                update = wa * wb * itemsize + tokens * (wa + wb) * (8 if itemsize == 8 else 0)
            seen.add(key)
            out["update"] = max(out["update"], update)
            out["solve"] = max(out["solve"], _SOLVE_COPIES * 8 * wa * wb)
    return out


def transfer_memory(
    source_config, target_config, *, tokens: int, batch_size: int = 16, inputs: int = 128,
    adapted: Sequence[str] | None = None, rank: int | None = None, num_labels: int | None = None,
    model_dtype: str = "float32", stats_dtype: str = STATS_DTYPE, center: bool = False,
    max_stats_gb: float | None = None, method: str = "bico", lazy: bool = False,
    label_free: bool = False,
) -> dict:  # fmt: skip
    """Predicted memory of `Transfer(A, A_ft, B).fit` in bytes, from A's and B's configs (or
    names of `SHAPES`).

    Args:
        tokens: tokens per calibration input (padded length); a batch is `batch_size` inputs,
            the calibration set `inputs`.
        adapted: the module names τ_A changes (e.g. ("q_proj", "v_proj")); None: all.
        rank: A_ft is a LoRA adapter of this rank (τ_A, τ_B as factors); None: a dense A_ft.
        num_labels: classifiers of this many classes; None: causal LMs on the next-token loss.
        model_dtype, stats_dtype, center, max_stats_gb, method: as `Transfer` takes them
            (centred statistics are float64 whatever `stats_dtype`).
        lazy: checkpoints load as zero-copy views of their files, resident once read (float32
            safetensors on CPU): a merged adapter's A_ft then holds only its merged modules.
        label_free: an LM calibrated on A_ft's own continuations; with targets given an LM
            adapter's A_ft is never run, so never merged.

    Returns:
        {"components": {name: bytes}, "phases", "device", "host": {phase: bytes} in all, on
        the models' device, in host memory; "passes", "statistics_total", "params": (A, B),
        "peak", "peak_phase"}.
    """
    a, b = skeleton(source_config, num_labels), skeleton(target_config, num_labels)
    size = getattr(torch, model_dtype).itemsize
    itemsize = np.dtype("float64" if center else stats_dtype).itemsize  # as `Transfer` holds them
    lm, batch = num_labels is None, batch_size * tokens
    pairs, signals = _pairs(a, b, adapted, num_labels), get_method(method).signals
    backward = any(s.startswith("grad") for s in signals)
    budget = None if max_stats_gb is None else max_stats_gb * 2**30
    passes = plan_passes(a, b, pairs, signals, budget, itemsize)  # as `Transfer` plans them
    costs = [_pass(a, b, p, signals, batch, itemsize, size == 4) for p in passes]
    worst = max(costs, key=lambda c: c["statistics"] + c["captures"])
    head = [] if lm else head_pair(a, b, head_linears(a))[0]
    changed = [n for n, m in a.named_modules() if owns_params(m) and n not in head
               and (adapted is None or n.rsplit(".", 1)[-1] in adapted)]  # fmt: skip
    merged_only = lazy and rank is not None and lm
    # a classifier keeps A's gradient rows (`calibration.HeadStep`): a batch's are among them
    kept = 0 if lm else min(costs[0]["a_grad_width"] * inputs * tokens * 4, keep_budget(budget))
    a_grads = worst["a_grad_width"] * batch * 4
    captures = worst["captures"] - (a_grads if kept >= a_grads else 0)
    comp = {
        "finetuned": 0
        if rank is not None and lm and not label_free
        else size * (_params(a, changed) if merged_only else _params(a)),
        "copies": 0 if lm else size * (_params(backbone(a)) + _params(backbone(b))),
        "source": size * _params(a),
        "target": size * _params(b),
        "task_vector": _delta(a, changed, rank),
        "moved": _delta(b, list(pairs), rank),
        **{k: worst[k] for k in ("statistics", "update")},
        "captures": captures,
        "kept": kept,
        "solve": max(c["solve"] for c in costs),
        "activations": max(_activations(m, batch, size, lm, backward) for m in (a, b)),
        "validation": batch * (2 * (b.get_output_embeddings().out_features if lm else 0) * 4),
    }
    phases = dict(_PHASES)
    phases["load"] += ("" if merged_only else " source") + ("" if lazy and lm else " target")
    phases["validate"] += " task_vector" if rank is not None else ""
    where = {"phases": (True, False), "device": (True,), "host": (False,)}
    out = {k: {p: sum(comp[c] for c in n.split() if (c in ON_DEVICE) in on)
               for p, n in phases.items()} for k, on in where.items()}  # fmt: skip
    peak = max(out["phases"], key=out["phases"].get)
    return {"components": comp, **out, "passes": len(passes), "peak": out["phases"][peak],
            "statistics_total": sum(c["statistics"] for c in costs), "peak_phase": peak,
            "params": (_params(a), _params(b))}  # fmt: skip
