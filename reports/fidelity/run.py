"""Issue 22 items 3 and 4 on real models (CPU, seed 0): per base layer the linear probe, head-only
and task matrix accuracies beside the fidelity of each map (cosine and R² of X_i W against the
fine-tuned embeddings on test), middle-layer enrichment per model, and the paper's Table 6
(frozen vs adapted head). Data, splits and fine-tunes as reports/run_real.sh (its fine-tuned
folders in runs/real are reused when their recipe matches).

Resumable: each finished run is kept in results.json and skipped when run again.
Usage: python reports/fidelity/run.py [NAME ...]   (NAMEs from PLAN; default all; --report
runs nothing and rewrites every report from results.json)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tasklift.data import load_dataset, split, subsample
from tasklift.experiments import compare, enrichment, summarise
from tasklift.finetune import finetune_cached
from tasklift.report import markdown_table, sweep_sections, write_json, write_report

HERE, RUNS = Path(__file__).parent, Path("runs")
TEXT = dict(test_size=0.2, train_limit=1000, max_length=64, epochs=1.0, lr=1e-4)
VISION = dict(test_size=0.2, image_size=64, max_length=64, lr=1e-3)
# DINOv2-S as reports/run_real_vit.sh fine-tuned it; pool cls+mean is what its head reads
VIT = dict(test_size=0.2, image_size=112, max_length=64, lr=5e-5, epochs=3, pool="cls+mean")
# ft: the fine-tuned folder; finetune False: it must exist already (made elsewhere), else skipped
PLAN = [
    dict(name="minilm-l6_bbc_news", base="minilm-l6", data="bbc_news", frozen=True, **TEXT),
    dict(
        name="efficientnet-lite0_digits",
        base="efficientnet-lite0",
        data="digits",
        epochs=3,
        ft="runs/real/effnet_digits_ft",
        frozen=True,
        **VISION,
    ),
    dict(name="minilm-l3_bbc_news", base="minilm-l3", data="bbc_news", **TEXT),
    dict(name="minilm-l6_tweets", base="minilm-l6", data="tweets", **{**TEXT, "test_size": 1000}),
    dict(name="mpnet_bbc_news", base="mpnet", data="bbc_news", **TEXT),
    dict(name="dinov2-s_digits", base="dinov2-s", data="digits", finetune=False, **VIT),
    dict(name="dinov2-s_elpv", base="dinov2-s", data="elpv", finetune=False, **VIT),
]


def splits(row: dict):
    """The seeded split of run_real.sh: stratified test, train capped at train_limit."""
    ds = load_dataset(row["data"], image_size=row.get("image_size", 224))
    train, test = split(ds, test_size=row["test_size"], seed=0)
    if row.get("train_limit") and row["train_limit"] < len(train):
        train = subsample(train, fraction=row["train_limit"] / len(train), seed=0)
    return train, test


def run(row: dict, head: str) -> dict | None:
    """Fine-tune (unless cached) with the adapted or frozen head, then the layer sweep."""
    ft = Path(row.get("ft", RUNS / "real" / f"{row['name']}_ft"))
    if head == "frozen":
        ft = RUNS / "fidelity" / f"{row['name']}_ft_frozen"
    if not row.get("finetune", True) and not ft.is_dir():
        print(f"skip {row['name']}: no fine-tuned model in {ft}")
        return None
    train, test = splits(row)
    t0 = time.time()
    info = finetune_cached(
        row["base"], train, ft, epochs=row["epochs"], lr=row["lr"], seed=0,
        max_length=row["max_length"], batch_size=16, frozen_head=head == "frozen",
    )  # fmt: skip
    t1 = time.time()
    rows = compare(
        row["base"], ft, train, test, max_length=row["max_length"], pool=row.get("pool", "cls")
    )
    settings = {**row, "head": head, "finetuned": str(ft), "n_train": len(train),
                "n_test": len(test), "finetune_seconds": round(t1 - t0, 1),
                "sweep_seconds": round(time.time() - t1, 1), "finetune": info}  # fmt: skip
    return {"settings": settings, "rows": rows}


def write_run(res: dict) -> None:
    """A run's own report (sweep tables and plots, layers.png) from its stored rows."""
    s = res["settings"]
    name = s["name"] + ("" if s["head"] == "adapted" else "_frozen")
    title = f"{s['base']} / {s['data']}, {s['head']} head"
    sections = sweep_sections(res["rows"], HERE / name, title=title)
    write_report(HERE / name, title=title, sections=sections, settings=s,
                 results={"rows": res["rows"]})  # fmt: skip


