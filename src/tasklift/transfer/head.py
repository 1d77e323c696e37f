"""Carrying A_ft's classification head onto B, so B's calibration gradients flow through the
task's own head and the transferred model predicts A_ft's classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .pairing import owns_params

__all__ = ["head_linears", "transport_head"]


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
