"""Task-vector transfer (BiCo, arXiv 2605.28444) and its baselines, split by concept:

- `methods`: the registry of methods (which signals align each side, which solver, post-steps);
- `pairing`: which module of A each module of B takes, across depths and fused projections;
- `calibration`: one forward-backward pass of A and B, cross-covariances streamed into GramStats
  (`tokens`: how token rows pair; `mha`: MultiheadAttention's projections made hookable);
- `solve`: per-module maps from those statistics, transport of τ_A, GradFix's mask;
- `head`: carrying A_ft's classification head onto B;
- `estimator`: `Transfer`, the scikit-learn estimator tying them together.

Names are imported lazily, so `tasklift --help` and the registry stay free of torch.
"""

from __future__ import annotations

import importlib

from .methods import METHODS, SCALES, TOKENS, Method, get_method

_LAZY = {
    "Transfer": "estimator",
    "calibrate": "calibration",
    "align_tokens": "tokens",
    "match_modules": "pairing",
    "solve_maps": "solve",
    "transport": "solve",
    "gradient_sign_mask": "solve",
    "zeroed": "solve",
    "head_linears": "head",
    "transport_head": "head",
}

__all__ = ["METHODS", "SCALES", "TOKENS", "Method", "get_method", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
