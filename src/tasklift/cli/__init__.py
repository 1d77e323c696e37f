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

from .. import __version__
from ..defaults import FRACTIONS, PER_CLASS
from ..transfer.methods import (
    METHODS,
    SCALE_SEARCH,
    SCALES,
    SEARCHES,
    STATS_DTYPE,
    STATS_DTYPES,
    TIE_BREAK,
    TOKENS,
)
from .adapters import VAL
from .commands import (
    cmd_assets,
    cmd_check,
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
from .flags import (
    Parser,
    above_zero,
    alpha,
    alphas_flag,
    arg,
    choices_flag,
    counts,
    data_flags,
    fractions,
    index,
    layer,
    matrix_flags,
    methods,
    overwrite_flag,
    positive,
    runtime_flags,
    scales,
    unit,
)

log = logging.getLogger("tasklift")


class TransferPaths(argparse.Action):
    """transfer's paths, A A_FT B DATA or A B ADAPTER [ADAPTER ...] DATA (told apart by the
    third: a model, or a PEFT adapter folder), as source, finetuned or adapters, target, data."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ..lora import is_adapter

        forms = "A A_FT B DATA, or A B ADAPTER [ADAPTER ...] DATA"
        if len(values) < 4:
            raise argparse.ArgumentError(self, f"takes {forms}; got {len(values)} path(s)")
        source, second, *middle, data = values
        if len(middle) == 1 and not is_adapter(middle[0]):
            namespace.finetuned, namespace.target = second, middle[0]
        else:
            bad = next((p for p in middle if not is_adapter(p)), None)
            if bad is not None:
                raise argparse.ArgumentError(
                    self, f"{bad} is no PEFT adapter folder (it has no adapter_config.json); "
                    f"the paths are {forms}",
                )  # fmt: skip
            namespace.target, namespace.adapters = second, middle
        namespace.source, namespace.data = source, data


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `tasklift` command."""
    ap = Parser(prog="tasklift", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"tasklift {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name, func, help, *, models=("base", "finetuned"), data=True, matrix=True, **kw):
        p = sub.add_parser(name, help=help, aliases=kw.pop("aliases", []))
        for m in models:
            p.add_argument(m)
        if data:
            data_flags(p)
        if matrix:
            matrix_flags(p)
        runtime_flags(p)
        p.set_defaults(func=func, **kw)
        return p

    p = command("fit", cmd_fit, "fit a task matrix (base layer -> fine-tuned final embedding)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    overwrite_flag(p)
    p.add_argument("--layer", type=layer, default="auto", help="base layer index, or auto (CV)")
    p.add_argument(
        "--alpha", type=alpha, default=0.0,
        help="ridge: 0 (plain lstsq), a strength >= 0, a,b,c or auto",
    )  # fmt: skip
    p.add_argument("--intercept", action="store_true", help="affine map (fit a bias)")
    p.add_argument(
        "--solver", default="qr", choices=["qr", "gram"],
        help="plain least squares by a streamed QR (= numpy lstsq) or from XᵀX (gram)",
    )  # fmt: skip
    choices_flag(p)

    p = command(
        "eval", cmd_eval, "layer sweep: head-only, linear probe, task matrix per layer, fine-tuned",
        aliases=["sweep"],
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output folder")
    overwrite_flag(p)
    alphas_flag(p)
    choices_flag(p)

    p = command(
        "finetune", cmd_finetune, "fully fine-tune a model on a dataset's train split",
        models=("base",), matrix=False, max_length=64, batch_size=16,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output checkpoint folder")
    overwrite_flag(p)
    p.add_argument("--epochs", type=above_zero, default=1.0)
    p.add_argument("--lr", type=above_zero, default=1e-4)
    p.add_argument("--refit", action="store_true", help="fine-tune again even if cached")

    p = command(
        "transfer", cmd_transfer, "move A's fine-tuning (or LoRA adapters) onto B without training",
        models=(), data=False, matrix=False, batch_size=16,
    )  # fmt: skip
    p.add_argument(
        "paths", nargs="+", action=TransferPaths, default=argparse.SUPPRESS, metavar="PATH",
        help="A A_FT B DATA (A_ft: A fine-tuned, or a classifier's PEFT adapter of A; every "
        "method compared in a report), or A B "
        "ADAPTER [ADAPTER ...] DATA: PEFT LoRA adapters of A moved to B with one calibration on "
        "DATA's texts (chat data: prompts and responses; a classifier's adapter: A_ft's own "
        "predictions), one PEFT folder each in -o and a manifest",
    )  # fmt: skip
    data_flags(p, positional=False, split=False)  # the adapter form splits nothing
    p.add_argument("-o", "--output", required=True, help="output folder")
    overwrite_flag(p)
    p.add_argument(
        "--methods", type=arg(methods), default=None,
        help=f"comma-separated, of {tuple(METHODS)} (default all; moving adapters: one, bico)",
    )  # fmt: skip
    p.add_argument(
        "--map-cache", default=None, metavar="DIR",
        help="moving adapters only: where solved maps are cached and reused (default "
        "tasklift's cache folder; off: none)",
    )  # fmt: skip
    p.add_argument("--calib", type=positive, default=128, help="calibration inputs (from train)")
    p.add_argument(
        "--val", type=positive, default=None,
        help=f"validation inputs for the scale (default {VAL}); moving adapters: each "
        "adapter's scale is chosen on them only with --val or --scales (else 1)",
    )  # fmt: skip
    p.add_argument(
        "--scales", type=scales, default=None,
        help=f"task-vector scales tried (comma-separated; default {','.join(map(str, SCALES))})",
    )  # fmt: skip
    p.add_argument(
        "--token", default="all", choices=TOKENS,
        help="calibration token pairing (word: texts whose tokenizers differ)",
    )  # fmt: skip
    p.add_argument(
        "--center", action="store_true", help="align centred covariances (means removed)"
    )
    p.add_argument(
        "--tie-break", type=unit, default=TIE_BREAK,
        help="singular values of a map's first signal at or below this fraction of the largest "
        f"are settled by its later signals (default {TIE_BREAK:g})",
    )  # fmt: skip
    p.add_argument(
        "--stats-dtype", choices=STATS_DTYPES, default=STATS_DTYPE,
        help=f"precision of the cross-covariances (default {STATS_DTYPE}; solved in float64)",
    )  # fmt: skip
    p.add_argument(
        "--scale-search", choices=SEARCHES, default=None,
        help=f"how the scale is searched on validation: every scale (grid; default "
        f"{SCALE_SEARCH}) or at most 4 of them (fibonacci; exact on unimodal scores, see "
        "tasklift.transfer.scales); moving adapters: only with --val or --scales",
    )  # fmt: skip
    p.add_argument("--target-finetuned", default=None, help="B fine-tuned, the upper bound")
    p.add_argument("--probe", action="store_true", help="a linear probe on B (calib + val labels)")
    p.add_argument("--title", default=None, help="the report's title (A A_FT B DATA)")

    p = command("scaling", cmd_scaling, "accuracy vs training size: task matrix vs linear probe")
    p.add_argument("-o", "--output", required=True, help="output folder")
    overwrite_flag(p)
    p.add_argument(
        "--layer", type=layer, default="auto", help="base layer, or auto (CV on all of train)"
    )
    p.add_argument(
        "--per-class", type=counts,
        default=list(PER_CLASS), help="k values (>= 1, comma-separated)",
    )  # fmt: skip
    p.add_argument(
        "--fractions", type=fractions,
        default=list(FRACTIONS), help="training fractions in (0, 1], comma-separated",
    )  # fmt: skip
    alphas_flag(p)

    p = command(
        "multitask", cmd_multitask, "one task matrix shared by several tasks vs one per task",
        models=("base",), data=False,
    )  # fmt: skip
    p.add_argument(
        "-t", "--task", nargs=3, action="append", required=True,
        metavar=("NAME", "FINETUNED", "DATA"), help="repeat for each task",
    )  # fmt: skip
    data_flags(p, positional=False)
    p.add_argument("--alpha", type=alpha, default=0.0, help="ridge strength, as for fit")
    p.add_argument("-o", "--output", required=True)
    overwrite_flag(p)

    p = command(
        "predict", cmd_predict, "predict with a saved task matrix; per-class metrics if labelled",
        models=("task",), matrix=False,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output .csv of predictions")
    overwrite_flag(p)
    p.add_argument("--layer", type=index, default=None, help="another fitted layer than saved")
    p.add_argument("--no-labels", action="store_true", help="the data has no label column")

    p = command(
        "export", cmd_export, "a saved task matrix as a model plain transformers loads",
        models=("task",), data=False, matrix=False,
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output folder")
    overwrite_flag(p)
    p.add_argument("--layer", type=index, default=None, help="another fitted layer than saved")

    p = sub.add_parser("assets", help="list the packaged real models and datasets; prepare them")
    p.add_argument("--prepare", nargs="+", default=[], metavar="NAME", help="model names, or all")
    p.add_argument("--verify", nargs="+", default=[], metavar="NAME", help="check SHA-256s")
    p.add_argument("--force", action="store_true", help="prepare again even if cached")
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("check", help="pre-flight check of a transfer A -> B (and an adapter of A)")
    p.add_argument("source", help="A: the model the fine-tune or adapter was made on")
    p.add_argument("target", help="B: the model to move it to")
    p.add_argument("adapter", nargs="?", default=None, help="a PEFT LoRA folder trained on A")
    p.add_argument("--data", default=None, help="texts for per-layer CKA (a dataset or file)")
    p.add_argument("--text-key", default="text")
    p.add_argument("--n", type=positive, default=32, help="texts read for CKA")
    p.add_argument("--max-length", type=positive, default=64)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", help="merge run folders into one report.md + report.html")
    p.add_argument("runs", nargs="+", help="folders written by eval/sweep/scaling/multitask/demo")
    p.add_argument("-o", "--output", required=True)
    overwrite_flag(p)
    p.add_argument("--title", default="tasklift report")
    p.set_defaults(func=cmd_report)

    p = command(
        "demo", cmd_demo, "offline demo: fine-tune real MiniLM on Rotten Tomatoes, compare",
        models=(), data=False, max_length=64,
    )  # fmt: skip
    p.add_argument("-o", "--output", default="runs/demo", help="output folder (default runs/demo)")
    overwrite_flag(p)
    p.add_argument("--train", type=positive, default=2000, help="fine-tuning / fitting examples")
    p.add_argument("--test", type=positive, default=2000, help="held-out examples")
    p.add_argument("--epochs", type=above_zero, default=1.0)
    p.add_argument("--lr", type=above_zero, default=1e-4)
    alphas_flag(p)
    p.add_argument("--refit", action="store_true", help="fine-tune again even if a model is cached")
    return ap


# Positional arguments and flags that name input files or folders: no output may touch them.
_INPUTS = ("base", "finetuned", "source", "target", "target_finetuned", "data", "task", "runs",
           "adapters")  # fmt: skip
# Commands whose -o is a cache reused when its recipe matches: they decide on replacing it.
_REUSED_OUTPUT = ("finetune",)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every atomic write removes its temp."""


def _raise_terminated(signum, frame):
    raise Terminated


def _inputs(args) -> list[str]:
    """Every input path named on the command line (multitask's -t triples included), and the
    model folders a task-matrix file (predict, export) was fitted from."""
    from ..io import recorded_models

    found = []
    for key in _INPUTS:
        value = getattr(args, key, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            found += v if isinstance(v, list) else [v]
    if args.command in ("predict", "export"):
        found += recorded_models(args.task)
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
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGTERM, previous)  # None: a handler set from C, left as is


def _run(args) -> int:
    try:
        if getattr(args, "output", None):  # before any work: finding out after an hour is no use
            _check_outputs(args)
        from ..distributed import init_from_env

        device = init_from_env()  # under torchrun: join the group, pick this rank's device
        if device is not None:
            if args.command not in ("fit", "transfer"):
                raise ValueError(
                    f"only `tasklift fit` and `tasklift transfer` run distributed, not "
                    f"`{args.command}`; run it as one process (without torchrun)"
                )
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
