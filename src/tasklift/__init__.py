"""tasklift: move a fine-tuned model's skill onto another model without fine-tuning again.

    from tasklift import TaskMatrix, Transfer, TaskVector, LinearProbe, HeadOnly, FineTuned

Names are imported on first use, so `import tasklift` (and the command line's --help) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TaskMatrix": "taskmatrix",
    "TaskMatrixModel": "inference",
    "MultiTaskModel": "inference",
    "Transfer": "transfer",
    "TaskVector": "taskvector",
    "LinearProbe": "probe",
    "HeadOnly": "probe",
    "FineTuned": "probe",
    "GramStats": "stats",
    "LeastSquaresMap": "maps",
    "RidgeMap": "maps",
    "RidgeCVMap": "maps",
    "ProcrustesMap": "maps",
    "PermutationMap": "maps",
    "load_map": "maps",
    "load_dataset": "data",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
