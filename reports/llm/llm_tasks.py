"""The decoder tasks of reports/llm: their data splits, LoRA recipe and scores.

bbc, imdb: BBC News topics / IMDB sentiment answered with code words no model can guess
zero-shot, scored by the verbaliser (the LM head's logits at the prompt's last token over the
words' first tokens).
persona: the depresso chat set's "depressed persona" responses, scored by the held-out NLL of
the reference responses and by a style probe on greedy generations (the share it calls persona).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: the code words each class is answered with, and how a text becomes a prompt
CODE = {
    "bbc": {"business": " river", "entertainment": " piano", "politics": " stone",
            "sports": " cloud", "tech": " apple"},
    "imdb": {"negative": " stone", "positive": " cloud"},
}  # fmt: skip
PROMPT = {
    "bbc": lambda t: f"Article: {' '.join(t.split())[:280]}\nCode word:",
    "imdb": lambda t: f"Review: {' '.join(t.split())[:280]}\nCode word:",
}
DATASET = {"bbc": "bbc_news", "imdb": "imdb"}
# attention only: the FFN's maps (4864 x 8960 per side) cost ~100 min of SVDs a transfer here
LORA = dict(r=8, alpha=16.0, lr=2e-4, epochs=2.0, batch_size=4, seed=0,
            modules=("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
GEN_TOKENS = 40  # greedy tokens generated per persona prompt


@dataclass(frozen=True)
class Task:
    """One decoder task: splits (prompts, targets, labels), LoRA length, score of a model."""

    name: str
    data: Callable[[], dict]
    max_length: int
    score: Callable  # (model, tokenizer, data, runs) -> dict of numbers (and samples)
    headline: str  # the score a table shows first
    sizes: dict = field(default_factory=dict)


def split_rows(ds, sizes: dict):
    """Seeded stratified train / val / test Datasets, and the rows left over (`rest`)."""
    from tasklift.data import split

    rest, test = split(ds, test_size=sizes["test"], seed=0)
    rest, val = split(rest, test_size=sizes["val"], seed=0)
    train, rest = split(rest, test_size=len(rest) - sizes["train"], seed=0)
    return train, val, test, rest


def _splits(ds, sizes: dict, make_prompt) -> dict:
    """Seeded stratified train/val/test rows of a dataset, as prompts, targets and labels."""
    train, val, test, _ = split_rows(ds, sizes)

    def rows(d):
        targets = list(d.targets) if getattr(d, "targets", None) is not None else None
        return {"prompts": [make_prompt(t) for t in d.X], "labels": [int(v) for v in d.y],
                "targets": targets}  # fmt: skip

    return {"train": rows(train), "val": rows(val), "test": rows(test)}


def code_data(task: str) -> dict:
    """A classification set as prompts (the text's first 280 characters, then "Code word:")
    with the class's code word as target."""
    from tasklift.data import load_dataset

    ds = load_dataset(DATASET[task])
    words = [CODE[task][c] for c in ds.classes]
    d = _splits(ds, CODE_SIZES, PROMPT[task])
    for part in ("train", "val", "test"):
        d[part]["targets"] = [words[y] for y in d[part]["labels"]]
    return {"choices": words, "classes": list(ds.classes), **d}


def persona_data() -> dict:
    """depresso's persona rows (its 36 refusals left out), as "User: ...\\nAssistant:" prompts."""
    from tasklift.data import load_dataset

    ds = load_dataset("depresso")
    keep = np.flatnonzero(np.asarray(ds.y) == ds.classes.index("depressed"))
    ds = ds.subset(keep)
    d = _splits(ds, PERSONA_SIZES, lambda t: f"User: {t}\nAssistant:")
    for part in ("train", "val", "test"):
        d[part]["targets"] = [" " + t for t in d[part]["targets"]]
    return {"choices": None, **d}


def code_score(model, tok, d: dict, runs) -> dict:
    """Verbaliser accuracy on the test split."""
    from tasklift.transfer.lm import verbalise

    pred = verbalise(model, d["test"]["prompts"], d["choices"], tok, max_length=96, batch_size=8)
    return {"accuracy": float((pred == np.array(d["test"]["labels"])).mean())}


def style_probe(runs):
    """The persona classifier: a linear probe on MiniLM-L6 mean embeddings, persona = the
    reference responses' first 200 characters, plain = Qwen-0.5B's own greedy answers to the
    same training prompts (made once, kept in runs/)."""
    import json

    from tasklift.io import write_text
    from tasklift.loading import load_model
    from tasklift.probe import LinearProbe
    from tasklift.transfer.lm import greedy_targets

    d = persona_data()
    prompts, refs = d["train"]["prompts"][:120], d["train"]["targets"][:120]
    path = runs / "plain_answers.json"
    if not path.is_file():
        model, tok = load_model("qwen2.5-coder-0.5b", lm=True, device="cpu")
        plain = greedy_targets(model, prompts, tok, max_new_tokens=GEN_TOKENS, batch_size=8)
        write_text(path, json.dumps(plain, indent=1) + "\n")
    plain = json.loads(path.read_text())
    texts = [r[:200] for r in refs] + plain
    return LinearProbe("minilm-l6", pool="mean").fit(texts, [1] * len(refs) + [0] * len(plain))


def persona_score(model, tok, d: dict, runs) -> dict:
    """Held-out NLL per token of the reference responses, and the style probe's persona share
    on greedy generations (with the first three printed as samples)."""
    from tasklift.transfer.lm import greedy_targets, lm_score

    test = d["test"]
    logp = lm_score(model, test["prompts"], test["targets"], tok, max_length=PERSONA_LENGTH,
                    batch_size=8)  # fmt: skip
    gens = greedy_targets(model, test["prompts"], tok, max_new_tokens=GEN_TOKENS, batch_size=8)
    probe = style_probe(runs)
    style = float(np.mean(probe.predict([g.strip() or "." for g in gens]) == 1))
    ref_style = float(np.mean(probe.predict([t[:200] for t in test["targets"]]) == 1))
    pairs = zip(test["prompts"][:3], gens[:3], strict=True)
    samples = [{"prompt": p, "generation": g} for p, g in pairs]
    return {"nll": -logp, "style": style, "style_of_references": ref_style, "samples": samples}


CODE_SIZES = dict(train=240, val=48, test=150)
PERSONA_SIZES = dict(train=200, val=24, test=48)
PERSONA_LENGTH = 128
TASKS = {
    "bbc": Task("bbc", lambda: code_data("bbc"), 96, code_score, "accuracy", CODE_SIZES),
    "imdb": Task("imdb", lambda: code_data("imdb"), 96, code_score, "accuracy", CODE_SIZES),
    "persona": Task("persona", persona_data, PERSONA_LENGTH, persona_score, "nll", PERSONA_SIZES),
}
