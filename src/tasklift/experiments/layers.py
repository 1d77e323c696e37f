"""Per-layer analysis of a layer sweep (the task-matrix paper's open question): how faithfully
each map reproduces the fine-tuned embeddings, the baselines' curves beside the task matrix's,
and "middle-layer enrichment" (a probe that peaks before the last layer) as one number."""

from __future__ import annotations

import numpy as np

__all__ = ["fidelity", "layer_curves", "layer_table", "enrichment"]


def fidelity(pred, Y) -> dict[str, float]:
    """How close mapped embeddings are to the fine-tuned ones, both (N, d), in float64.

    Returns:
        {"cosine": mean over rows of cos(pred_n, Y_n), "r2": 1 - SSE / SST, SST summed about
        Y's column means (sklearn's r2_score with multioutput="variance_weighted")}.
    """
    P, Y = np.asarray(pred, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    norms = np.linalg.norm(P, axis=1) * np.linalg.norm(Y, axis=1)
    cosine = (P * Y).sum(1) / np.maximum(norms, np.finfo(np.float64).tiny)
    sst = ((Y - Y.mean(0)) ** 2).sum()
    return {"cosine": float(cosine.mean()), "r2": float(1 - ((Y - P) ** 2).sum() / sst)}


def layer_curves(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """{method: {layer: row}} of every method scored per layer (probe, head-only, solvers)."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["method"] not in ("majority class", "fine-tuned"):
            out.setdefault(r["method"], {})[r["layer"]] = r
    return {m: c for m, c in out.items() if len(c) > 1}


def _short(method: str) -> str:
    return method.removeprefix("task matrix (").removesuffix(")")


def layer_table(rows: list[dict]) -> list[dict]:
    """One row per base layer: each method's test accuracy beside each map's fidelity (cos, R²
    of X_i W against the fine-tuned embeddings; W = I for head-only)."""
    curves = layer_curves(rows)
    out = []
    for i in sorted({i for c in curves.values() for i in c}):
        row: dict = {"layer": i}
        for method, c in curves.items():
            r = c.get(i, {})
            name = _short(method)
            row[name] = r.get("accuracy")
            if "cosine" in r:
                row[f"cos {name}"], row[f"R² {name}"] = r["cosine"], r["r2"]
        out.append(row)
    return out


def enrichment(rows: list[dict]) -> dict:
    """Middle-layer enrichment and where the task matrix beats the probe, from sweep rows.

    Returns:
        {"layers": L, "probe peak layer" (the first of equals), "probe last" (its accuracy at
        layer L), "enrichment" (the best probe accuracy before layer L minus that at L: > 0
        when the probe peaks before the last layer), and per task-matrix solver "<solver>
        beats probe at" (layers where it out-scores the probe on the same layer), "<solver>
        best - probe last" and "<solver> CV - probe last" (accuracy differences)}.
    """
    curves = layer_curves(rows)
    probe = {i: r["accuracy"] for i, r in curves["linear probe"].items()}
    last = max(probe)
    out = {
        "layers": last,
        "probe peak layer": max(probe, key=probe.get),
        "probe last": probe[last],
        "enrichment": max(a for i, a in probe.items() if i < last) - probe[last],
    }
    for method, c in curves.items():
        if not method.startswith("task matrix"):
            continue
        name = _short(method)
        out[f"{name} beats probe at"] = [i for i in sorted(c) if c[i]["accuracy"] > probe[i]]
        out[f"{name} best - probe last"] = max(r["accuracy"] for r in c.values()) - probe[last]
        cv = next(r for r in c.values() if r["selected"])
        out[f"{name} CV - probe last"] = cv["accuracy"] - probe[last]
    return out
