"""Tables (markdown), JSON results and PNG plots, all written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .io import write_text, write_with

__all__ = ["markdown_table", "write_json", "plot_layer_sweep"]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of `columns` from dict rows (missing cells left blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def plot_layer_sweep(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Accuracy vs base layer for each task-matrix solver, baselines as horizontal lines (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    sweeps = dict.fromkeys(r["method"] for r in rows if "selected" in r)
    for method in sweeps:
        pts = sorted((r["layer"], r["accuracy"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        chosen = [r for r in rows if r["method"] == method and r["selected"]]
        ax.scatter(
            [r["layer"] for r in chosen],
            [r["accuracy"] for r in chosen],
            s=140,
            facecolors="none",
            edgecolors="black",
            zorder=3,
        )
    styles = {
        "fine-tuned": ("black", "--"),
        "linear probe": ("tab:red", ":"),
        "head-only": ("gray", "-."),
    }
    for r in rows:
        if r["method"] in styles:
            color, ls = styles[r["method"]]
            ax.axhline(
                r["accuracy"], color=color, ls=ls, label=f"{r['method']} ({r['accuracy']:.3f})"
            )
    ax.set_xlabel("base layer i (0 = embeddings); circled: chosen by CV on train")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
