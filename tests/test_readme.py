"""README's numbers equal the committed results files they quote (issue 18).

Every README table whose numbers come from a committed file is parsed row by row and compared,
cell by cell, with that file at the README's own rounding (a cell "0.922" matches 0.9215 to
0.9225; a cell "86%" matches 85.5% to 86.5%):

- "The demo" table and the prose under it      <- docs/demo_results.json (`tasklift demo`)
- "Task matrices on real models"                <- reports/real{,_imdb,_vit}/results.json
- "Paper experiments"                           <- reports/experiments/report.md (Summary tables)
- "Transfer experiments" (ViTs pretrained here) <- reports/transfer/report.md (its run tables)
- "BiCo on real pretrained pairs"               <- reports/transfer_real/results.json
- the benchmarks' headline figures (`HEADLINES`) <- benchmarks/results/*.md (their tables)

No models, no torch: reads text and JSON only. `python tests/test_readme.py` prints every
mismatch as README vs file (exit 1 if any), for fixing README after a re-run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# -- reading README ---------------------------------------------------------------------------
def sections(text: str) -> dict[str, str]:
    """'## heading' -> the text under it (up to the next '## ')."""
    out, head = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            head = line[3:].strip()
            out[head] = ""
        elif head is not None:
            out[head] += line + "\n"
    return out


def section(title_start: str) -> str:
    found = [t for h, t in sections(README.read_text()).items() if h.startswith(title_start)]
    assert len(found) == 1, f"README has {len(found)} sections starting {title_start!r}"
    return found[0]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text` as rows of {header: cell}, bold marks removed."""

    def cells(line: str) -> list[str]:
        return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]

    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) > 2:
            head = cells(block[0])
            out.append([dict(zip(head, cells(r), strict=True)) for r in block[2:]])
        block = []
    return out


def the_table(title_start: str) -> list[dict[str, str]]:
    found = tables(section(title_start))
    assert len(found) == 1, f"README section {title_start!r} has {len(found)} tables, not 1"
    return found[0]


# -- comparing --------------------------------------------------------------------------------
class Diff:
    """Mismatches of one README table: (row, column, README's text, the file's value)."""

    def __init__(self, source: str):
        self.source, self.rows = source, []

    def number(self, row: str, col: str, cell: str, value, *, percent: bool = False) -> None:
        """`cell` (e.g. '0.922', '86%', '22,713,986') equals `value` at the cell's rounding;
        `value` None means the file has no such number, so the cell must be blank."""
        if value is None:
            if cell not in ("", "n/a"):
                self.rows.append((row, col, cell, "(nothing in the file)"))
            return
        text = cell.replace(",", "").rstrip("%").strip()
        try:
            shown = float(text)
        except ValueError:
            self.rows.append((row, col, cell, value))
            return
        decimals = len(text.split(".")[1]) if "." in text else 0
        scale = 100.0 if percent else 1.0
        if abs(shown - scale * float(value)) > 0.5 * 10.0**-decimals + 1e-9:
            self.rows.append((row, col, cell, value))

    def same(self, row: str, col: str, cell: str, value) -> None:
        if cell != str(value):
            self.rows.append((row, col, cell, value))

    def report(self) -> str:
        lines = [f"README disagrees with {self.source}:"]
        lines += [f"  {r} | {c}: README {t!r}, file {v!r}" for r, c, t, v in self.rows]
        return "\n".join(lines)

    def check(self) -> None:
        assert not self.rows, self.report()


def read(rel: str) -> str:
    """The text of a committed file README quotes (refused in one line if missing)."""
    path = ROOT / rel
    assert path.is_file(), f"{rel}, which README quotes, is not in the checkout"
    return path.read_text()


def load(rel: str):
    return json.loads(read(rel))


def report_tables(rel: str) -> dict[str, dict[str, dict[str, str]]]:
    """Heading of each run in a merged report.md -> its first table after `### Summary` (or
    its first table), by the first column."""
    out = {}
    for part in re.split(r"^## ", read(rel), flags=re.M)[1:]:
        head, _, body = part.partition("\n")
        body = body.split("### Summary", 1)[-1].split("###", 1)[0]
        first = tables(body)
        if first:
            out[head.strip()] = {next(iter(r.values())): r for r in first[0]}
    return out