def _at(rows: list[dict], method: str, key: str = "selected") -> dict:
    return next(r for r in rows if r["method"] == method and r.get(key))


def enrichment_rows(results: dict) -> list[dict]:
    """Per model: enrichment, where each task matrix beats the probe, fidelity at its CV layer."""
    out = []
    for name, res in results.items():
        rows = res["adapted"]["rows"]
        e = enrichment(rows)
        row = {"setting": name, **e}
        for solver in ("lstsq", "ridge-CV"):
            cv = _at(rows, f"task matrix ({solver})")
            fid = f"{cv['layer']}: {cv['cosine']:.3f} / {cv['r2']:.3f}"
            row[f"{solver} CV layer: cos / R²"] = fid
        out.append(row)
    return out


def table6_rows(results: dict) -> list[dict]:
    """The paper's Table 6: the task matrix ending in an adapted vs a frozen head."""
    out = []
    for name, res in results.items():
        if "frozen" not in res:
            continue
        row = {"setting": name}
        for head in ("adapted", "frozen"):
            s = {r["method"]: r for r in summarise(res[head]["rows"])}
            cv, best = s["task matrix (lstsq), CV layer"], s["task matrix (lstsq), best layer"]
            row |= {f"fine-tuned, {head}": s["fine-tuned"]["accuracy"],
                    f"TM lstsq CV, {head}": f"{cv['accuracy']:.4f} ({cv['layer']})",
                    f"TM lstsq best, {head}": f"{best['accuracy']:.4f} ({best['layer']})",
                    f"head-only, {head}": s["head-only"]["accuracy"]}  # fmt: skip
        row["linear probe"] = s["linear probe"]["accuracy"]
        out.append(row)
    return out


def write_summary(results: dict) -> None:
    """report.md: the findings (hand-written in findings.md), both tables, links to each run."""
    findings = HERE / "findings.md"
    e, t6 = enrichment_rows(results), table6_rows(results)
    links = "\n".join(f"- [{n}]({n}/report.md) ![{n}]({n}/layers.png)" for n in sorted(
        p.parent.name for p in HERE.glob("*/report.md")))  # fmt: skip
    text = (
        "# Middle-layer enrichment, map fidelity and frozen vs adapted heads (issue 22.3, 22.4)\n\n"
        + (findings.read_text() if findings.is_file() else "")
        + "\n## Enrichment and where the task matrix beats the probe\n\n"
        + markdown_table(e, list(dict.fromkeys(k for r in e for k in r)))
        + "\n\n## Table 6: frozen vs adapted head (task matrix, plain least squares)\n\n"
        + (markdown_table(t6, list(t6[0])) if t6 else "(no frozen-head run yet)")
        + f"\n\n## Runs\n\n{links}\n\nMade by `python reports/fidelity/run.py`.\n"
    )
    (HERE / "report.md").write_text(text)


def main(names: list[str]) -> None:
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for row in PLAN:
        if names and row["name"] not in names:
            continue
        for head in ("adapted", "frozen") if row.get("frozen") else ("adapted",):
            if head in results.get(row["name"], {}):
                continue
            res = run(row, head)
            if res is not None:
                results.setdefault(row["name"], {})[head] = res
                write_json(path, results)
    for res in results.values():
        for r in res.values():
            write_run(r)
    write_summary(results)


if __name__ == "__main__":
    main(sys.argv[1:])
