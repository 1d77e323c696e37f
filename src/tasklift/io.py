"""Safetensors files with JSON metadata, written atomically (temp file, then rename), and the
rules every output obeys: nothing tasklift did not write is ever replaced, nothing is written
over or inside an input, and temp files of killed runs do not pile up."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger("tasklift")
FORMAT_KEY = "tasklift"
# Files whose presence marks a folder as written by tasklift (one per kind of folder output).
FOLDER_MARKERS = (
    "tasklift_run.json",  # report folders (eval, scaling, transfer, multitask, report, demo)
    "tasklift_export.json",
    "tasklift_finetune.json",
    "tasklift_lora.json",
    "tasklift_transfer.json",
    "tasklift-asset.json",
)
PREDICTIONS_HEADER = ("row", "prediction")  # the first columns of `tasklift predict`'s CSV
_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .NAME.PID.RANDOM.tmp, as _temp_name makes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: Path) -> None:
    """Give `path` (and all below it) the modes `open`/`mkdir` would: writers such as
    safetensors create files 0600 through temp files of their own."""
    mask = _umask()
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in items:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _disk_error(e: Exception, path: Path) -> Exception:
    """A full disk as one OSError naming `path` (safetensors reports it as its own error)."""
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e):
        return OSError(errno.ENOSPC, f"no space left on the device while writing {path}; "
                       "free some space or pick another -o (it was not written)")  # fmt: skip
    return e


@contextmanager
def _replacing(path: Path, make: Callable[[str], str], remove: Callable[[str], None]):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(make(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
            _follow_umask(tmp)
        except Exception as e:
            err = _disk_error(e, path)
            if err is e:
                raise
            raise err from e
        _swap(tmp, path)
    finally:
        if tmp.exists():
            remove(tmp)


def _swap(tmp: Path, path: Path) -> None:
    """Put `tmp` at `path`. A file replaces a file (one rename); a folder replaces only an empty
    folder or one tasklift wrote, checked again now (the user may have put files there since
    the run started), moved aside before the new one goes in and deleted only after, so an
    interruption never leaves neither. A file never replaces a folder, nor a folder a file."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if tmp.is_dir() != (path.is_dir() and not path.is_symlink()):
        kinds = ("folder", "file") if tmp.is_dir() else ("file", "folder")
        raise ValueError(f"{path} is a {kinds[1]}; tasklift will not replace it by a {kinds[0]}")
    if not tmp.is_dir():
        os.replace(tmp, path)
        return
    if any(path.iterdir()) and not written_by_tasklift(path):
        raise ValueError(f"{path} now holds files tasklift did not write; nothing was replaced")
    old = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)


def _mkstemp(**kw) -> str:
    fd, name = tempfile.mkstemp(**kw)
    os.close(fd)
    return name


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the mode a plain `open` would give (0666 less the umask), not mkstemp's 0600.
    """
    with _replacing(Path(path), _mkstemp, os.unlink) as tmp:
        yield tmp


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; it replaces `path` only if the block succeeds (mode
    0777 less the umask, as `mkdir` gives). Callers check `path` with `check_output` first."""
    with _replacing(Path(path), tempfile.mkdtemp, shutil.rmtree) as tmp:
        yield tmp


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


def _tasklift_file(path: Path) -> bool:
    """Whether the file `path` is one tasklift writes: a safetensors file with tasklift's
    metadata, a JSON settings file with its version, or a predictions CSV."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return FORMAT_KEY in (f.metadata() or {})
        if path.suffix == ".json":  # tasklift's settings: {"tasklift": "<version>", ...}
            info = json.loads(path.read_text())
            return isinstance(info, dict) and isinstance(info.get(FORMAT_KEY), str)
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                return tuple(next(csv.reader(f), ()))[:2] == PREDICTIONS_HEADER
    except Exception:  # unreadable, not UTF-8, not JSON, a corrupt header: not ours
        return False
    return False


def written_by_tasklift(path: str | os.PathLike) -> bool:
    """Whether `path` is a file or folder that tasklift wrote (so `--overwrite` may replace it)."""
    path = Path(path)
    if path.is_dir():
        return any((path / m).is_file() for m in FOLDER_MARKERS)
    return path.is_file() and _tasklift_file(path)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temp files and folders (`.NAME.PID.*.tmp`) that runs killed by a signal
    left in `folder` (only those for output `name`, when given); those of live processes are
    kept. Returns what was removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if not m or (name is not None and not p.name.startswith(f".{name}.")):
            continue
        if _alive(int(m.group(1))):
            continue
        (shutil.rmtree if p.is_dir() and not p.is_symlink() else os.unlink)(p)
        removed.append(p)
        log.warning("removed %s, left by a run that was killed while writing", p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or no pid at all
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> None:
    """The rules every output obeys, checked before any work: `path` can be created; it is not,
    is not inside, and does not contain an input; an existing `path` is replaced only when
    tasklift wrote it and `overwrite` is set. Stale temp files of killed runs are removed.

    Raises:
        ValueError: naming `path` and the fix.
    """
    check_writable(path)
    out = Path(os.path.realpath(path))
    for item in inputs:
        if item is None or not os.path.exists(item):
            continue  # a packaged asset's name, or no input of that kind
        inp = Path(os.path.realpath(item))
        if _within(out, inp) or _within(inp, out):
            how = "is" if out == inp else "is inside" if _within(out, inp) else "contains"
            raise ValueError(f"the output {path} {how} the input {item}; pick another -o")
    remove_stale_temps(out.parent, out.name)  # only this output's own temps
    if not os.path.lexists(path) or (out.is_dir() and not any(out.iterdir())):
        return  # nothing there, or an empty folder: nothing to lose
    if not written_by_tasklift(path):
        raise ValueError(
            f"{path} exists and was not written by tasklift; tasklift never replaces it: "
            "pick another output path, or move it away yourself"
        )
    if not overwrite:
        raise ValueError(
            f"{path} holds an earlier tasklift output; pass --overwrite (overwrite=True in "
            "Python) to replace it"
        )
    if out.is_dir():
        remove_stale_temps(out)  # inside a folder of tasklift's own


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> None:
    """Call `writer(tmp_path)` and move the result onto `path` atomically (e.g. savefig)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    *,
    overwrite: bool = False,
) -> None:
    """Save tensors plus JSON-serialisable `meta` to a safetensors file, atomically; an existing
    `path` is replaced only if tasklift wrote it and `overwrite` is set."""
    check_output(path, overwrite=overwrite)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: json.dumps(meta)})


def recorded_models(path: str | os.PathLike) -> list[str]:
    """The model folders a tasklift file records (a task matrix's base and fine-tuned), made
    absolute as `load` resolves them; [] for anything else."""
    try:
        with safe_open(str(path), framework="pt") as f:
            params = json.loads((f.metadata() or {}).get(FORMAT_KEY, "{}")).get("params", {})
    except Exception:  # not a readable tasklift file: its own loading will say so
        return []
    here = Path(path).absolute().parent
    models = [params.get("base"), params.get("finetuned")]
    return [v if os.path.isabs(v) else str(here / v) for v in models if isinstance(v, str)]


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
