"""The one place that decides device and dtype, and seeds every generator."""

from __future__ import annotations

import random

import numpy as np
import torch

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" into cuda, then mps, then cpu; pass anything else to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps"
            ) from None
        mps = getattr(torch.backends, "mps", None)
        if (dev.type == "cuda" and not torch.cuda.is_available()) or (
            dev.type == "mps" and not (mps is not None and mps.is_available())
        ):
            raise ValueError(
                f"device {device!r} is not available on this machine (torch {torch.__version__}); "
                "use --device cpu or auto"
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """Turn "auto" into bf16 on a bf16-capable GPU and fp32 elsewhere; accept names like "bf16".

    Raises:
        ValueError: the name is not a known floating dtype.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        cuda = device is not None and device.type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}"
        ) from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def linear_from(
    weight: torch.Tensor, bias: torch.Tensor | None, *, like: torch.Tensor
) -> torch.nn.Linear:
    """An nn.Linear holding `weight` (out, in) and `bias`, on `like`'s device and dtype."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.to(like.device, like.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer
