"""Datasets: the container, loading by name (packaged ones: `tasklift.packaged`; user files:
`tasklift.readers`), label matching, splits and subsets.

Inputs ("X") are a list of strings, an image array (N, C, H, W), or a dict of encoded tensors;
`take` and `num_items` work on all three so every other module can stay container-agnostic.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checks import SEED_MAX, check_encoding, check_int, check_test_size
from .defaults import MAX_IMAGE_SIZE

__all__ = [
    "Dataset",
    "load_dataset",
    "take",
    "num_items",
    "split",
    "calibration_split",
    "subsample",
    "align_labels",
]


def num_items(inputs) -> int:
    """Number of examples in a list, array or dict of encoded tensors."""
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def is_texts(items) -> bool:
    """Whether `items` is a non-empty sequence of raw strings (to tokenise), not arrays/tensors."""
    return isinstance(items, Sequence) and len(items) > 0 and isinstance(items[0], str)


def take(inputs, idx):
    """Rows `idx` (slice or index array) of a list, array or dict of tensors."""
    if isinstance(idx, slice):
        return {k: v[idx] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[idx]
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(inputs, dict):
        return {k: v[torch.as_tensor(idx)] for k, v in inputs.items()}
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        return inputs[idx]
    return [inputs[i] for i in idx]


@dataclass
class Dataset:
    """Inputs X, integer labels y, class names, where the data came from, and (chat data) a
    target text per row."""

    X: object
    y: np.ndarray
    classes: list[str]
    name: str
    source: str = ""
    meta: dict = field(default_factory=dict)
    targets: list[str] | None = None  # a response per row (chat data: X holds the prompts)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> Dataset:
        """A new Dataset with rows `idx`."""
        return Dataset(
            take(self.X, idx),
            self.y[np.asarray(idx)],
            self.classes,
            self.name,
            self.source,
            self.meta,
            None if self.targets is None else [self.targets[i] for i in np.asarray(idx)],
        )


_DEFAULT_NAME = re.compile(r"LABEL_(\d+)")


def align_labels(ds: Dataset, id2label: dict, *, model: str = "the model") -> Dataset:
    """`ds` with its labels re-numbered as the model's class ids, matched by NAME.

    A model whose labels are all transformers' defaults (LABEL_0, LABEL_1, ...) has no names:
    then the dataset's labels must be the ids themselves (0, 1, ... or LABEL_i). A dataset may
    hold a subset of the model's classes; a label the model does not know is an error.

    Raises:
        ValueError: a label of the dataset is not one of the model's, naming it and the fix.
    """
    names = {int(i): str(n) for i, n in id2label.items()}
    unnamed = all(_DEFAULT_NAME.fullmatch(n) for n in names.values())
    if unnamed:
        lookup = {f"LABEL_{i}": i for i in names} | {str(i): i for i in names}
    else:
        lookup = {n: i for i, n in names.items()}
    unknown = [c for c in ds.classes if c not in lookup]
    if unknown:
        known = (
            f"ids 0..{len(names) - 1} (it has no label names: its config says LABEL_0, ...)"
            if unnamed
            else sorted(lookup)
        )
        raise ValueError(
            f"{ds.name}: label(s) {unknown[:5]} are not classes of {model}, whose labels are "
            f"{known}; relabel the data, or set id2label in the model's config.json"
        )
    remap = np.array([lookup[c] for c in ds.classes], dtype=np.int64)
    classes = [names[i] for i in range(len(names))]
    return Dataset(ds.X, remap[ds.y], classes, ds.name, ds.source, ds.meta)


def load_dataset(
    name: str | os.PathLike,
    *,
    text_key: str = "text",
    label_key: str = "label",
    image_size: int = 224,
    encoding: str = "utf-8",
    labels: bool = True,
) -> Dataset:
    """Load a packaged dataset by name ("bbc-news" = "bbc_news"), a labelled .csv / .tsv / .jsonl /
    .parquet file, a `datasets` folder written by save_to_disk, or an image folder (one
    sub-folder per class).

    Raises:
        FileNotFoundError: unknown name and no such file, or the shipping package is missing.
        ValueError: a bad image_size or encoding; the file is empty, lacks the text/label columns,
            repeats a column, or has a row that does not parse (named by its line).
    """
    from .packaged import BUILTIN, PACKAGED
    from .readers import FORMATS, read_file

    check_int(image_size, "image_size", low=1, high=MAX_IMAGE_SIZE)
    check_encoding(encoding)
    path = Path(name)
    key = str(name).lower().replace("-", "_")
    if not path.exists() and key in PACKAGED:
        return PACKAGED[key](image_size)
    if not path.exists():
        raise FileNotFoundError(f"no dataset {str(name)!r}: use one of {BUILTIN}, or {FORMATS}")
    return read_file(path, text_key, label_key if labels else None, encoding, image_size)


def split(ds: Dataset, *, test_size: float | int = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified, seeded train/test split.

    Raises:
        ValueError: test_size is not a fraction in (0, 1) or a count that leaves every class on
            both sides; a class has one row; seed is outside 0..2**32 - 1.
    """
    from sklearn.model_selection import train_test_split

    size = check_test_size(test_size, "test_size (--test-size)")
    check_int(seed, "seed", low=0, high=SEED_MAX)
    counts = np.bincount(ds.y)
    k, lone = int(np.count_nonzero(counts)), np.flatnonzero(counts == 1)
    if len(lone):
        raise ValueError(
            f"{ds.name}: class {ds.classes[lone[0]]!r} has a single row, and a stratified split "
            "needs at least 2 of every class; add rows or remove the class"
        )
    held = math.ceil(size * len(ds)) if isinstance(size, float) else size
    if not k <= held <= len(ds) - k:
        raise ValueError(
            f"test_size={test_size} (--test-size) holds out {held} of {ds.name}'s {len(ds)} rows, "
            f"but both sides need each of its {k} classes: hold out {k} to {len(ds) - k} rows"
        )
    idx = np.arange(len(ds))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=ds.y)
    return ds.subset(np.sort(train)), ds.subset(np.sort(test))