# -- the demo ---------------------------------------------------------------------------------
DEMO_ROWS = {  # README's label -> the method `tasklift demo` prints (experiments.summarise)
    "majority class": "majority class",
    "head-only (fine-tuned head on base [CLS], W = I)": "head-only",
    "linear probe (logistic regression, base [CLS])": "linear probe",
    "task matrix, plain least squares, layer chosen by CV on train": "task matrix (lstsq), CV layer",  # noqa: E501
    "task matrix, plain least squares, best layer on test": "task matrix (lstsq), best layer",
    "task matrix, ridge (α by 5-fold CV), layer by CV": "task matrix (ridge-CV), CV layer",
    "fine-tuned (upper bound)": "fine-tuned",
}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """The demo's printed summary (tasklift.experiments.summarise, without importing torch):
    baselines as they are; each task-matrix solver at its CV layer and at its best test layer
    (the first of equals)."""
    out = {r["method"]: r for r in rows if "selected" not in r}
    for method in dict.fromkeys(r["method"] for r in rows if "selected" in r):
        mine = [r for r in rows if r["method"] == method]
        out[f"{method}, CV layer"] = next(r for r in mine if r["selected"])
        out[f"{method}, best layer"] = max(mine, key=lambda r: r["accuracy"])
    return out


def demo_diff() -> Diff:
    res = load("docs/demo_results.json")
    summary, diff = summarise(res["rows"]), Diff("docs/demo_results.json")
    table = the_table("The demo")
    for row in table:
        label = row["method"]
        if label not in DEMO_ROWS:
            diff.rows.append((label, "method", label, f"(unknown row; known: {list(DEMO_ROWS)})"))
            continue
        r = summary[DEMO_ROWS[label]]
        diff.same(
            label, "base layer", row["base layer"], "" if r.get("layer") is None else r["layer"]
        )
        # exactly as the demo prints them (tasklift.report's 4 decimals and thousands commas)
        diff.same(label, "test accuracy", row["test accuracy"], f"{r['accuracy']:.4f}")
        params = r["trained_params"]
        diff.same(label, "trained parameters", row["trained parameters"],
                  f"{params:,}" if params >= 10_000 else params)  # fmt: skip
    missing = set(DEMO_ROWS) - {row["method"] for row in table}
    diff.rows += [(m, "method", "(missing)", "a row of the demo") for m in sorted(missing)]

    # the prose under the table: gaps closed, the best layer, the timings
    text = " ".join(section("The demo").split())
    acc = {k: summary[v]["accuracy"] for k, v in DEMO_ROWS.items()}
    tm = acc["task matrix, plain least squares, layer chosen by CV on train"]
    ft, head = (
        acc["fine-tuned (upper bound)"],
        acc["head-only (fine-tuned head on base [CLS], W = I)"],
    )  # noqa: E501
    probe = acc["linear probe (logistic regression, base [CLS])"]
    m = re.search(r"recovers (\d+)% of the head-only-to-fine-tuned gap \((\d+)% of the "
                  r"probe-to-fine-tuned gap\)", text)  # fmt: skip
    if m is None:
        diff.rows.append(("prose", "gap sentence", "(not found)", "recovers N% ... (M% ...)"))
    else:
        diff.number("prose", "head-only gap", m[1] + "%", (tm - head) / (ft - head), percent=True)
        diff.number("prose", "probe gap", m[2] + "%", (tm - probe) / (ft - probe), percent=True)
    best = summary["task matrix (lstsq), best layer"]["layer"]
    top = max(r["layer"] for r in res["rows"] if "selected" in r)
    m = re.search(r"\(layer (\d+) of (\d+) here\)", text)
    diff.same("prose", "best layer", m[0] if m else "(not found)", f"(layer {best} of {top} here)")
    s = res["settings"]
    m = re.search(r"fine-tuning (\d+) s, the comparison (\d+) s", text)
    if m is None:
        diff.rows.append(("prose", "timing", "(not found)", "fine-tuning N s, the comparison M s"))
    else:
        diff.number("prose", "fine-tuning seconds", m[1], s["finetune_seconds"])
        diff.number("prose", "comparison seconds", m[2], s["seconds"])
    return diff


