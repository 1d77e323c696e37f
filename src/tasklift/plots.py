"""Matplotlib plots of tasklift's results, written atomically as PNG (matplotlib is imported
only when a plot is drawn)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .io import write_with

__all__ = [
    "plot_layer_sweep",
    "plot_layer_curves",
    "plot_bars",
    "plot_transfer",
    "plot_scaling",
]


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, *, bbox_inches: str | None = None) -> None:
    """Write `fig` to `path` as a PNG, atomically, and free it; laid out tight unless the
    bounding box is cropped instead (`bbox_inches="tight"`)."""
    if bbox_inches is None:
        fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches=bbox_inches))
    _pyplot().close(fig)


def plot_layer_sweep(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Accuracy vs base layer for each task-matrix solver, baselines as horizontal lines (PNG)."""
    plt = _pyplot()

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
        if r["method"] in styles and not r.get("curve"):
            color, ls = styles[r["method"]]
            ax.axhline(
                r["accuracy"], color=color, ls=ls, label=f"{r['method']} ({r['accuracy']:.3f})"
            )
    ax.set_xlabel("base layer i (0 = embeddings); circled: chosen by CV on train")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


_COLORS = {
    "task matrix (lstsq)": "tab:blue",
    "task matrix (ridge-CV)": "tab:orange",
    "linear probe": "tab:red",
    "head-only": "gray",
}


def plot_layer_curves(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Per base layer: accuracy of the probe, head-only and each task-matrix solver (fine-tuned
    as a line), and beside it each map's fidelity to the fine-tuned embeddings (PNG)."""
    plt = _pyplot()

    from .experiments.layers import layer_curves

    fig, (acc, fid) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    spare = iter(plt.get_cmap("tab10").colors[4:])  # the fixed colours: as in plot_layer_sweep
    colors = {m: _COLORS.get(m) or next(spare) for m in layer_curves(rows)}
    low = 0.0
    for method, c in layer_curves(rows).items():
        layers = sorted(c)
        acc.plot(layers, [c[i]["accuracy"] for i in layers], marker="o", ms=3,
                 color=colors[method], label=method)  # fmt: skip
        if "cosine" in c[layers[0]]:
            r2 = [c[i]["r2"] for i in layers]
            low = min(low, *r2)
            fid.plot(layers, [c[i]["cosine"] for i in layers], marker="o", ms=3,
                     color=colors[method], label=f"cos, {method}")  # fmt: skip
            fid.plot(layers, r2, marker="s", ms=3, ls="--", color=colors[method],
                     label=f"R², {method}")  # fmt: skip
    for r in rows:
        if r["method"] == "fine-tuned":
            acc.axhline(r["accuracy"], color="black", ls="--",
                        label=f"fine-tuned ({r['accuracy']:.3f})")  # fmt: skip
    acc.set_ylabel("test accuracy")
    fid.set_ylabel("fidelity of X_i W to the fine-tuned embedding (test)")
    fid.set_ylim(max(low, -1.0) - 0.05, 1.02)  # W = I can be far below -1: clipped
    for ax in (acc, fid):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("base layer i (0 = embeddings)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str = "",
    ylabel: str = "test accuracy",
) -> None:
    """Grouped bars (one group per setting, one bar per series) in [0, 1] (PNG)."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(groups)), 4.3), dpi=120)
    width = 0.8 / max(len(series), 1)
    colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    for j, (label, ys) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, ys, width, label=label, color=colors(j))
    ax.set_xticks(range(len(groups)), [g.replace(" / ", "\n") for g in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=min(len(series), 5), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.set_title(title)
    _save(fig, path, bbox_inches="tight")  # the legend below the axes


def plot_transfer(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Target accuracy per transfer method as bars, fine-tuned references as lines (PNG)."""
    plt = _pyplot()

    bars = [r for r in rows if r.get("accuracy") is not None and "fine-tuned" not in r["method"]]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    from .transfer.methods import METHODS

    ours = {name for name, m in METHODS.items() if not m.baseline}
    ax.bar(
        [r["method"] for r in bars],
        [r["accuracy"] for r in bars],
        color=["tab:green" if r["method"] in ours else "tab:blue" for r in bars],
    )
    for i, r in enumerate(bars):
        ax.text(i, r["accuracy"], f"{r['accuracy']:.3f}", ha="center", va="bottom", fontsize=8)
    for r, ls in zip([r for r in rows if "fine-tuned" in r["method"]], ("--", ":"), strict=False):
        ax.axhline(
            r["accuracy"], color="black", ls=ls, label=f"{r['method']} ({r['accuracy']:.3f})"
        )
    ax.set_ylabel("test accuracy of the target model")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_scaling(
    rows: Sequence[dict], path: str | os.PathLike, *, d: int | None = None, title: str = ""
) -> None:
    """Accuracy vs training examples: per-class sizes (log x, N = d marked) and fractions (PNG)."""
    plt = _pyplot()

    regimes = [g for g in ("per class", "fraction") if any(r["regime"] == g for r in rows)]
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(6 * len(regimes), 4.2), dpi=120, squeeze=False
    )
    for ax, regime in zip(axes[0], regimes, strict=True):
        mine = [r for r in rows if r["regime"] == regime]
        for method in dict.fromkeys(r["method"] for r in mine):
            pts = sorted((r["n"], r["accuracy"]) for r in mine if r["method"] == method)
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=method)
        if regime == "per class":
            ax.set_xscale("log")
            if d is not None:
                ax.axvline(d, color="gray", ls=":", label=f"N = d = {d}")
        ax.set_xlabel(
            "training examples N"
            + (" (first k per class)" if regime == "per class" else " (stratified fraction)")
        )
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
