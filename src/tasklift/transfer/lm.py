"""Causal language models in a transfer: the calibration loss is next-token cross-entropy on
prompt + target, counted on the target tokens only (SPEC §4). Targets are the task's responses
or label words when given, otherwise A_ft's own greedy continuations, so no labels are needed.
The validation score of a scale is the targets' mean log-likelihood per token (higher is
better), or, with `choices`, the verbaliser's accuracy: the label word whose first token the
LM head scores highest after the prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data import is_texts, take
from ..distributed import gathered
from ..families import VOCAB_ROLES, roles
from ..taskvector import TaskVector

__all__ = [
    "is_causal_lm", "is_lm_checkpoint", "same_vocabulary", "lm_encode", "lm_loss",
    "greedy_targets", "target_logprob", "choice_tokens", "verbalise", "lm_setup", "lm_score",
    "check_fits",
]  # fmt: skip

IGNORE = -100  # the label transformers' loss skips


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a *ForCausalLM (it has an LM head and generates)."""
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


def _padding(tokenizer, side: str):
    """The tokenizer set to pad on `side`, with its end-of-text token as padding if it has none."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = side
    return tokenizer


def lm_encode(
    prompts: Sequence[str], targets: Sequence[str], tokenizer, *, max_length: int
) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels of prompt + target, right-padded, labels IGNORE on
    the prompt and the padding. The whole text is tokenised in one call (as word pairing
    tokenises it), and the prompt's tokens are those that start before the prompt's end.

    Raises:
        ValueError: prompts and targets differ in number, or the tokenizer gives no offsets.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets; pair them one to one")
    texts = [p + t for p, t in zip(prompts, targets, strict=True)]
    _padding(tokenizer, "right")
    try:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length,
            return_offsets_mapping=True, return_tensors="pt",
        )  # fmt: skip
    except NotImplementedError:
        raise ValueError(
            f"{type(tokenizer).__name__} gives no character offsets; load a fast tokenizer"
        ) from None
    starts = enc.pop("offset_mapping")[..., 0]
    ends = torch.tensor([len(p) for p in prompts])[:, None]
    labels = enc["input_ids"].clone()
    labels[(starts < ends) | (enc["attention_mask"] == 0)] = IGNORE
    return {**enc, "labels": labels}


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens (labels not IGNORE)."""
    dev = next(model.parameters()).device
    return model(**{k: v.to(dev) for k, v in batch.items()}).loss


