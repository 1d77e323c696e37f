"""The user's labelled data: .csv / .tsv / .jsonl / .parquet files, `datasets` save_to_disk folders
and image folders, read into a `Dataset` (packaged datasets live in `tasklift.data`).

Every row is checked, not only the first: a repeated column name, a row with more or fewer fields
than the header, a bad JSON line or a row without a text or label is an error naming the line, not
a silently wrong column or a class called "None".
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from .checks import first_line
from .data import Dataset

__all__ = ["FORMATS", "read_file", "sorted_labels"]

FORMATS = ".csv, .tsv, .jsonl, .parquet, a `datasets` save_to_disk folder or an image folder"
_IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _check_names(path: Path, names: list[str]) -> None:
    """Refuse repeated column names: a reader would silently keep only one of the columns."""
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ValueError(
            f"{path} has two columns named {twice!r}; rename one (only one of them would be read)"
        )


def _csv_rows(path: Path, encoding: str) -> list[tuple[str, dict]]:
    """(where, row) for each record of a .csv / .tsv file, every row as wide as the header."""
    delimiter = "\t" if path.suffix == ".tsv" else ","
    rows = []
    with path.open(newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return []
        _check_names(path, header)
        for fields in reader:
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}: line {reader.line_num} has {len(fields)} field(s) but the header has "
                    f"{len(header)}; quote fields that contain {delimiter!r} or line breaks"
                )
            rows.append((f"line {reader.line_num}", dict(zip(header, fields, strict=True))))
    return rows


def _unique_keys(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if twice is not None:
        raise ValueError(f"has the key {twice!r} twice; keep one")
    return dict(pairs)


def _jsonl_rows(path: Path, encoding: str) -> list[tuple[str, dict]]:
    """(where, object) for each non-blank line of a .jsonl file, numbered as an editor does."""
    rows = []
    with path.open(encoding=encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as e:
                where = f"{path}: line {n}"
                raise ValueError(f"{where} is not JSON ({e.msg}, column {e.colno})") from None
            except ValueError as e:  # a repeated key (from _unique_keys)
                raise ValueError(f"{path}: line {n} {e}") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}: line {n} is a JSON {type(row).__name__}, not an object; write one "
                    '{"text": ..., "label": ...} object per line'
                )
            rows.append((f"line {n}", row))
    return rows


def _text_rows(path: Path, encoding: str) -> list[tuple[str, dict]]:
    try:
        return _jsonl_rows(path, encoding) if path.suffix == ".jsonl" else _csv_rows(path, encoding)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not {encoding} text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "pass --encoding with the file's encoding, e.g. --encoding latin-1"
        ) from None


def _numbered(rows: list[dict]) -> list[tuple[str, dict]]:
    return [(f"row {i}", r) for i, r in enumerate(rows, 1)]


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow's errors for a damaged file
        raise ValueError(f"{path} is not a readable Parquet file: {first_line(e)}") from None
    _check_names(path, names)  # before read_table, which fails on them in many lines
    return _numbered(pq.read_table(path).to_pylist())


def _hf_rows(path: Path, label_key: str | None) -> list[tuple[str, dict]]:
    """Rows of a `datasets` folder written by save_to_disk; ClassLabel ids become their names."""
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{path}: a save_to_disk folder needs `datasets`: pip install datasets"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(
            f"{path} holds the splits {sorted(ds)}; pass one of them, e.g. {path / next(iter(ds))}"
        )
    rows = ds.to_list()
    feature = ds.features.get(label_key) if label_key else None
    if isinstance(feature, datasets.ClassLabel):
        for r in rows:
            r[label_key] = feature.int2str(r[label_key])
    return _numbered(rows)


def _image_folder(path: Path, image_size: int) -> Dataset:
    """One sub-folder per class of images -> (N, 3, S, S) in [-1, 1] (mean = std = 0.5)."""
    from PIL import Image

    classes = sorted_labels({p.name for p in path.iterdir() if p.is_dir()})
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((path / c).iterdir()):
            if f.suffix.lower() in _IMAGES:
                with Image.open(f) as im:
                    im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.float32) / 255.0)
                labels.append(i)
    if not images:
        raise ValueError(f"{path} has no images in class sub-folders ({', '.join(_IMAGES)})")
    X = (np.stack(images).transpose(0, 3, 1, 2) - 0.5) / 0.5
    return Dataset(X.astype(np.float32), np.array(labels), classes, path.name, str(path))


def _check_rows(path: Path, rows: list[tuple[str, dict]], keys: list[str], label_key) -> None:
    """Every row has a value for each key, and a non-empty label."""
    missing = [k for k in keys if k not in rows[0][1]]
    if missing:
        raise ValueError(
            f"{path} has no column(s) {missing}; columns are {sorted(rows[0][1])}. "
            "Pass --text-key/--label-key"
        )
    for where, r in rows:
        for k in keys:
            if r.get(k) is None or (k == label_key and str(r[k]).strip() == ""):
                raise ValueError(f"{path}: {where} has no {k!r}; fill it in or remove the row")


def read_file(
    path: Path, text_key: str, label_key: str | None, encoding: str, image_size: int = 224
) -> Dataset:
    """A Dataset from a data file or folder (`label_key` None: unlabelled inputs to predict)."""
    if text_key == label_key:
        raise ValueError(
            f"--text-key and --label-key are both {text_key!r}: the labels would be read as the "
            "texts; name two different columns"
        )
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            rows = _hf_rows(path, label_key)
        elif any(p.is_dir() for p in path.iterdir()):
            return _image_folder(path, image_size)
        else:
            raise ValueError(f"{path} is a folder but not a dataset; use {FORMATS}")
    elif path.suffix in (".jsonl", ".csv", ".tsv"):
        rows = _text_rows(path, encoding)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use {FORMATS}")
    if not rows:
        raise ValueError(f"{path} has no rows: the dataset is empty")
    keys = [k for k in (text_key, label_key) if k is not None]
    _check_rows(path, rows, keys, label_key)
    texts = [str(r[text_key]) for _, r in rows]
    if label_key is None:  # inputs to predict: no labels
        return Dataset(texts, np.zeros(len(rows), dtype=np.int64), [], path.stem, str(path))
    names = sorted_labels({str(r[label_key]) for _, r in rows})
    index = {c: i for i, c in enumerate(names)}
    y = np.array([index[str(r[label_key])] for _, r in rows])
    return Dataset(texts, y, names, path.stem, str(path))


def sorted_labels(names: set[str]) -> list[str]:
    """Label names in order: numerically when every name is an integer ("2" before "10")."""
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)
