"""Task vectors τ = θ_ft − θ_base: a dict of per-parameter deltas with +, −, scalar ×, apply_to.

The basis of task arithmetic and of BiCo transfer (arXiv 2605.28444), which moves a τ
computed on one model onto another. A delta is a dense tensor or a `LowRank` pair of factors
(a LoRA's B·A): BiCo's transport is linear on both sides, so factors move as factors and a
LoRA stays an exact LoRA of the same rank, never materialised until it is applied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import __version__
from .io import load_tensors, save_tensors

__all__ = ["TaskVector", "LowRank", "dense"]


@dataclass(frozen=True)
class LowRank:
    """A weight delta kept as factors: up (d_out, r) @ down (r, d_in), float32 on CPU."""

    up: torch.Tensor
    down: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("up", "down"):
            object.__setattr__(self, name, getattr(self, name).detach().to("cpu", torch.float32))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.up.shape[0], self.down.shape[1]))

    @property
    def rank(self) -> int:
        return self.up.shape[1]

    def dense(self) -> torch.Tensor:
        """The delta as a matrix (d_out, d_in)."""
        return self.up @ self.down

    def __mul__(self, scale: float) -> LowRank:
        return LowRank(self.up * scale, self.down)

    __rmul__ = __mul__

    def __add__(self, other):
        if isinstance(other, LowRank):  # exact: rank r1 + r2
            return LowRank(torch.cat([self.up, other.up], 1), torch.cat([self.down, other.down]))
        return self.dense() + other

    __radd__ = __add__


def dense(delta) -> torch.Tensor:
    """A delta as a tensor, whether dense or `LowRank`."""
    return delta.dense() if isinstance(delta, LowRank) else delta


class TaskVector:
    """Per-parameter deltas {name: tensor}, kept in float32 on CPU.

    Example:
        >>> tv = TaskVector.from_state_dicts(base.state_dict(), finetuned.state_dict())
        >>> merged = (0.5 * tv + other).apply_to(base)          # a new model; base is untouched
    """

    def __init__(self, deltas: Mapping[str, torch.Tensor | LowRank]) -> None:
        self.deltas = {
            k: v if isinstance(v, LowRank) else v.detach().to("cpu", torch.float32)
            for k, v in deltas.items()
        }

    @classmethod
    def from_state_dicts(
        cls,
        base: Mapping[str, torch.Tensor],
        finetuned: Mapping[str, torch.Tensor],
        *,
        strict: bool = False,
    ) -> TaskVector:
        """θ_ft − θ_base over the floating-point parameters both hold with the same shape; a
        tensor that several names share (tied embeddings) counts once, under its first name,
        and parameters the fine-tune left exactly as they were (a LoRA's untouched ones) none.

        Parameters only one side has (e.g. a new classifier head) are left out; with
        `strict=True` they are an error. A shared name with different shapes is always an error.

        Raises:
            ValueError: shapes differ for a shared name, or (strict) the key sets differ.
        """
        seen: set[tuple] = set()  # tied weights (an LM head sharing the embeddings): once
        shared = []
        for k, v in base.items():
            alias = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if k in finetuned and v.is_floating_point() and alias not in seen:
                shared.append(k)
                seen.add(alias)
        bad = [
            f"{k}: {tuple(base[k].shape)} vs {tuple(finetuned[k].shape)}"
            for k in shared
            if base[k].shape != finetuned[k].shape
        ]
        if bad:
            raise ValueError(
                f"base and fine-tuned shapes differ for {len(bad)} parameter(s): "
                + "; ".join(bad[:3])
            )
        only = sorted(set(base) ^ set(finetuned))
        if strict and only:
            raise ValueError(f"parameters in only one model: {only[:5]}")
        deltas = {k: finetuned[k].float() - base[k].float() for k in shared}
        return cls({k: v for k, v in deltas.items() if v.any()})  # untouched ones move nothing

    def __add__(self, other: TaskVector) -> TaskVector:
        """The sum over the parameters of either: one that a fine-tune left unchanged (so its
        vector has no delta there) counts as zero.

        Raises:
            ValueError: a shared parameter's deltas differ in shape.
        """
        out = dict(self.deltas)
        for k, v in other.deltas.items():
            if k in out and out[k].shape != v.shape:
                raise ValueError(
                    f"{k}: deltas of shapes {tuple(out[k].shape)} and {tuple(v.shape)}"
                )
            out[k] = out[k] + v if k in out else v
        return TaskVector(out)

    def __radd__(self, other: TaskVector | int) -> TaskVector:
        """`0 + tv` is tv, so `sum([tv1, tv2, ...])` works."""
        if isinstance(other, (int, float)) and other == 0:
            return self * 1.0
        return self + other

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self + (-other)

    def __neg__(self) -> TaskVector:
        return -1.0 * self

    def __mul__(self, scale: float) -> TaskVector:
        return TaskVector({k: scale * v for k, v in self.deltas.items()})

    __rmul__ = __mul__

    def norm(self) -> float:
        """Global L2 norm over every delta."""
        return float(torch.sqrt(sum((dense(v).double() ** 2).sum() for v in self.deltas.values())))

    def apply_to(self, model: nn.Module, *, scale: float = 1.0, inplace: bool = False) -> nn.Module:
        """θ + scale · τ. Returns a copy unless `inplace`.

        Raises:
            KeyError: the model lacks a parameter the vector holds.
            ValueError: a parameter's shape differs from its delta's.
        """
        import copy

        target = model if inplace else copy.deepcopy(model)
        state = target.state_dict()
        missing = [k for k in self.deltas if k not in state]
        if missing:
            raise KeyError(
                f"the model has no parameter(s) {missing[:3]}; was the task vector "
                "made for another architecture? (transfer it first)"
            )
        with torch.no_grad():
            for k, v in self.deltas.items():
                if state[k].shape != v.shape:
                    raise ValueError(
                        f"{k}: model shape {tuple(state[k].shape)} but delta "
                        f"{tuple(v.shape)}; transfer the task vector first"
                    )
                state[k].add_(scale * dense(v).to(state[k].device, state[k].dtype))
        return target

    @contextmanager
    def applied(self, model: nn.Module, scale: float = 1.0) -> Iterator[nn.Module]:
        """`model` with θ + scale · τ in place for the block, then θ again: a scale is tried
        without a copy of a model of several GB. In float32 θ comes back by subtracting (to a
        rounding); in bf16/fp16, where + then − drifts by several % of τ, the touched
        parameters are kept and copied back."""
        state = model.state_dict()
        kept = {k: state[k].clone() for k in self.deltas if state[k].dtype != torch.float32}
        self.apply_to(model, scale=scale, inplace=True)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in kept.items():
                    state[k].copy_(v)
            TaskVector({k: v for k, v in self.deltas.items() if k not in kept}).apply_to(
                model, scale=-scale, inplace=True
            )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, **meta: object) -> None:
        """Write the deltas to a safetensors file (atomically); an existing `path` is replaced
        only if tasklift wrote it and `overwrite` is set."""
        meta = {"class": "TaskVector", "version": __version__, **meta}
        tensors = {}
        for k, v in self.deltas.items():  # factors under NAME@up / NAME@down
            tensors.update(
                {f"{k}@up": v.up, f"{k}@down": v.down} if isinstance(v, LowRank) else {k: v}
            )
        save_tensors(path, tensors, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        """Read what `save` wrote."""
        tensors, info = load_tensors(path)
        if info.get("class") != "TaskVector":
            raise ValueError(f"{path} holds a {info.get('class')!r}, not a TaskVector")
        deltas = {k: v for k, v in tensors.items() if "@" not in k}
        for k in {k.rsplit("@", 1)[0] for k in tensors if "@" in k}:
            deltas[k] = LowRank(tensors[f"{k}@up"], tensors[f"{k}@down"])
        return cls(deltas)
