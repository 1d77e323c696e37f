"""Tables (markdown), JSON results and PNG plots, all written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .io import write_text, write_with
from .plots import plot_bars, plot_layer_curves, plot_layer_sweep, plot_scaling, plot_transfer

__all__ = [
    "write_report",
    "merge_reports",
    "sweep_sections",
    "scaling_sections",
    "transfer_sections",
    "markdown_table",
    "write_json",
    "write_csv",
    "plot_layer_sweep",
    "plot_layer_curves",
    "plot_scaling",
    "plot_bars",
    "markdown_to_html",
]


def write_report(
    out: str | os.PathLike,
    *,
    title: str,
    sections: Sequence[tuple[str, str]],
    settings: dict,
    results: dict,
    intro: str = "",
) -> None:
    """The one report layout every command writes: `report.md` (title, intro, sections, the
    settings that reproduce the run), `results.json` (settings and results) and, when results
    hold "rows", `results.csv`. Plots are written by the section builders beside them."""
    out = Path(out)
    _mark_run(out, "run")
    write_json(out / "results.json", {"settings": settings, **results})
    if results.get("rows"):
        write_csv(out / "results.csv", results["rows"])
    body = "".join(f"## {head}\n\n{text}\n\n" for head, text in sections)
    settings_md = json.dumps(settings, indent=2, default=str)
    write_text(
        out / "report.md",
        f"# {title}\n\n{intro}\n\n{body}## Settings\n\n```json\n{settings_md}\n```\n",
    )


def _mark_run(out: Path, kind: str) -> None:
    """The marker that makes `out` recognisable as tasklift's (so --overwrite may replace it)."""
    from . import __version__

    write_json(out / "tasklift_run.json", {"tasklift": __version__, "kind": kind})


def merge_reports(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str,
    overwrite: bool = False,
) -> None:
    """One report.md + self-contained report.html from several run folders' reports, their
    headings pushed one level down and their plots copied beside under per-run names (the
    output rules of `io.check_output`: an existing `out` only if tasklift's and `overwrite`)."""
    from . import __version__
    from .io import check_output

    check_output(out, overwrite=overwrite, inputs=runs)
    out = Path(out)
    _mark_run(out, "merged report")
    parts = [f"# {title}\n", f"tasklift {__version__}; sections below are the runs' own reports.\n"]
    used: set[str] = set()
    for run in map(Path, runs):
        if not (run / "report.md").is_file():
            raise FileNotFoundError(f"{run} has no report.md; pass folders written by tasklift")
        md = (run / "report.md").read_text()
        prefix = next(  # runs in folders of the same name must not overwrite each other's plots
            p
            for p in (run.name, *(f"{run.name}-{k}" for k in range(2, len(runs) + 2)))
            if p not in used
        )
        used.add(prefix)
        for png in run.glob("*.png"):
            write_with(
                out / f"{prefix}_{png.name}", lambda tmp, png=png: tmp.write_bytes(png.read_bytes())
            )
            md = md.replace(f"]({png.name})", f"]({prefix}_{png.name})")
        parts.append(
            "\n".join(("#" + line) if line.startswith("#") else line for line in md.splitlines())
        )
    text = "\n\n".join(parts) + "\n"
    write_text(out / "report.md", text)
    write_text(out / "report.html", markdown_to_html(text, out, title=title))


def sweep_sections(rows: list[dict], out: str | os.PathLike, *, title: str) -> list[tuple]:
    """Summary table, layer sweep (plot + per-layer table) and the per-layer analysis (baseline
    curves, map fidelity, middle-layer enrichment) of `experiments.compare` rows."""
    from .experiments.sweep import summarise

    plot_layer_sweep(rows, Path(out) / "layer_sweep.png", title=title)
    summary = markdown_table(
        summarise(rows), ["method", "layer", "accuracy", "trained_params", "n_train"]
    )
    sweep = markdown_table(
        [r for r in rows if "selected" in r],
        ["method", "layer", "accuracy", "alpha", "cv_mse", "cosine", "r2", "selected"],
    )
    sections = [
        ("Summary", summary),
        ("Layer sweep", f"![layer sweep](layer_sweep.png)\n\n{sweep}"),
        _layer_section(rows, out, title=title),
    ]
    return sections + _per_class_sections(rows)


