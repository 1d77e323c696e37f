"""The BiCo authors' own implementation (github.com/apanariello4/merge-and-rebase, `BiCoRebase`)
beside tasklift's `Transfer(method="bico")`, in one process, on the same pair, data and scale
grid: wall seconds of one full transfer each (calibration, maps, transport and the validation
scale sweep), their ratio, and the chosen scale and test accuracy of each.

    git clone https://github.com/apanariello4/merge-and-rebase /work/authors_bico
    git -C /work/authors_bico checkout 345c5704b846762c892f0026843adb8129c78a40
    python benchmarks/bench_authors.py --authors /work/authors_bico [--threads 2] [--repeats 2]

writes benchmarks/results/authors.json and authors.md. Needs A_ft of reports/run_real.sh:
runs/real/minilm-l6_bbc_news_ft. The authors' code is imported from --authors at run time;
only the glue is here. Both sides get what tasklift's setup makes (A's weights under A_ft's
head, B with A_ft's head carried onto it, τ_A without the head, module pairs by proportional
depth): the authors' code has no classification head to carry and pairs modules by identical
names, so their side is handed tasklift's pairs as module names (a view of A named as B).
Their scale choice is their sweep's: scales > 0, the first best kept on ties, early stop after
`--patience` worse steps (5 in their configs), on tasklift's grid.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine
from torch import nn

from tasklift.data import Dataset, calibration_split, split, take
from tasklift.io import write_text
from tasklift.models import encode
from tasklift.report import markdown_table
from tasklift.timing import Timings
from tasklift.transfer import Transfer
from tasklift.transfer.calibration import calibrate
from tasklift.transfer.head import classifier_setup
from tasklift.transfer.methods import SCALES, STATS_DTYPE, TIE_BREAK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from transfer_real import real_split  # noqa: E402  (the real pairs' split, as their table's)

#: `Transfer.timings_` phases of the transfer proper (the rest loads models and carries the head)
CORE = ("calibrate", "statistics", "solve", "transport", "post", "scale search")


def import_authors(path: Path) -> types.SimpleNamespace:
    """The authors' BiCo, sweep tracker, axpy and recipe, imported from their work tree."""
    src = path / "src"
    sys.path.insert(0, str(src))
    # rebase/methods/__init__.py imports every method; TransFusion's needs open_clip (and with
    # it torchvision), which BiCo never uses: load the package without running that file
    methods = types.ModuleType("merge_and_rebase.rebase.methods")
    methods.__path__ = [str(src / "merge_and_rebase" / "rebase" / "methods")]
    sys.modules[methods.__name__] = methods
    importlib.import_module("merge_and_rebase.rebase")
    bico = importlib.import_module("merge_and_rebase.rebase.methods.bico")
    common = importlib.import_module("merge_and_rebase.merge.methods._common")
    search = importlib.import_module("merge_and_rebase.utils.alpha_search")
    recipes = importlib.import_module("merge_and_rebase.models.grad_recipes")
    return types.SimpleNamespace(
        bico=bico.BiCoRebase(),
        axpy=common.axpy_state_dict,
        tracker=search.PerTaskAlphaTracker,
        recipe=recipes.seq_classification_recipe(device="cpu"),
    )


def commit_of(path: Path) -> str:
    """The checked-out commit of `path`, or "unknown" where it is no git work tree."""
    got = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True)
    return got.stdout.decode().strip() if got.returncode == 0 else "unknown"


def named_view(model: nn.Module, names: dict[str, str]) -> nn.Module:
    """A container whose module `new` is `model`'s module `old`, for each {new: old} (hooks
    registered on the view's modules land on the model's own)."""
    mods, view = dict(model.named_modules()), nn.Module()
    made = {id(view)}
    for new, old in names.items():
        *path, leaf = new.split(".")
        parent = view
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
                made.add(id(parent._modules[part]))
            parent = parent._modules[part]
        if id(parent) not in made:
            raise ValueError(f"{new}: a paired module inside another paired module")
        parent.add_module(leaf, mods[old])
    return view


class Hooked(nn.Module):
    """A model as the authors' code takes it: hooks go on `.visual` (here a named view of the
    model's paired modules), the recipe calls the model itself."""

    def __init__(self, model: nn.Module, view: nn.Module) -> None:
        super().__init__()
        self.model, self.visual = model, view

    def forward(self, **kw):
        return self.model(**kw)


def batches(X, y, processor, max_length: int, size: int = 16) -> list[dict]:
    """Encoded batches in `Transfer`'s order; "inputs" is the key their calibration reads."""
    out = []
    for i in range(0, len(y), size):
        idx = np.arange(i, min(i + size, len(y)))
        enc = encode(take(X, idx), processor, max_length=max_length)
        out.append({**enc, "inputs": enc["input_ids"], "labels": torch.as_tensor(y[idx])})
    return out


