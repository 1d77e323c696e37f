"""Carrying A_ft's classification head onto B, so B's calibration gradients flow through the
task's own head and the transferred model predicts A_ft's classes; and the classifier side of
`Transfer.fit` built on it."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .._estimator import as_labels
from ..data import is_texts, num_items, take
from ..maps import ProcrustesMap
from ..models import backbone, classifier_like, encode, load_backbone
from ..stats import GramStats
from ..taskvector import TaskVector
from .calibration import HeadStep
from .pairing import head_pair, match_modules, owns_params

__all__ = ["head_linears", "transport_head", "classifier_setup"]


def head_linears(classifier: nn.Module) -> list[str]:
    """Names of the classifier's linear layers outside its backbone, in order (the task head).

    Raises:
        ValueError: there are none, or the head holds parameters of other kinds.
    """
    prefix = getattr(classifier, "base_model_prefix", "") + "."
    names, other = [], []
    for name, m in classifier.named_modules():
        if name.startswith(prefix) or not owns_params(m):
            continue
        (names if isinstance(m, nn.Linear) else other).append(name)
    if not names or other:
        raise ValueError(
            f"{type(classifier).__name__}: expected a head of linear layers outside "
            f"{prefix[:-1]!r}; found linear {names} and other {other}"
        )
    return names


def transport_head(
    finetuned: nn.Module,
    target: nn.Module,
    r_in: torch.Tensor,
    names: Sequence[str],
    target_names: Sequence[str] | None = None,
) -> None:
    """Write A's fine-tuned head into B's classifier (in place), reading B's features.

    The first layer reads through R_in (d_A, d_B): W_B = W_A R_in. Hidden head units keep A's
    coordinates, padded with zeros into B's (wider or equal) head, so elementwise activations
    commute; the class outputs are shared. `target_names` are B's head layers in the same order
    (default: the same names; another family's head, see `pairing.HEADS`).

    Raises:
        ValueError: B's classifier lacks a head layer, has another class count, or a narrower
            hidden head layer.
    """
    mods_a, mods_b = dict(finetuned.named_modules()), dict(target.named_modules())
    target_names = list(names if target_names is None else target_names)
    missing = [n for n in target_names if not isinstance(mods_b.get(n), nn.Linear)]
    if missing:
        raise ValueError(
            f"the target classifier has no head layer(s) {missing}; source and target must share "
            "a head layout (the same model family, e.g. ViT -> ViT)"
        )
    classes = mods_a[names[-1]].out_features, mods_b[target_names[-1]].out_features
    if classes[0] != classes[1]:
        raise ValueError(
            f"the target head has {classes[1]} classes but the source {classes[0]}; build "
            f"the target classifier with num_labels={classes[0]}"
        )
    e_in = r_in
    with torch.no_grad():
        for name, name_b in zip(names, target_names, strict=True):
            la, lb = mods_a[name], mods_b[name_b]
            if lb.out_features < la.out_features:
                raise ValueError(
                    f"head layer {name}: the target has {lb.out_features} units, fewer than the "
                    f"source's {la.out_features}; the head cannot be carried over"
                )
            e_out = torch.eye(la.out_features, lb.out_features)  # identity for the last layer
            lb.weight.copy_(e_out.T @ la.weight.float().cpu() @ e_in)
            if lb.bias is not None:
                lb.bias.copy_(la.bias.float().cpu() @ e_out if la.bias is not None else 0.0)
            e_in = e_out


def classifier_setup(est, a_ft: nn.Module, proc_a, X, y, tv: TaskVector | None = None) -> dict:
    """What `Transfer.fit` needs when A_ft is a classifier: A's weights under A_ft's head (the
    calibration model), B as a classifier (`head`: B's head layers) with the step that carries
    A_ft's head onto B's features inside calibration (`head_step`), τ_A without the head (`tv`
    when A_ft came as an adapter: its factors), the module pairs and the task loss (labels y,
    or A_ft's predictions). Records its loads and labelling in `est.timings_`. B's head stays
    blank until `calibrate(..., head=prep["head_step"])` runs."""
    clock = est.timings_
    head = head_linears(a_ft)
    with clock("load"):
        a, proc = est._load(est.source)
        b, proc_b = est._load(est.target)
    proc_a = proc if proc_a is None else proc_a  # A_ft given as an adapter: A's processor
    head, head_b = head_pair(a_ft, b, head)  # other names across families
    a_cal = copy.deepcopy(a_ft)  # A's own weights under A_ft's head: the calibration model
    try:
        load_backbone(a_cal, backbone(a))
    except ValueError as e:
        raise ValueError(
            f"A_ft ({est.finetuned}) is not a fine-tune of A ({est.source}): {e}; pass as source "
            "the model A_ft was fine-tuned from"
        ) from None
    mods_cal, mods_ft = dict(a_cal.named_modules()), dict(a_ft.named_modules())
    for name in head:  # a head layer inside the backbone (BERT's pooler) stays A_ft's
        mods_cal[name].load_state_dict(mods_ft[name].state_dict())
    b_cls = classifier_like(a_ft, backbone(b))
    n = num_items(X)
    if y is None:
        with clock("labels"):
            y = est._logits(a_ft, X, proc_a).argmax(-1).numpy()
    labels = torch.from_numpy(as_labels(y, n))
    procs = {id(a_cal): proc_a, id(b_cls): proc_b}

    def loss(model, idx):
        batch = encode(take(X, idx), procs[id(model)], max_length=est.max_length_)
        dev = next(model.parameters()).device
        return model(**{k: v.to(dev) for k, v in batch.items()}, labels=labels[idx].to(dev)).loss

    def align(stats: GramStats) -> None:  # before B's gradients, which flow through the head
        r_head = ProcrustesMap(null_rtol=est.tie_break).fit_stats(stats).coef_.T  # (d_A, d_B)
        transport_head(a_cal, b_cls, torch.from_numpy(r_head).float(), head, head_b)

    if tv is None:
        tv = TaskVector.from_state_dicts(a_cal.state_dict(), a_ft.state_dict())
    tv = TaskVector({k: v for k, v in tv.deltas.items() if k.rsplit(".", 1)[0] not in head})
    pairs = {
        t: s
        for t, s in match_modules(a_cal, b_cls, est.block_map).items()
        if t not in head_b and s not in head
    }
    texts = X if is_texts(X) else None
    return dict(source=a_cal, target=b_cls, processor=proc_b, source_processor=proc_a, tv=tv,
                pairs=pairs, loss=loss, texts=texts, head=head_b,
                head_step=HeadStep(head_b[0], head[0], align))  # fmt: skip