def test_demo_table_matches_committed_demo_results():
    demo_diff().check()


# -- task matrices on real models -------------------------------------------------------------
MODELS = {"EfficientNet-Lite0": "efficientnet-lite0", "MiniLM-L6": "minilm-l6",
          "MiniLM-L3": "minilm-l3", "MPNet": "mpnet", "DINOv2-S": "dinov2-s"}  # fmt: skip
DATA = {"MNIST-5k": "mnist_5k", "digits": "digits", "BBC News": "bbc_news", "tweets": "tweets",
        "IMDB": "imdb", "ELPV": "elpv"}  # fmt: skip
#: the merged reports whose rows the table holds (rows marked † and ‡ come from the last two)
REAL = ("reports/real/results.json", "reports/real_imdb/results.json",
        "reports/real_vit/results.json")  # fmt: skip


def _at(cell: str) -> tuple[float, str]:
    """'0.922 (6/6)' -> (0.922, '6/6')."""
    value, layer = re.fullmatch(r"([\d.]+) \((\d+/\d+)\)", cell).groups()
    return float(value), layer


def real_diff() -> Diff:
    by_setting = {r["setting"]: r for path in REAL for r in load(path)["summary"]}
    diff, seen = Diff(", ".join(REAL)), set()
    for row in the_table("Task matrices on real models"):
        label = row["model / data"]
        m = re.fullmatch(r"(.+?) / (.+?)(?: \(([\d,]+) / ([\d,]+)\))?", label.rstrip(" †‡"))
        data = m[2].split(",")[0]  # "IMDB, 256 tokens": the data's name before its setting
        setting = f"{MODELS.get(m[1], m[1])} / {DATA.get(data, data)}"
        if setting not in by_setting:
            diff.rows.append((label, "setting", setting, f"(not in {sorted(by_setting)})"))
            continue
        seen.add(setting)
        r = by_setting[setting]
        if m[3]:
            diff.same(label, "n", f"{m[3]}/{m[4]}".replace(",", ""), r["n train/test"])
        diff.number(label, "fine-tuned", row["fine-tuned"], r["fine-tuned"])
        diff.number(label, "linear probe", row["linear probe"], r["linear probe"])
        diff.number(label, "head-only", row["head-only"], r["head-only"])
        diff.number(label, "gap", row["gap"], r["head-only→FT gap closed"].rstrip("%"))
        # TM: the better of lstsq and ridge-CV at their CV layers, marked "ridge" when it is ridge
        lstsq, ridge = _at(r["TM lstsq (CV layer)"]), _at(r["TM ridge-CV (CV layer)"])
        value, layer = ridge if ridge[0] > lstsq[0] else lstsq
        want = f"{value:.3f} ({layer}{', ridge' if ridge[0] > lstsq[0] else ''})"
        diff.same(label, "TM (layer)", row["TM (layer)"], want)
    diff.rows += [
        (s, "setting", "(missing)", "in results.json") for s in by_setting if s not in seen
    ]
    return diff


def test_real_models_table_matches_committed_results():
    real_diff().check()


# -- paper experiments ------------------------------------------------------------------------
EXPERIMENTS = {  # README's task -> the heading of its run in reports/experiments/report.md
    "RT sentiment": "tasklift demo: MiniLM-L6 on Rotten Tomatoes",
    "RT subjectivity": "ft_subjectivity on rt_subjectivity",
    "debate party": "ft_party on debates_party",
    "digits, ViT pretrained here": "vit_digits_ft on digits",
}