def accuracy(model: nn.Module, X, y, processor, max_length: int) -> float:
    """Accuracy of the classifier's argmax on (X, y)."""
    hits = 0
    with torch.no_grad():
        for b in batches(X, y, processor, max_length):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            hits += int((logits.argmax(-1) == b["labels"]).sum())
    return hits / len(y)


def run_authors(au, args, pair: tuple[str, str, str], calib, val, test) -> dict:
    """One transfer by the authors' BiCo on tasklift's setup; seconds, scale, test accuracy."""
    a, a_ft, b = pair
    ml, t0, clock = args.max_length, time.perf_counter(), Timings()
    est = Transfer(a, a_ft, b, token=args.token, max_length=ml, device="cpu")
    est.timings_, est.max_length_ = clock, ml
    with clock("setup"):  # tasklift's: loads, A_ft's head carried onto B, τ_A, module pairs
        a_ft_model, proc_a = est._load(a_ft, head=True)
        prep = classifier_setup(est, a_ft_model, proc_a, calib.X, calib.y)
        del a_ft_model
        calibrate(prep["source"], prep["target"], {}, est._batches(len(calib.X), "head"),
                  prep["loss"], signals=(), head=prep["head_step"])  # fmt: skip
    source, target, pairs = prep["source"], prep["target"], prep["pairs"]
    mods_a = dict(source.named_modules())
    delta = {
        f"{tb}.{p}": prep["tv"].deltas[f"{sa}.{p}"]
        for tb, sa in pairs.items()
        for p, _ in mods_a[sa].named_parameters(recurse=False)
        if f"{sa}.{p}" in prep["tv"].deltas
    }
    base = {k: v.detach().clone() for k, v in target.state_dict().items()}
    with clock("bico"):  # their calibration pass, Procrustes maps and transport
        tau_b = au.bico.transport(
            source_base=source.state_dict(), target_base=base, delta=delta,
            source_model=Hooked(source, named_view(source, pairs)),
            target_model=Hooked(target, named_view(target, {t: t for t in pairs})),
            source_dataloader=batches(calib.X, calib.y, prep["source_processor"], ml),
            target_dataloader=batches(calib.X, calib.y, prep["processor"], ml),
            source_recipe=au.recipe, target_recipe=au.recipe, device="cpu",
            patch_qkv=False, verbose=False, show_progress=False,
        )  # fmt: skip
    with clock("scale search"):  # their per-task sweep: scales > 0, first best, patience
        first = min(s for s in args.scales if s > 0)  # their initial alpha
        tracker = au.tracker(task_names=["task"], initial_alpha=first, patience=args.patience)
        scores = {}
        tracker.secondary_active[0] = False  # no untransported baseline (B's shapes differ)
        for s in sorted(set(args.scales)):
            target.load_state_dict(au.axpy(base, tau_b, s))
            scores[s] = accuracy(target, val.X, val.y, prep["processor"], ml)
            if s > 0:
                tracker.update(alpha=s, indices=[0], primary_accs=[scores[s]],
                               secondary_accs=[float("-inf")])  # fmt: skip
            if not tracker.primary_active[0]:
                break
    seconds = time.perf_counter() - t0
    scale = tracker.best_alpha[0]
    target.load_state_dict(au.axpy(base, tau_b, scale))
    zeroed = [k for k, v in tau_b.items() if k in delta and not v.any() and delta[k].any()]
    return {
        "impl": "authors", "seconds": seconds,
        "core seconds": clock["bico"] + clock["scale search"], "timings": dict(clock),
        "scale": scale, "val_scores": scores,
        "test accuracy": accuracy(target, test.X, test.y, prep["processor"], ml),
        "moved": len(delta) - len(zeroed), "of": len(prep["tv"].deltas), "zeroed": zeroed,
    }  # fmt: skip


def run_tasklift(args, pair: tuple[str, str, str], calib, val, test) -> dict:
    """One `Transfer(method="bico")` fit; seconds, scale, test accuracy."""
    a, a_ft, b = pair
    t0 = time.perf_counter()
    t = Transfer(a, a_ft, b, method="bico", token=args.token, scales=args.scales,
                 scale_search="grid", max_length=args.max_length, device="cpu")  # fmt: skip
    t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
    seconds = time.perf_counter() - t0
    return {
        "impl": "tasklift", "seconds": seconds,
        "core seconds": sum(t.timings_.get(p, 0.0) for p in CORE), "timings": dict(t.timings_),
        "scale": t.scale_, "val_scores": t.val_scores_,
        "test accuracy": t.score(test.X, test.y),
        "moved": t.moved_params_, "of": t.source_params_,
        "tie_break": t.tie_break, "stats_dtype": t.stats_dtype, "scale_search": t.scale_search,
    }  # fmt: skip


