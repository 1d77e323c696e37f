"""An on-disk cache of solved per-module maps (R_in, R_out), so that one calibration of A and B
serves every later run with the same key: method and its map settings, A and B (weights,
config, tokenizer), the calibration inputs and targets, token limit, dtype and module pairs.

An entry is flat files in the cache folder: `<digest>-NNNNN.safetensors` shards of at most
`SHARD_BYTES` (a 1.5B's FFN maps are ~15 GB; no more than one shard is held at once) and the
index `<digest>.json`, written last, each atomically. An index whose key differs from the run's or
a shard whose SHA-256 does not match is ignored with a warning, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as to_bytes
from torch import nn

from .. import __version__
from ..io import FORMAT_KEY, atomic_path, remove_stale_temps, write_text

__all__ = ["MapCache", "default_dir", "model_fingerprint", "data_fingerprint", "SHARD_BYTES"]

log = logging.getLogger(__name__)

FORMAT = 2  # bump when what a key means changes (2: keys carry the solver's revision)
#: the modules whose code decides what a solved map is: any change to them is a cache miss
SOLVER_MODULES = ("tasklift.solvers", "tasklift.maps", "tasklift.stats", "tasklift.rows",
                  "tasklift.qr", "tasklift.hooks", "tasklift.transfer.solve",
                  "tasklift.transfer.calibration", "tasklift.transfer.pairing")  # fmt: skip
SHARD_BYTES = 1 << 30
_SAMPLE = 256  # entries of each parameter read in order (a permuted model has the same sums)

Maps = Iterator[tuple[str, tuple[torch.Tensor | None, torch.Tensor | None]]]


def default_dir() -> Path:
    """The maps' folder under tasklift's cache (`$TASKLIFT_CACHE`, else ~/.cache/tasklift)."""
    from ..assets import cache_dir

    return cache_dir() / "maps"


def _feed(h, obj) -> None:
    """Hash `obj` (texts, numbers, tensors, arrays and lists or dicts of them) into `h`."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"[{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def data_fingerprint(*parts) -> str:
    """SHA-256 of calibration inputs and targets (texts, token tensors, labels)."""
    h = hashlib.sha256()
    _feed(h, list(parts))
    return h.hexdigest()


def model_fingerprint(model: nn.Module, tokenizer=None) -> str:
    """SHA-256 of a model as loaded: its class and config, every parameter's name, shape, dtype,
    float64 sum and `_SAMPLE` entries in order, and its tokenizer's vocabulary and rules."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_string"):  # a Hugging Face model
        h.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _SAMPLE)][:_SAMPLE].float().cpu()
            _feed(h, [name, str(p.dtype), list(p.shape), float(flat.sum(dtype=torch.float64))])
            _feed(h, sample)
    if tokenizer is not None:  # a fast tokenizer's rules hold its vocabulary
        backend = getattr(tokenizer, "backend_tokenizer", None)
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        rules = backend.to_str() if backend is not None else json.dumps(sorted(vocab.items()))
        _feed(h, [type(tokenizer).__name__, rules])
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class MapCache:
    """Solved maps on disk in `folder`, found by the SHA-256 of a JSON-able key.

    Example:
        >>> cache = MapCache(default_dir())
        >>> maps = cache.load(key) or cache.store(key, solve())  # store passes them through
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @staticmethod
    def digest(key: dict) -> str:
        """The file stem of `key`'s entry."""
        return _entry(key)[1]

    def load(self, key: dict) -> Maps | None:
        """(module, (R_in, R_out)) of `key`'s entry, every shard checked first; None when there
        is none, or (with a warning) when its key or a checksum does not match."""
        key, stem = _entry(key)
        index_path = self.folder / f"{stem}.json"
        if not index_path.is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
            if index.get("format") != FORMAT or index.get("key") != key:
                raise ValueError("it was made for another key")
            for shard in index["shards"]:
                if _sha256(self.folder / shard["file"]) != shard["sha256"]:
                    raise ValueError(f"{shard['file']} does not match its checksum")
            modules = [(str(name), int(i)) for name, i in index["modules"]]
        except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError: ValueError
            log.warning("ignoring the cached maps %s (%s); solving them again", index_path, e)
            return None
        return self._read(index["shards"], modules)

    def _read(self, shards: list[dict], modules: list[tuple[str, int]]) -> Maps:
        loaded, tensors = None, {}
        for name, i in modules:
            if i != loaded:  # one shard in memory at a time
                tensors, loaded = load_file(self.folder / shards[i]["file"]), i
            yield name, (tensors.get(f"{name}|in"), tensors.get(f"{name}|out"))

    def store(self, key: dict, maps: Maps, *, about: dict | None = None) -> Maps:
        """Pass `maps` through, writing them as `key`'s entry once all have gone by (an index
        only for a complete set); a write that fails is a warning, never the run's failure."""
        key, stem = _entry(key)
        self._write(lambda: remove_stale_temps(self.folder))  # of runs killed while writing
        shards: list[dict] = []
        modules: list[tuple[str, int]] = []
        buffer: dict[str, torch.Tensor] = {}
        size, ok = 0, True
        for name, (r_in, r_out) in maps:
            for side, r in (("in", r_in), ("out", r_out)):
                if ok and r is not None:
                    buffer[f"{name}|{side}"] = r.detach().cpu().contiguous()
                    size += r.numel() * r.element_size()
            modules.append((name, len(shards)))
            yield name, (r_in, r_out)
            if ok and size >= SHARD_BYTES:
                ok = self._flush(stem, buffer, shards)
                buffer, size = {}, 0
        if ok and (buffer or not shards):
            ok = self._flush(stem, buffer, shards)
        if ok:
            index = {FORMAT_KEY: __version__, "format": FORMAT, "key": key, "about": about or {},
                     "shards": shards, "modules": modules}  # fmt: skip
            ok = self._write(lambda: write_text(self.folder / f"{stem}.json", json.dumps(index)))
        if ok:
            keep = {s["file"] for s in shards}
            for old in self.folder.glob(f"{stem}-*.safetensors"):  # an earlier, longer entry's
                if old.name not in keep:
                    old.unlink(missing_ok=True)

    def _flush(self, stem: str, buffer: dict, shards: list[dict]) -> bool:
        """Write `buffer` as the next shard (atomically) and record it in `shards`."""
        name = f"{stem}-{len(shards):05d}.safetensors"
        data = to_bytes(buffer, metadata={FORMAT_KEY: json.dumps({"maps": stem})})

        def write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.folder / name) as tmp:
                tmp.write_bytes(data)

        shards.append({"file": name, "sha256": hashlib.sha256(data).hexdigest()})
        return self._write(write)

    def _write(self, write) -> bool:
        try:
            write()
        except (OSError, ValueError) as e:
            log.warning("the maps were not cached in %s: %s", self.folder, e)
            return False
        return True


@functools.cache
def solver_revision() -> str:
    """A digest of the source of SOLVER_MODULES: maps solved by other code never match."""
    h = hashlib.sha256()
    for name in SOLVER_MODULES:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def _entry(key: dict) -> tuple[dict, str]:
    """`key` with the solver's revision, as its index reads back (tuples as lists), and its
    entry's file stem."""
    key = json.loads(json.dumps({**key, "solver": solver_revision()}, sort_keys=True))
    return key, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