def experiments_diff() -> Diff:
    runs = report_tables("reports/experiments/report.md")
    diff = Diff("reports/experiments/report.md")
    for row in the_table("Paper experiments"):
        task = re.sub(r" \(.*\)$", "", row["task (test n)"])
        if task not in EXPERIMENTS:
            diff.rows.append((task, "task", task, f"(unknown; known: {list(EXPERIMENTS)})"))
            continue
        run = runs[EXPERIMENTS[task]]
        acc = {k: float(v["accuracy"]) for k, v in run.items()}
        diff.number(task, "fine-tuned", row["fine-tuned"], acc["fine-tuned"])
        diff.number(task, "linear probe", row["linear probe"], acc["linear probe"])
        diff.number(task, "head-only", row["head-only"], acc["head-only"])
        cell = row["task matrix, CV layer"]
        m = re.fullmatch(r"([\d.]+) (?:\(layer (\d+)\)|ridge-CV \(lstsq: ([\d.]+)\))", cell)
        if m is None:
            diff.rows.append((task, "task matrix", cell, "(cannot read)"))
        elif m[2]:  # plain least squares at its CV layer
            tm = run["task matrix (lstsq), CV layer"]
            diff.number(task, "task matrix", m[1], float(tm["accuracy"]))
            diff.same(task, "task matrix layer", m[2], tm["layer"])
        else:
            diff.number(task, "task matrix (ridge-CV)", m[1],
                        acc["task matrix (ridge-CV), CV layer"])  # fmt: skip
            diff.number(task, "task matrix (lstsq)", m[3], acc["task matrix (lstsq), CV layer"])
    return diff


def test_paper_experiments_table_matches_committed_report():
    experiments_diff().check()


# -- BiCo on ViTs pretrained here -------------------------------------------------------------
VIT_PAIRS = {  # README's target B -> the heading of its run in reports/transfer/report.md
    "same shape, seed 1": "Task-vector transfer: same shape, another seed",
    "width 128 → 192": "Task-vector transfer: width 128 -> 192",
    "depth 6 → 9": "Task-vector transfer: depth 6 -> 9",
}
VIT_COLUMNS = {"B + carried head": "B + carried head", "BiCo": "bico",
               "activation-only": "activation", "gradient-only": "gradient",
               "re-basin": "permutation", "naive": "naive", "GradFix": "gradfix",
               "probe on B (328 labels)": "linear probe on B",
               "B fine-tuned": "B fine-tuned"}  # fmt: skip


def transfer_vit_diff() -> Diff:
    runs, diff = report_tables("reports/transfer/report.md"), Diff("reports/transfer/report.md")
    text = " ".join(section("Transfer experiments").split())
    for row in the_table("Transfer experiments"):
        label = row["target B"]
        run = runs[VIT_PAIRS[label]]
        for col, method in VIT_COLUMNS.items():
            acc = run.get(method, {}).get("accuracy") or None
            diff.number(label, col, row[col], None if acc is None else float(acc))
        m = re.search(r"\(A fine-tuned: ([\d.]+)\.\)", text)
        diff.number(
            label, "A fine-tuned", m[1] if m else "", float(run["A fine-tuned"]["accuracy"])
        )
    return diff


def test_transfer_vit_table_matches_committed_report():
    transfer_vit_diff().check()


# -- BiCo on real pairs -----------------------------------------------------------------------
SHORT = {"L6": "minilm-l6", "L3": "minilm-l3", "MPNet": "mpnet"}
TASKS = {"BBC": "bbc_news", "tweets": "tweets"}
COLUMNS = {  # README column -> results.json method(s)
    "B + head": ("B + carried head",),
    "BiCo": ("bico",),
    "activation": ("activation",),
    "gradient": ("gradient",),
    "GradFix (vote / mean)": ("gradfix", "gradfix-mean"),
    "re-basin": ("permutation",),
    "naive": ("naive",),
    "probe on B": ("linear probe on B",),
    "B fine-tuned": ("B fine-tuned",),
}
# Rows a tagged variant does not record again: README takes them from the untagged run of the
# same pair (the probe and B fine-tuned do not depend on the token pairing).
SHARED = ("B + carried head", "linear probe on B", "B fine-tuned")


