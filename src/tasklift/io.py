"""Safetensors files with JSON metadata, written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_KEY = "tasklift"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the mode a plain `open` would give (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; it replaces `path` only if the block succeeds (mode
    0777 less the umask, as `mkdir` gives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_writable(path: str | os.PathLike) -> None:
    """Fail before any work if `path` could not be created: an ancestor is a file, or the
    nearest existing folder is not writable.

    Raises:
        ValueError: naming the path and what is wrong with it.
    """
    path = Path(path).absolute()
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"cannot write {path}: {parent} is not writable; pick another -o")
            return


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> None:
    """Call `writer(tmp_path)` and move the result onto `path` atomically (e.g. savefig)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save tensors plus JSON-serialisable `meta` to a safetensors file, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: json.dumps(meta)})


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load what `save_tensors` wrote.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a tasklift safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    if FORMAT_KEY not in meta:
        raise ValueError(f"{path} has no tasklift metadata; was it written by tasklift's save()?")
    return tensors, json.loads(meta[FORMAT_KEY])