def _layer_section(rows: list[dict], out: str | os.PathLike, *, title: str) -> tuple:
    """Every method per layer beside each map's fidelity (cos, R² of X_i W against the
    fine-tuned embeddings on test), and middle-layer enrichment against the task matrices."""
    from .experiments.layers import enrichment, layer_table

    plot_layer_curves(rows, Path(out) / "layers.png", title=title)
    table = layer_table(rows)
    e = enrichment(rows)
    text = (
        "![per layer](layers.png)\n\n"
        + markdown_table(table, list(dict.fromkeys(k for r in table for k in r)))
        + "\n\nMiddle-layer enrichment: the best probe accuracy before the last layer minus "
        "the last layer's (> 0: the probe peaks before the last layer); where each task matrix "
        "beats the probe read at the same layer; its best and CV layer minus the last-layer "
        "probe.\n\n" + markdown_table([e], list(e))
    )
    return ("Per layer: baselines, fidelity, enrichment", text)


def _per_class_sections(rows: list[dict]) -> list[tuple]:
    """Per-class F1 of every row that has it (fine-tuned, task matrices at their CV layer) and
    the confusion matrix of the first task matrix."""
    have = [r for r in rows if r.get("per_class")]
    if not have:
        return []
    label = lambda r: r["method"] + (f", layer {r['layer']}" if "selected" in r else "")  # noqa: E731
    table = [
        {"class": c["class"], "support": c["support"],
         **{f"F1 {label(r)}": r["per_class"][k]["f1"] for r in have}}
        for k, c in enumerate(have[0]["per_class"])
    ]  # fmt: skip
    out = [("Per class (test)", markdown_table(table, list(table[0])))]
    cm_row = next((r for r in have if r.get("confusion")), None)
    if cm_row is not None:
        names = [c["class"] for c in cm_row["per_class"]]
        cm = [{"true": n, **dict(zip(names, row, strict=True))}
              for n, row in zip(names, cm_row["confusion"], strict=True)]  # fmt: skip
        out.append((f"Confusion matrix: {label(cm_row)} (rows true, columns predicted)",
                    markdown_table(cm, ["true", *names])))  # fmt: skip
    return out


def scaling_sections(
    rows: list[dict], scarce: list[dict], out: str | os.PathLike, *, title: str, d: int
) -> list[tuple]:
    """Scaling plot, data-scarce table and every size, from `experiments.scaling` rows."""
    plot_scaling(rows, Path(out) / "scaling.png", d=d, title=title)
    intro = (
        "Task matrix at a fixed base layer vs linear probe as the training set grows (embedding "
        f"width d = {d}: plain least squares is least stable near N = d).\n\n"
        "![scaling](scaling.png)"
    )
    scarce_md = markdown_table(
        scarce, ["fraction", "n", "method", "task matrix", "linear probe", "gain %"]
    )
    table = markdown_table(rows, ["regime", "size", "n", "method", "layer", "accuracy"])
    return [("Scaling", intro), ("Data-scarce", scarce_md), ("All sizes", table)]


def transfer_sections(rows: list[dict], out: str | os.PathLike, *, title: str) -> list[tuple]:
    """Bar plot and table of `experiments.transfer_table` rows (and what could not run)."""
    plot_transfer(rows, Path(out) / "transfer.png", title=title)
    table = markdown_table(
        rows, ["method", "accuracy", "scale", "val_accuracy", "moved", "seconds"]
    )
    notes = "\n".join(
        f"- {r['method']}: not applicable ({r['note']})" for r in rows if r.get("note")
    )
    return [("Results", f"![transfer](transfer.png)\n\n{table}\n\n{notes}")]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.1e}"
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


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Rows as CSV (union of keys as columns; nested values such as per-class lists stay in
    the JSON), atomically."""
    import csv
    import io

    rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _inline(text: str) -> str:
    import html
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md: str, images: Path, *, title: str = "tasklift report") -> str:
    """A self-contained HTML page from the markdown tasklift writes (headings, tables, code,
    paragraphs, images inlined as base64 from `images`)."""
    import base64
    import html
    import re

    out, table, code = [], [], None
    for line in md.splitlines() + [""]:
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                tag = "th" if not table else "td"
                table.append(
                    "<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>"
                )
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("```"):
            code = []
        elif m := re.match(r"^(#+) (.*)", line):
            out.append(f"<h{len(m[1])}>{_inline(m[2])}</h{len(m[1])}>")
        elif m := re.match(r"^!\[(.*)\]\((.+)\)$", line):
            data = base64.b64encode((images / m[2]).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(m[1])}" src="data:image/png;base64,{data}">')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:.2em .5em}img{max-width:100%}"
        "pre{background:#f5f5f5;padding:.5em;overflow-x:auto}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
