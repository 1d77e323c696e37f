"""The pre-flight check of a transfer A -> B (and an adapter of A), before any calibration:
families and the roles both models have, widths and head counts, the depth map, how far the
tokenizers agree, per-layer linear CKA on a few texts, which methods can run, a
recommendation, and the reasons nothing can run where that is so. `tasklift check` prints it.
(`Transfer.fit` refuses on its own what cannot move: no module pairs, an adapter that does not
fit A, nothing of τ_A moved.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .data import is_texts
from .families import GENERIC, family_of, head_counts, roles
from .models import hidden_size, num_layers
from .transfer.methods import METHODS

__all__ = ["check_pair", "check_paths", "linear_cka", "format_check"]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n inputs, (n, d_x) and (n, d_y)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(x.T @ y) ** 2
    return float(cross / max(np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y), 1e-300))


def _vocab_overlap(tok_a, tok_b) -> float | None:
    """Share of A's tokens (as strings) that B's vocabulary holds with the same id."""
    if tok_a is None or tok_b is None:
        return None
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    return sum(vb.get(t) == i for t, i in va.items()) / max(len(va), 1)


def _widths(model: nn.Module) -> dict[str, int]:
    q, kv = head_counts(model)
    return {"layers": num_layers(model), "hidden": hidden_size(model), "heads": q, "kv_heads": kv}


def _role_table(models: tuple, by_role: tuple[dict, dict], pairs: dict) -> dict[str, list]:
    """Per role: [A's modules, B's modules, B's matched, A's (d_in, d_out), B's (d_in, d_out)]
    (shapes of each side's first module of the role; d_in 0 for a vector). `by_role`: each
    model's `roles`."""
    from .transfer.pairing import module_dims, owns_params

    table: dict[str, list] = {}
    for side, (model, named) in enumerate(zip(models, by_role, strict=True)):
        for name, (role, _) in named.items():
            row = table.setdefault(role, [0, 0, 0, None, None])
            row[side] += 1
            module = model.get_submodule(name)
            if row[3 + side] is None and owns_params(module):
                row[3 + side] = module_dims(module)
    for name in pairs:
        if name in by_role[1]:
            table[by_role[1][name][0]][2] += 1
    return table


def check_pair(
    source: nn.Module,
    target: nn.Module,
    *,
    tokenizers: tuple = (None, None),
    adapter_tv=None,
    texts: Sequence[str] | None = None,
    max_length: int = 64,
) -> dict:
    """Everything `tasklift check` reports, as a dict: "ok" False with "reasons" when no
    method can run. `adapter_tv`: τ_A of an adapter, checked against A's parameters."""
    from .transfer.pairing import (
        match_modules,
        owns_params,
        proportional_depth,
        split_alike,
        unpaired,
    )

    fa, fb = family_of(source), family_of(target)
    by_role = roles(source), roles(target)
    roles_a = {role for role, _ in by_role[0].values()}
    roles_b = {role for role, _ in by_role[1].values()}
    pairs = match_modules(source, target)
    wa, wb = _widths(source), _widths(target)
    same_shape = wa == wb and all(
        source.get_submodule(s).weight.shape == target.get_submodule(t).weight.shape
        for t, s in pairs.items() if hasattr(target.get_submodule(t), "weight")
    )  # fmt: skip
    overlap = _vocab_overlap(*tokenizers)
    reasons = []
    if not pairs:
        reasons.append(unpaired(source, target))
    notes = []
    if GENERIC in (fa, fb):  # names still pair; attention is not blocked by heads
        notes.append("a model of no described family: paired by names; see tasklift.families")
    if adapter_tv is not None:
        state = source.state_dict()
        bad = [k for k, v in adapter_tv.deltas.items() if state.get(k, v).shape != v.shape
               or k not in state]  # fmt: skip
        if bad:
            reasons.append(f"the adapter does not fit A: {len(bad)} module(s), e.g. {bad[:2]}")
    methods = {
        m.name: ("runs" if m.solver is not None or same_shape else "needs equal shapes")
        for m in METHODS.values()
    }
    token = "all" if overlap is None or overlap > 0.99 else "word"
    alike = None
    if is_texts(texts) and None not in tokenizers:  # token='all' needs every text split alike
        alike = split_alike(list(texts), tokenizers, max_length)[0]
        token = "all" if alike == len(texts) else "word"
    out = {
        "families": (fa.name, fb.name),
        "widths": (wa, wb),
        "roles_only_in_a": sorted(roles_a - roles_b),
        "roles_only_in_b": sorted(roles_b - roles_a),
        "pairs": len(pairs),
        "roles": _role_table((source, target), by_role, pairs),
        "unpaired_in_b": sorted(
            n for n, m in target.named_modules() if owns_params(m) and n not in pairs
        ),  # fmt: skip
        "depth_map": proportional_depth(wa["layers"], wb["layers"]),
        "tokenizer_overlap": overlap,
        "texts_split_alike": None if alike is None else [alike, len(texts)],
        "token_pairing": token,
        "methods": methods,
    }
    if texts:
        out["cka"] = _cka(source, target, tokenizers, texts, max_length)
    if same_shape:
        out["weight_distance"] = _distance(source, target)
    if out.get("weight_distance", 1.0) < 0.1:  # CKA cannot tell: it ignores permutations
        out["recommendation"] = "naive: the same architecture and close weights (re-apply τ)"
    else:
        out["recommendation"] = f"bico (token={token!r})"
    out["ok"], out["reasons"], out["notes"] = not reasons, reasons, notes
    return out


def check_paths(
    source,
    target,
    adapter=None,
    *,
    data=None,
    text_key: str = "text",
    n: int = 32,
    max_length: int = 64,
) -> dict:
    """`check_pair` on checkpoint folders (or names): both as causal LMs when A is one or a
    causal LM's adapter is given (as classifiers for a SEQ_CLS adapter); CKA on the first `n`
    texts of `data` (a dataset name or file)."""
    from pathlib import Path

    from .data import load_dataset
    from .loading import load_model, load_processor
    from .lora import adapter_classifier, is_classifier, read_adapter
    from .transfer.lm import is_lm_checkpoint

    tv, config = read_adapter(adapter) if adapter else (None, {})
    if is_classifier(config):  # the classifier the adapter was trained on
        a, tok_a = adapter_classifier(source, Path(adapter), device="cpu"), load_processor(source)
        b, tok_b = load_model(target, head=True, num_labels=a.config.num_labels, device="cpu")
    else:
        lm = adapter is not None or is_lm_checkpoint(source)
        (a, tok_a), (b, tok_b) = (load_model(m, lm=lm, device="cpu") for m in (source, target))
    texts = load_dataset(data, text_key=text_key, labels=False).X[:n] if data else None
    return check_pair(a, b, tokenizers=(tok_a, tok_b), adapter_tv=tv, texts=texts,
                      max_length=max_length)  # fmt: skip


def _distance(source: nn.Module, target: nn.Module) -> float:
    """‖θ_B − θ_A‖ / ‖θ_A‖ over the parameters of one architecture."""
    sa, sb = source.state_dict(), target.state_dict()
    keys = [k for k in sa if k in sb and sa[k].is_floating_point()]
    num = sum(float((sb[k].float() - sa[k].float()).norm() ** 2) for k in keys)
    return (num / max(sum(float(sa[k].float().norm() ** 2) for k in keys), 1e-30)) ** 0.5


def _cka(source, target, tokenizers, texts, max_length: int) -> dict[int, float]:
    """Per layer of B: linear CKA with A's layer at the same relative depth (mean-pooled)."""
    from .extract import embed

    kw = dict(layers="all", pool="mean", max_length=max_length)
    with torch.no_grad():
        xa = embed(source, list(texts), tokenizers[0], **kw)
        xb = embed(target, list(texts), tokenizers[1], **kw)
    la, lb = max(xa), max(xb)
    pick = {j: round(j * la / max(lb, 1)) for j in xb}
    return {j: round(linear_cka(xa[i].numpy(), xb[j].numpy()), 3) for j, i in pick.items()}


def format_check(report: dict) -> str:
    """The report as the lines `tasklift check` prints."""
    (fa, fb), (wa, wb) = report["families"], report["widths"]
    lines = [
        f"families: A {fa}, B {fb}",
        f"A: {wa}",
        f"B: {wb}",
        f"module pairs: {report['pairs']}; roles only in A: {report['roles_only_in_a']}; "
        f"only in B: {report['roles_only_in_b']}",
        f"depth map (B block: A block): {report['depth_map']}",
        "modules by role (A's / B's / B's matched, A's (d_in, d_out) -> B's; a matched module "
        "keeps B's weights where no map can move it: embeddings between vocabularies, q/k norms "
        "between head sizes):",
    ]
    for role, (na, nb, paired, sa, sb) in report["roles"].items():
        lines.append(f"  {role}: {na} / {nb} / {paired}, {sa} -> {sb}")
    unpaired = report["unpaired_in_b"]
    if unpaired:
        lines.append(f"modules of B no module of A matches (B's weights kept): {len(unpaired)}, "
                     f"e.g. {unpaired[:3]}")  # fmt: skip
    overlap, alike = report["tokenizer_overlap"], report.get("texts_split_alike")
    if overlap is not None:
        split = "" if alike is None else f", {alike[0]} of {alike[1]} texts split alike"
        lines.append(f"tokenizers: {overlap:.1%} of A's tokens mean the same in B{split} -> "
                     f"token={report['token_pairing']!r}")  # fmt: skip
    if "cka" in report:
        lines.append(f"linear CKA per layer of B: {report['cka']}")
    lines.append("methods: " + ", ".join(f"{k} {v}" for k, v in report["methods"].items()))
    if "weight_distance" in report:
        lines.append(f"relative weight distance: {report['weight_distance']:.3f}")
    lines.append(f"recommendation: {report['recommendation']}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"refused: {r}" for r in report["reasons"]]
    return "\n".join(lines)
