"""The flags the commands share and the argument types that check each value at the parser
(one line and exit 2 for a value out of range)."""

from __future__ import annotations

import argparse
from functools import partial

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
from ..defaults import MAX_IMAGE_SIZE, POOLS
from ..transfer.methods import METHODS


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def arg(check, **kw):
    """An argparse type from a `tasklift.checks` function: its ValueError becomes argparse's
    one-line error (exit 2) naming the flag."""

    def parse(text: str):
        try:
            return check(text, **kw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def layer_or_auto(text: str, name: str = "") -> int | str:
    """'auto' or a layer index (0, 3, -1; its range is checked against the model)."""
    if text == "auto":
        return text
    try:
        return check_int(text, name)
    except ValueError:
        raise ValueError(f"{text!r} is not a layer index (0, 3, -1) or 'auto'") from None


def methods(text: str) -> list[str]:
    return check_list(text, item=lambda v, n: check_choice(v.strip(), n, choices=METHODS))


positive = arg(check_int, low=1)
layer = arg(layer_or_auto)
index = arg(check_int)
above_zero = arg(check_float, low=0, open_low=True)
unit = arg(check_float, low=0, high=1)
alpha = arg(check_alpha)
alphas = arg(check_list, item=check_alpha, sep=";")
counts = arg(check_list, item=partial(check_int, low=1))
fractions = arg(check_list, item=partial(check_float, low=0, high=1, open_low=True))
seed = arg(check_int, low=0, high=SEED_MAX)
scales = arg(check_list, item=check_float)


# -- flags ------------------------------------------------------------------------------------
def overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing -o that tasklift wrote (never anything else)",
    )  # fmt: skip


def alphas_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alphas", type=alphas, default=[0.0, "auto"],
        help="ridge solvers, ';'-separated (0;auto); each as --alpha of fit",
    )  # fmt: skip


def runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16"
    )
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument(
        "--max-length", type=positive, default=None,
        help="token limit for text inputs (default 128, or the model's maximum if lower)",
    )  # fmt: skip
    p.add_argument("--seed", type=seed, default=0, help=f"0..{SEED_MAX}")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="show transformers' load reports")
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="load checkpoints whose weights are only pickles (unpickling can run code)",
    )  # fmt: skip


def matrix_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pool", default="cls", choices=list(POOLS),
        help="base pooling: cls / first (token 0: encoders), mean, last (decoders: the last "
        "attended token), "
        "or cls+mean (DINOv2: [CLS] joined to the patch mean, each token final-normed)",
    )  # fmt: skip
    p.add_argument(
        "--norm",
        default="base",
        choices=["base", "finetuned", "none"],
        help="final norm applied after the map (reference: base)",
    )
    p.add_argument("--cv", type=arg(check_int, low=2), default=5, help="folds (>= 2) for CV")


def choices_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--choices", type=arg(check_list, item=lambda word, name: word), default=None,
        help="FINETUNED is a causal LM answering in words: one label word per class, in the "
        "data's sorted label order, comma-separated, leading spaces kept (' river, piano'); "
        "the head is then the LM head on the words' first tokens (use --pool last)",
    )  # fmt: skip


#: the defaults of the flags that only a labelled train/test split reads
SPLIT_DEFAULTS = {"label_key": "label", "test_size": 0.2}


def data_flags(p: argparse.ArgumentParser, *, positional: bool = True, split: bool = True) -> None:
    """DATA and how it is read; with `split=False` --label-key and --test-size default to None
    (the command fills in SPLIT_DEFAULTS where it splits, and can tell they were given)."""
    if positional:
        p.add_argument(
            "data", help="rotten_tomatoes, digits, or a .csv/.tsv/.jsonl with text,label"
        )
    p.add_argument("--text-key", default="text")
    p.add_argument("--label-key", default=SPLIT_DEFAULTS["label_key"] if split else None,
                   help="label column (default label)")  # fmt: skip
    p.add_argument(
        "--test-size", type=arg(check_test_size),
        default=SPLIT_DEFAULTS["test_size"] if split else None,
        help="fraction in (0, 1) or count held out (default 0.2)",
    )  # fmt: skip
    p.add_argument(
        "--train-limit", type=positive, default=None, help="use at most this many train rows"
    )
    p.add_argument(
        "--encoding", type=arg(check_encoding), default="utf-8",
        help="text encoding of .csv/.tsv/.jsonl data",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=arg(check_int, low=1, high=MAX_IMAGE_SIZE), default=224,
        help="image side for built-in image data",
    )  # fmt: skip