def data(args, a_ft: str) -> tuple[Dataset, Dataset, Dataset]:
    """Calibration, validation and test rows as bench_profile draws them (draw 0)."""
    train, test = real_split(args.data, a_ft, "0.2")
    calib, val, _ = calibration_split(train, calib=args.calibration, val=args.validation)
    if args.test:
        test = split(test, test_size=args.test, seed=0)[1]
    return calib, val, test


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--authors", type=Path, required=True, help="their work tree (has src/)")
    ap.add_argument("--authors-commit", help="recorded commit (default: git rev-parse HEAD)")
    ap.add_argument("--pair", default="minilm-l6:minilm-l3", help="A:B")
    ap.add_argument("--data", default="bbc_news")
    ap.add_argument("--runs", default="runs/real", help="where the fine-tuned A is")
    ap.add_argument("--token", default="all")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--validation", type=int, default=200)
    ap.add_argument("--test", type=int, default=0, help="a stratified subset (0: all)")
    ap.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    ap.add_argument("--patience", type=int, default=5, help="the authors' sweep's early stop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for authors.json/.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    au = import_authors(args.authors.resolve())
    a, b = args.pair.split(":")
    pair = (a, f"{args.runs}/{a}_{args.data}_ft", b)
    calib, val, test = data(args, pair[1])
    runs, rows = [], []
    for r in range(args.repeats):  # authors, tasklift, authors, tasklift, ...
        got = {}
        for impl in ("authors", "tasklift"):
            if impl == "authors":
                got[impl] = run_authors(au, args, pair, calib, val, test)
            else:
                got[impl] = run_tasklift(args, pair, calib, val, test)
            runs.append({"repeat": r, **got[impl]})
            print(json.dumps(runs[-1], default=str), flush=True)
        theirs, ours = got["authors"], got["tasklift"]
        rows.append({
            "repeat": r,
            "authors s": round(theirs["seconds"], 1),
            "tasklift s": round(ours["seconds"], 1),
            "tasklift / authors": round(ours["seconds"] / theirs["seconds"], 2),
            "authors core s": round(theirs["core seconds"], 1),
            "tasklift core s": round(ours["core seconds"], 1),
            "core tasklift / authors": round(ours["core seconds"] / theirs["core seconds"], 2),
            "authors scale": theirs["scale"],
            "tasklift scale": ours["scale"],
            "authors test acc": round(theirs["test accuracy"], 4),
            "tasklift test acc": round(ours["test accuracy"], 4),
        })  # fmt: skip
    settings = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "authors_commit": args.authors_commit or commit_of(args.authors),
        "n_calibration": len(calib), "n_validation": len(val), "n_test": len(test),
    }  # fmt: skip
    write(args.out, rows, runs, settings)


def write(out: Path, rows: list[dict], runs: list[dict], settings: dict) -> None:
    """out/authors.json (machine, settings, rows, every run) and out/authors.md."""
    table = markdown_table(rows, list(rows[0]))
    doc = {"machine": machine(), "settings": settings, "rows": rows, "runs": runs}
    write_text(out / "authors.json", json.dumps(doc, indent=2, default=str) + "\n")
    notes = (
        f"{settings['pair']} on {settings['data']}: {settings['n_calibration']} calibration, "
        f"{settings['n_validation']} validation, {settings['n_test']} test rows, "
        f"{settings['max_length']} tokens, token={settings['token']!r}, scales "
        f"{settings['scales']}, CPU threads={settings['threads']}; tasklift at its defaults "
        f"(tie_break {TIE_BREAK:g}, {STATS_DTYPE} statistics); run order alternated "
        f"(authors first). Authors: apanariello4/merge-and-rebase@{settings['authors_commit']}, "
        "`BiCoRebase.transport` (calibration, maps, transport) then their per-task sweep "
        f"(patience {settings['patience']}), on tasklift's setup; 'core' leaves out the setup "
        "both share (loads, A_ft's head carried onto B): `Transfer.timings_` phases "
        f"{', '.join(CORE)}; the authors' BiCo and sweep. Seconds are context, ratios the result."
    )
    md = f"# BiCo: the authors' implementation vs tasklift\n\n{notes}\n\n{table}\n\n"
    write_text(out / "authors.md", md + f"Machine: `{machine()}`\n")
    print(table)


if __name__ == "__main__":
    main()
