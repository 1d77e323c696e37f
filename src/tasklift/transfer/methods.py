"""The registry of task-vector transfer methods: BiCo and its baselines, one declarative entry each.

An entry says which calibration signals align each side of a layer (the first decides, later
ones only settle the directions it leaves open), which member of the map family solves each
side (`tasklift.maps`: "ProcrustesMap", "PermutationMap"; None for identities), and any step
after transport (GradFix's sign mask). Adding a method is one entry here plus its test. This
module imports nothing heavy, so the command line can list the methods instantly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "Method",
    "METHODS",
    "get_method",
    "TOKENS",
    "SCALES",
    "SEARCHES",
    "SCALE_SEARCH",
    "TIE_BREAK",
    "STATS_DTYPE",
    "STATS_DTYPES",
    "PREVIOUS_DEFAULTS",
]

#: calibration token pairings between A and B
TOKENS = ("all", "cls", "mean", "word")
#: scales of τ_B tried on the validation split (0 is B with the carried-over head alone)
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
#: how the scale is searched: "fibonacci" (at most `scales.SEARCH_EVALS` evaluations) or "grid"
SEARCHES = ("fibonacci", "grid")
#: the default search: every scale (see `scales` for why Fibonacci is not the default)
SCALE_SEARCH = "grid"
#: a side's later signals settle only the directions its first signal leaves open: those whose
#: singular value is at most TIE_BREAK × the largest (the residual stream's gradient is blind to the
#: all-ones direction, every reader being a norm; the final norm's spans at most as many
#: directions as there are classes). Directions no signal determines map to zero
#: (`solvers.procrustes`): a component of τ_A calibration never reaches is not carried. Chosen
#: by measurement (reports/cutoff, reports/llm): on every real pair measured, 1e-3 scores as
#: 1e-6 did, and only from about 1e-4 up is τ_B the same (to 1e-5 at 1e-3) whether the
#: statistics are float32 or float64; below, directions set by round-off move it by up to 6%.
#: A permuted copy (activations bit for bit A's) determines every direction down to 1e-12: to
#: recover its τ exactly, pass float64 statistics and tie_break=1e-9 (1e-6 where it suffices).
TIE_BREAK = 1e-3
#: precision of the calibration cross-covariances: float32 halves their memory and accumulates
#: 3x faster; stable at TIE_BREAK (solved in float64 either way)
STATS_DTYPE = "float32"
STATS_DTYPES = ("float32", "float64")
#: the defaults before 2026-12-03, which every committed result made earlier used; the scripts
#: behind those results pass them explicitly
PREVIOUS_DEFAULTS = MappingProxyType({"tie_break": 1e-6, "stats_dtype": "float64"})


@dataclass(frozen=True)
class Method:
    """How one transfer method aligns A's and B's coordinates.

    Args:
        name: registry key.
        inputs, outputs: calibration signals ("input", "output", "grad_input", "grad_output")
            aligning a layer's input and output side, in order of precedence.
        solver: map class of `tasklift.maps` fitted to the cross-covariances, or None for
            identity maps (which need equal widths).
        heads_first: permutation solvers match attention heads, then units inside them.
        post: step applied to τ_B after transport ("gradfix": keep entries whose sign agrees
            with most examples' −∇L_B; "gradfix-mean": with the mean −∇L_B), or None.
        baseline: False for the method tasklift is about (BiCo), True for comparisons.
        summary: one line for tables and --help.
    """

    name: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    solver: str | None = "ProcrustesMap"
    heads_first: bool = False
    post: str | None = None
    baseline: bool = True
    summary: str = ""

    @property
    def signals(self) -> list[str]:
        """Every calibration signal this method reads (none for identity methods)."""
        return sorted(set(self.inputs) | set(self.outputs)) if self.solver else []


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "bico",
            ("input",),
            ("grad_output", "output"),
            baseline=False,
            summary="inputs by activations, outputs by gradients (Procrustes)",
        ),
        Method("activation", ("input",), ("output",), summary="activations only (Theseus)"),
        Method("gradient", ("grad_input",), ("grad_output",), summary="gradients only"),
        Method(
            "permutation",
            ("input",),
            ("output",),
            solver="PermutationMap",
            heads_first=True,
            summary="re-basin: heads, then units (TransFusion)",
        ),
        Method("naive", solver=None, summary="task arithmetic, equal shapes only"),
        Method(
            "gradfix",
            solver=None,
            post="gradfix",
            summary="naive, kept where the examples' −∇L_B signs agree (majority vote)",
        ),
        Method(
            "gradfix-mean",
            solver=None,
            post="gradfix-mean",
            summary="naive, kept where the sign of the mean −∇L_B agrees",
        ),
    )
}


def get_method(name: str | Method) -> Method:
    """The registry entry for `name` (an entry passes through).

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown transfer method {name!r}; use one of {tuple(METHODS)}")
    return METHODS[name]
