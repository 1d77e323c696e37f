"""Forward hooks that live only inside a context manager, with an optional early exit.

Early exit raises `_Stop` from the hook of the deepest module still needed, so a forward pass
skips every later block without the model being copied or edited; `run` swallows it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture", "run"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once everything needed has been seen."""


def _tensor(value) -> torch.Tensor:
    """HF blocks return a tensor or a tuple whose first item is the hidden state."""
    return value[0] if isinstance(value, (tuple, list)) else value


@contextmanager
def capture(
    points: Mapping[Hashable, tuple[nn.Module, str]],
    store: Callable[[Hashable, torch.Tensor], None],
    *,
    stop_after: Hashable | None = None,
) -> Iterator[None]:
    """Call `store(key, tensor)` with each point's module input or output, or their gradients.

    Args:
        points: key -> (module, "input" | "output" | "grad_input" | "grad_output").
        store: receives the hidden-state tensor (B, T, d) of each point during a forward, or its
            gradient dL/d(tensor) during the backward (only where that tensor requires grad).
        stop_after: key whose capture ends the forward pass (via `run`).

    Hooks are removed in `finally`, also when the forward raises.
    """
    handles = []

    def make(key, where):
        def hook(module, args, third):
            # pre-hooks get (module, args, kwargs); forward hooks (module, args, output)
            if where in ("output", "grad_output"):
                value = _tensor(third)
            else:  # the hidden state is the first positional or keyword argument
                value = _tensor(args[0] if args else next(iter(third.values())))
            if where.startswith("grad_"):  # dL/d(value), delivered during backward
                if value.requires_grad:
                    value.register_hook(lambda grad: store(key, grad))
            else:
                store(key, value)
            if key == stop_after:
                raise _Stop

        return hook

    try:
        for key, (module, where) in points.items():
            if where in ("input", "grad_input"):
                handles.append(module.register_forward_pre_hook(make(key, where), with_kwargs=True))
            elif where in ("output", "grad_output"):
                handles.append(module.register_forward_hook(make(key, where)))
            else:
                raise ValueError(
                    f"capture point {key!r}: where must be 'input', 'output', 'grad_input' or "
                    f"'grad_output', not {where!r}"
                )
        yield
    finally:
        for h in handles:
            h.remove()


def run(forward: Callable[[], object]) -> object | None:
    """Call `forward()`; return its result, or None if a capture hook stopped it early."""
    try:
        return forward()
    except _Stop:
        return None