def transfer_real_diff() -> Diff:
    res = load("reports/transfer_real/results.json")
    at = {(r["pair"], r["task"], r["method"]): r for r in res}
    diff = Diff("reports/transfer_real/results.json")
    for row in the_table("BiCo on real pretrained pairs"):
        label = row["A → B, task"]
        a, b, task, *variant = re.split(r" → |, ", label)
        pair, task = f"{SHORT[a]} -> {SHORT[b]}", TASKS[task]
        tag = " [word]" if variant and variant[0].startswith("words") else ""
        for col, methods in COLUMNS.items():
            cells = [c.strip() for c in row[col].split(" / ")] if "/" in row[col] else [row[col]]
            if len(cells) != len(methods):
                cells = cells + [""] * (len(methods) - len(cells))
            for cell, method in zip(cells, methods, strict=True):
                name = method if method in SHARED else method + tag
                r = at.get((pair, task, name))
                if r is None:
                    diff.number(label, col, cell, None)
                    continue
                m = re.fullmatch(r"([\d.]+)(?: ± ([\d.]+))?(?: \((-?\d+)%\))?", cell)
                if m is None:
                    diff.rows.append((label, col, cell, r["accuracy"]))
                    continue
                mean, _, sd = r["accuracy"].partition(" ± ")
                diff.number(label, col, m[1], float(mean))
                if m[2]:
                    diff.number(label, col + " sd", m[2], float(sd))
                if m[3]:
                    diff.number(label, col + " gap", m[3] + "%", float(r["gap closed"][:-1]) / 100,
                                percent=True)  # fmt: skip
    return diff


def test_transfer_real_table_matches_committed_results():
    transfer_real_diff().check()


# -- the benchmarks' headline figures ---------------------------------------------------------
def _rows(rel: str, column: str) -> list[dict[str, str]]:
    """The rows of the table in a committed results .md that has `column`."""
    found = [t for t in tables(read(rel)) if t and column in t[0]]
    assert found, f"{rel} has no table with a column {column!r}"
    return found[0]


def _where(rel: str, column: str, **match: str) -> float:
    """`column` of the one row of `rel` whose cells equal `match`."""
    rows = [r for r in _rows(rel, column) if all(r[k] == v for k, v in match.items())]
    assert len(rows) == 1, f"{rel}: {len(rows)} rows match {match}"
    return float(rows[0][column])


def _total_ratio(n: str) -> float:
    """The authors' end-to-end seconds over tasklift's at N = n (bench_end_to_end)."""
    at = {r["pipeline"]: float(r["total s"]) for r in _rows(E2E, "total s") if r["N"] == n}
    return at["authors"] / at["tasklift"]


PROFILE, E2E = "benchmarks/results/profile.md", "benchmarks/results/end_to_end.md"
L63, L36 = "minilm-l6 -> minilm-l3", "minilm-l3 -> minilm-l6"
#: README's wording (whitespace collapsed), each number group in it, and what the results say
HEADLINES = [
    (r"defaults a fit is \*\*([\d.]+) / ([\d.]+)× its floor on L6 → L3 and "
     r"([\d.]+) / ([\d.]+)× on L3",
     [lambda p=p, d=d: _where(PROFILE, "fit / floor", pair=p, draw=d, setting="defaults")
      for p in (L63, L36) for d in ("0", "1")]),
    (r"A_ft's recipe \(1 epoch, batch 16\) takes ([\d.]+) s \(L3\) and ([\d.]+) s \(L6\)",
     [lambda: _where(PROFILE, "fine-tune B s", pair=L63, draw="0", setting="defaults"),
      lambda: _where(PROFILE, "fine-tune B s", pair=L36, draw="0", setting="defaults")]),
    (r"BiCo costs \*\*([\d.]+) / ([\d.]+) and ([\d.]+) / ([\d.]+) of that\*\*",
     [lambda p=p, d=d: _where(PROFILE, "fit / fine-tune B", pair=p, draw=d, setting="defaults")
      for p in (L63, L36) for d in ("0", "1")]),
    (r"([\d.]+) s, \*\*([\d.]+)× its floor\*\* \(([\d.]+) s, each of the 8",
     [lambda c=c: _where("benchmarks/results/profile_mpnet.md", c, setting="defaults")
      for c in ("fit s", "fit / floor", "floor s")]),
    (r"takes ([\d.]+) s, \*\*([\d.]+)× its floor\*\* \(([\d.]+) s:",
     [lambda c=c: _where("benchmarks/results/profile_qwen.md", c, setting="defaults")
      for c in ("fit s", "fit / floor", "floor s")]),
    (r"against their [\d.]+ / [\d.]+ s \(([\d.]+)× / ([\d.]+)×\)\*\*",
     [lambda r=r: _where("benchmarks/results/authors.md", "tasklift / authors", repeat=r)
      for r in ("0", "1")]),
    (r"\*\*([\d.]+)× as fast at N = 2k and ([\d.]+)× at N = 20k\*\*",
     [lambda: _total_ratio("2000"), lambda: _total_ratio("20,000")]),
]  # fmt: skip


