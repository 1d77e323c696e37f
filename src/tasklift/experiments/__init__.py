"""The papers' experiments on embeddings extracted once per split: the layer sweep against the
baselines (`sweep`), data scaling and the data-scarce table (`scaling`), multi-task matrices
(`multitask`), the task-vector transfer table (`transfer`), and the per-layer analysis of a
sweep: map fidelity, baseline curves, middle-layer enrichment (`layers`)."""

from .layers import enrichment, fidelity, layer_curves, layer_table
from .multitask import multitask
from .scaling import data_scarce, scaling
from .sweep import Split, compare, embed_split, load_pair, solver_name, summarise
from .transfer import transfer_table

__all__ = [
    "Split",
    "compare",
    "embed_split",
    "load_pair",
    "solver_name",
    "summarise",
    "fidelity",
    "layer_curves",
    "layer_table",
    "enrichment",
    "scaling",
    "data_scarce",
    "multitask",
    "transfer_table",
]