def calibration_split(
    train: Dataset, *, calib: int, val: int, seed: int = 0
) -> tuple[Dataset, Dataset, Dataset]:
    """`calib` calibration and `val` validation rows held out of `train` (seeded, stratified), and
    the two together: how every transfer run carves its labelled inputs.

    Raises:
        ValueError: either is not a count of at least one row per class, or together they leave
            less than that of `train`.
    """
    k = len(np.unique(train.y))
    for name, value in (("calib", calib), ("val", val)):
        if check_int(value, f"{name} (--{name})", low=1) < k:
            raise ValueError(
                f"{name}={value} (--{name}) is fewer than the {k} classes, and the split keeps "
                f"every class on each side: pass {k} or more"
            )
    if calib + val > len(train) - k:
        raise ValueError(
            f"calib={calib} + val={val} (--calib, --val) inputs leave less than one row per class "
            f"of the {len(train)} train rows; lower them to {len(train) - k} together at most"
        )
    _, held = split(train, test_size=calib + val, seed=seed)
    calib_ds, val_ds = split(held, test_size=val, seed=seed)
    return calib_ds, val_ds, held


def subsample(
    ds: Dataset, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> Dataset:
    """The first `per_class` examples of each class (seeded order), or a stratified fraction."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    if per_class is not None:
        keep = np.concatenate([order[ds.y[order] == c][:per_class] for c in np.unique(ds.y)])
    elif fraction is not None:
        keep = np.concatenate(
            [
                o[: max(1, round(fraction * len(o)))]
                for o in (order[ds.y[order] == c] for c in np.unique(ds.y))
            ]
        )
    else:
        raise ValueError("give per_class or fraction")
    return ds.subset(np.sort(keep))