def target_logprob(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per example: the summed log-probability of its target tokens, and their count (N, 2)."""
    dev = next(model.parameters()).device
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)
        ).logits.float()
    labels = batch["labels"][:, 1:].to(dev)
    logp = torch.log_softmax(logits[:, :-1], -1)
    keep = labels != IGNORE
    picked = logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * keep
    return torch.stack([picked.sum(1), keep.sum(1).float()], 1).cpu()


#: the text a label word is tokenised after, as `lm_encode` tokenises it after its prompt: a
#: SentencePiece tokenizer that adds a dummy prefix (Llama-2, Mistral) splits " river" alone
#: into "▁" + "▁river", so every word would start with "▁", but after text into "▁river"
ANCHOR = "Answer:"


def _first_token(word: str, tokenizer) -> int | None:
    """The first token of `word` as it follows text: the first token of ANCHOR + word that
    starts at or after the anchor's end (lm_encode's rule for a target's first token)."""
    try:
        enc = tokenizer(ANCHOR + word, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a slow tokenizer has no offsets: the word alone
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if len(ids) else None
    after = [t for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
             if a >= len(ANCHOR)]  # fmt: skip
    return int(after[0]) if after else None


def choice_tokens(choices: Sequence[str], tokenizer) -> list[int]:
    """The first token of each label word as it follows a prompt.

    Raises:
        ValueError: a choice has no tokens, or two choices start with the same token (the
            verbaliser could not tell them apart), naming them, the token and the fix.
    """
    first: dict[int, str] = {}
    for c in choices:
        t = _first_token(c, tokenizer)
        if t is None:
            raise ValueError(f"choice {c!r} has no tokens; give every class a label word")
        if t in first:
            piece = tokenizer.convert_ids_to_tokens(t)
            raise ValueError(
                f"choices {first[t]!r} and {c!r} both start with token {t} ({piece!r}) after a "
                "prompt; the verbaliser reads one token per choice: pick label words whose "
                "first tokens differ"
            )
        first[t] = c
    return list(first)


def verbalise(
    model: nn.Module,
    prompts: Sequence[str],
    choices: Sequence[str],
    tokenizer,
    *,
    max_length: int,
    batch_size: int = 16,
) -> np.ndarray:
    """Index of the likeliest choice after each prompt: the LM head's logits at the prompt's
    last token, restricted to the choices' first tokens (one forward pass per prompt)."""
    ids = torch.tensor(choice_tokens(choices, tokenizer))
    _padding(tokenizer, "right")
    dev, out = next(model.parameters()).device, []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")  # fmt: skip
        last = enc["attention_mask"].sum(1) - 1
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"].to(dev),
                           attention_mask=enc["attention_mask"].to(dev)).logits  # fmt: skip
        out.append(logits[torch.arange(len(last)), last.to(dev)][:, ids.to(dev)].argmax(-1).cpu())
    return torch.cat(out).numpy()


def greedy_targets(
    model: nn.Module, prompts, tokenizer, *, max_new_tokens: int = 32, batch_size: int = 8
) -> list[str]:
    """A_ft's own greedy continuation of each prompt: the label-free calibration targets. Under
    torch.distributed each process generates its share of the batches and all get every one.

    Raises:
        ValueError: the prompts are not raw texts (pre-encoded inputs carry their labels).
    """
    if not is_texts(prompts) or tokenizer is None:
        raise ValueError("label-free calibration generates from raw text prompts with a tokenizer")
    _padding(tokenizer, "left")  # generation continues from the last real token
    dev = next(model.parameters()).device

    def batch(i: int) -> list[str]:
        enc = tokenizer(list(take(prompts, slice(i, i + batch_size))), padding=True,
                        return_tensors="pt").to(dev)  # fmt: skip
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    out = [t for part in gathered(batch, range(0, len(prompts), batch_size)) for t in part]
    tokenizer.padding_side = "right"
    return out


def is_lm_checkpoint(src) -> bool:
    """Whether `src` is a causal LM: a *ForCausalLM model, or a folder whose config says so."""
    if isinstance(src, nn.Module):
        return is_causal_lm(src)
    from ..loading import _config, _resolve_path

    try:
        archs = _config(src, _resolve_path(src)).architectures or []
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForCausalLM") for a in archs)


def same_vocabulary(tok_a, tok_b, model_a: nn.Module, model_b: nn.Module) -> bool:
    """Whether token i means the same in both models: equal vocabularies where both have a
    tokenizer, else equal embedding sizes (pre-encoded inputs: one token space)."""
    if tok_a is not None and tok_b is not None:
        return tok_a.get_vocab() == tok_b.get_vocab()
    emb_a, emb_b = model_a.get_input_embeddings(), model_b.get_input_embeddings()
    return (
        emb_a is not None and emb_b is not None and emb_a.weight.shape[0] == emb_b.weight.shape[0]
    )


def _targets(y, choices: Sequence[str] | None) -> list[str]:
    """Target texts: y as given, or label indices turned into their `choices` words."""
    if choices is not None and not is_texts(y):
        return [choices[int(i)] for i in y]
    return list(y)


def lm_setup(est, a_ft: nn.Module, proc_a, X, y, tv: TaskVector | None = None) -> dict:
    """What `Transfer.fit` needs when A_ft is a causal LM: A and B as LMs (B keeps its LM
    head), τ_A, the module pairs (the vocabulary's modules only between equal vocabularies) and
    the next-token loss on the targets: y, or A_ft's greedy continuations (label-free).
    Pre-encoded X (a dict with input_ids, attention_mask and labels) is used as it is; `tv`
    is τ_A when A_ft came as an adapter (its factors)."""
    from .pairing import match_modules

    a, tok_a = est._load(est.source, lm=True)
    b, proc_b = est._load(est.target, lm=True)
    proc_a = tok_a if proc_a is None else proc_a  # A_ft given as a model object: A's tokenizer
    if b is est.target:  # the caller's own model: τ_B is applied in place, so work on a copy
        b = copy.deepcopy(b)
    texts = None
    if is_texts(X):
        if y is None:
            y = greedy_targets(a_ft, X, proc_a, max_new_tokens=est.max_new_tokens,
                               batch_size=est.batch_size)  # fmt: skip
        y = _targets(y, est.choices)
        texts = [p + t for p, t in zip(X, y, strict=True)]
        procs = {id(a): proc_a, id(b): proc_b}
        batch = lambda model, idx: lm_encode(  # noqa: E731
            take(X, idx), take(y, idx), procs[id(model)], max_length=est.max_length_
        )
    elif isinstance(X, dict) and "labels" in X:
        batch = lambda model, idx: take(X, idx)  # noqa: E731
    else:
        raise ValueError(
            "a causal-LM transfer calibrates on raw text prompts (with targets y, or none for "
            "A_ft's own continuations) or on a dict of input_ids, attention_mask and labels"
        )
    pairs = match_modules(a, b, est.block_map)
    if not same_vocabulary(proc_a, proc_b, a, b):  # token i means another word in B
        vocab = {n for n, (role, _) in roles(b).items() if role in VOCAB_ROLES}
        pairs = {t: s for t, s in pairs.items() if t not in vocab}
    if tv is None:
        tv = TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict())
    else:
        check_fits(a, tv, est.source)
    return dict(source=a, target=b, processor=proc_b, source_processor=proc_a, tv=tv,
                pairs=pairs, texts=texts,
                loss=lambda model, idx: lm_loss(model, batch(model, idx)))  # fmt: skip


def check_fits(model: nn.Module, tv: TaskVector, name) -> None:
    """An adapter's modules must be the model's, with its shapes.

    Raises:
        ValueError: naming how many modules do not fit, and some of them.
    """
    state = model.state_dict()
    bad = [k for k, v in tv.deltas.items() if k not in state or state[k].shape != v.shape]
    if bad:
        raise ValueError(
            f"the adapter does not fit A ({name}): {len(bad)} module(s) missing or of other "
            f"shapes, e.g. {bad[:2]}; pass the base it was trained on as source"
        )


def lm_score(
    model: nn.Module, X, y, tokenizer, *, choices=None, max_length: int, batch_size: int
) -> float:
    """Verbaliser accuracy with `choices`; else the targets' mean log-probability per token
    (y, or A_ft-free: the labels of a pre-encoded dict)."""
    if choices is not None:
        pred = verbalise(model, X, choices, tokenizer, max_length=max_length, batch_size=batch_size)
        want = np.array([list(choices).index(t) for t in y] if is_texts(y) else y)
        return float((pred == want).mean())
    total = torch.zeros(2)
    for i in range(0, len(X) if is_texts(X) else len(X["input_ids"]), batch_size):
        part = slice(i, i + batch_size)
        batch = (lm_encode(X[part], list(y)[part], tokenizer, max_length=max_length)
                 if is_texts(X) else take(X, part))  # fmt: skip
        total += target_logprob(model, batch).sum(0)
    return float(total[0] / total[1].clamp_min(1))