def headlines_diff() -> Diff:
    text = re.sub(r"\s+", " ", README.read_text())
    diff = Diff("benchmarks/results (headline figures)")
    for pattern, values in HEADLINES:
        m = re.search(pattern, text)
        if m is None:
            diff.rows.append((pattern[:40], "", "(not in README)", ""))
            continue
        for i, value in enumerate(values, 1):
            diff.number(pattern[:40], str(i), m[i], value())
    return diff


def test_benchmark_headlines_match_committed_results():
    headlines_diff().check()


#: every README-vs-file comparison above
DIFFS = (demo_diff, real_diff, experiments_diff, transfer_vit_diff, transfer_real_diff,
         headlines_diff)  # fmt: skip


# -- the parser itself ------------------------------------------------------------------------
def test_tables_parse_rows_and_drop_bold():
    text = "x\n| a | b |\n|---|---|\n| **1** | 2 |\n| 3 |  |\n\nmore"
    assert tables(text) == [[{"a": "1", "b": "2"}, {"a": "3", "b": ""}]]
    d = Diff("f")
    d.number("r", "c", "0.922", 0.9224)
    d.number("r", "c", "86%", 0.8649, percent=True)
    d.number("r", "c", "22,713,986", 22713986)
    d.number("r", "c", "", None)
    assert not d.rows
    d.number("r", "c", "0.697", 0.6955)
    d.number("r", "c", "0.9", None)
    assert len(d.rows) == 2


@pytest.mark.parametrize(
    "old, new",
    [
        ("| 6 | 0.6955 | 385 |", "| 6 | 0.697 | 385 |"),  # the demo, at another rounding
        ("(layer 5 of 6 here)", "(layer 4 of 6 here)"),  # the demo's prose
        ("| 0.989 | 0.948 (6/8) |", "| 0.989 | 0.949 (6/8) |"),  # real models
        ("| 0.936 | 0.929 (3/3) |", "| 0.937 | 0.929 (3/3) |"),  # real models, MiniLM-L3 BBC
        ("| 0.742 | 0.665 ridge-CV", "| 0.742 | 0.666 ridge-CV"),  # paper experiments
        ("| 0.453 | **0.669** |", "| 0.453 | **0.670** |"),  # ViT transfer
        ("**0.920 ± 0.015** (86%)", "**0.920 ± 0.015** (87%)"),  # BiCo on real pairs
        ("(0.78× / 0.70×)**", "(0.78× / 0.71×)**"),  # a benchmark's headline
        ("**1.24× its floor**", "**1.42× its floor**"),  # another
    ],
)
def test_a_changed_readme_number_is_caught(old, new, tmp_path, monkeypatch):
    text = README.read_text()
    assert old in text, f"README no longer holds {old!r}: update this test"
    (tmp_path / "README.md").write_text(text.replace(old, new, 1))
    monkeypatch.setattr(sys.modules[__name__], "README", tmp_path / "README.md")
    assert sum(len(make().rows) for make in DIFFS) >= 1


if __name__ == "__main__":  # a readable diff of every table, for fixing README after a re-run
    failed = 0
    for make in DIFFS:
        d = make()
        print(d.report() if d.rows else f"README agrees with {d.source}")
        failed += len(d.rows)
    sys.exit(1 if failed else 0)
