"""BiCo task-vector transfer (arXiv 2605.28444): move τ_A from model A onto model B, no training.

For a linear layer, ∂L/∂W = g xᵀ, so a task vector is a sum of products of output gradients g
and input activations x. One forward-backward pass of A and of B over the same calibration
inputs gives, per matched linear layer, the cross-covariances C_in = X_Aᵀ X_B and
C_out = G_Aᵀ G_B; their orthogonal Procrustes factors R_in, R_out (semi-orthogonal when widths
differ) carry the update across: ΔW_B = R_outᵀ ΔW_A R_in and δb_B = δb_A R_out.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .hooks import capture
from .maps import procrustes
from .models import blocks
from .stats import GramStats
from .taskvector import TaskVector

__all__ = ["linear_layers", "match_layers", "calibrate", "bico_transport", "TOKENS"]

TOKENS = ("cls", "mean", "all")


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the model's nn.Linear modules, in order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _num_blocks(model: nn.Module) -> int:
    try:
        return len(blocks(model))
    except (ValueError, AttributeError):
        return 0


def match_layers(model_a: nn.Module, model_b: nn.Module) -> dict[str, str]:
    """Pair A's linear layers with B's of the same role: equal names, with the block index mapped
    proportionally when depths differ (A's block i -> B's round(i (L_B - 1) / (L_A - 1)))."""
    la, lb = _num_blocks(model_a), _num_blocks(model_b)
    in_b = set(linear_layers(model_b))
    pairs = {}
    for name in linear_layers(model_a):
        target = name
        if la > 1 and lb > 0 and (m := re.search(r"\.(\d+)\.", name)):
            j = round(int(m[1]) * (lb - 1) / (la - 1))
            target = f"{name[: m.start(1)]}{j}{name[m.end(1) :]}"
        if target in in_b:
            pairs[name] = target
    return pairs


def _rows(t: torch.Tensor, token: str) -> torch.Tensor:
    """(B, T, d) -> rows (N, d) by the token alignment; 2-D tensors pass through."""
    t = t.detach().float().cpu()
    if t.ndim == 2:
        return t
    if token == "cls":
        return t[:, 0]
    if token == "mean":
        return t.mean(1)
    return t.reshape(-1, t.shape[-1])


def _io(model: nn.Module, names: Iterable[str], batch, loss_fn, token: str) -> dict:
    """One forward-backward pass: {(name, "in" | "grad"): rows} for every named linear layer."""
    modules = dict(model.named_modules())
    points = {}
    for n in names:
        if n not in modules:
            raise KeyError(f"{type(model).__name__} has no layer {n!r}")
        points[(n, "in")] = (modules[n], "input")
        points[(n, "grad")] = (modules[n], "grad_output")
    got = {}
    with (
        capture(points, lambda key, t: got.__setitem__(key, _rows(t, token))),
        warnings.catch_warnings(),
    ):
        # gradients w.r.t. outputs are what is wanted, also where the inputs need none
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return got


def calibrate(
    model_a: nn.Module,
    model_b: nn.Module,
    pairs: dict[str, str],
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    token: str = "cls",
) -> dict[str, tuple[GramStats, GramStats]]:
    """Cross-covariances of inputs and of output gradients, A vs B, per matched layer.

    Args:
        pairs: A layer name -> B layer name (see `match_layers`).
        batches: calibration batches, each passed to `loss_fn` for both models.
        loss_fn: (model, batch) -> scalar loss (e.g. the task loss through the model's head).
        token: token alignment: "cls" (token 0), "mean", or "all" (needs equal token counts).

    Returns:
        {A name: (inputs GramStats, gradients GramStats)}; `.xy` holds X_Aᵀ X_B and G_Aᵀ G_B.
    """
    if token not in TOKENS:
        raise ValueError(f"unknown token alignment {token!r}; use one of {TOKENS}")
    stats = {a: (GramStats(), GramStats()) for a in pairs}
    for batch in batches:
        got_a = _io(model_a, pairs, batch, loss_fn, token)
        got_b = _io(model_b, pairs.values(), batch, loss_fn, token)
        for a, b in pairs.items():
            for stat, kind in zip(stats[a], ("in", "grad"), strict=True):
                xa, xb = got_a[(a, kind)], got_b[(b, kind)]
                if xa.shape[0] != xb.shape[0]:
                    raise ValueError(
                        f"layer {a} -> {b}: {xa.shape[0]} vs {xb.shape[0]} rows; "
                        "token counts differ, use token='cls' or 'mean'"
                    )
                stat.update(xa, xb)
    return stats


def bico_transport(
    tv: TaskVector, pairs: dict[str, str], stats: dict[str, tuple[GramStats, GramStats]]
) -> TaskVector:
    """τ_B from τ_A: ΔW_B = R_outᵀ ΔW_A R_in, δb_B = δb_A R_out, for every matched linear layer.

    Parameters of τ_A outside the matched linear layers are not transported (left out).
    """
    out = {}
    for a, b in pairs.items():
        r_in = torch.from_numpy(procrustes(stats[a][0].xy)).float()  # (d_in_A, d_in_B)
        r_out = torch.from_numpy(procrustes(stats[a][1].xy)).float()  # (d_out_A, d_out_B)
        if f"{a}.weight" in tv.deltas:
            out[f"{b}.weight"] = r_out.T @ tv.deltas[f"{a}.weight"] @ r_in
        if f"{a}.bias" in tv.deltas:
            out[f"{b}.bias"] = tv.deltas[f"{a}.bias"] @ r_out
    if not out:
        raise ValueError(
            "no matched linear layer has a delta in the task vector; "
            "were pairs made for these models?"
        )
    return TaskVector(out)
