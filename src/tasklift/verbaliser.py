"""A causal LM answering in words, as a classification head: the verbaliser. Its logits are the
LM head's rows for the label words' first tokens (plus the LM head's bias, and the final logit
soft-capping of Gemma-style configs), read at the last attended token after the final norm,
so they equal the LM's own next-token logits restricted to those tokens. The rows are copied
out of the LM, so a saved task matrix predicts without the fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._torch import linear_from
from .transfer.lm import choice_tokens, is_causal_lm

__all__ = ["Verbaliser", "name_choices"]


def _words(choices: Sequence[str] | Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(label words, class names): a mapping is {class name: word}; a list names each class by
    its word, stripped."""
    if isinstance(choices, Mapping):
        return [str(w) for w in choices.values()], [str(k) for k in choices]
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise ValueError(
            f"choices must be a list of label words or a {{class: word}} dict, not {choices!r}"
        )
    return [str(w) for w in choices], [str(w).strip() for w in choices]


def name_choices(
    choices: Sequence[str] | Mapping[str, str], classes: Sequence[str]
) -> dict[str, str]:
    """{class name: word} for `classes` in their order: the i-th word answers the i-th class, or
    a {class name: word} mapping put in that order.

    Raises:
        ValueError: the counts differ, or a mapping names other classes, naming both.
    """
    if isinstance(choices, Mapping):
        named = {str(k): str(w) for k, w in choices.items()}
        if set(named) != {str(c) for c in classes}:
            raise ValueError(
                f"choices name the classes {list(named)} but the data's are {list(classes)}; "
                "give one label word per class of the data"
            )
        return {str(c): named[str(c)] for c in classes}
    words, _ = _words(choices)
    if len(words) != len(classes):
        raise ValueError(
            f"{len(words)} choices {words} for {len(classes)} classes {list(classes)}; "
            "give one label word per class, in that order"
        )
    return dict(zip(map(str, classes), words, strict=True))


class Verbaliser(nn.Module):
    """A causal LM's head restricted to its label words: the head of a verbaliser task matrix.

    Args:
        weight: the LM head's rows for the choices' first tokens, (classes, d).
        bias: the LM head's bias at those tokens (classes,), or None.
        tokens: the token ids the rows were taken from (recorded, for the saved file).
        class_names: one name per class.
        softcap: the config's final logit soft-capping (logits → c·tanh(logits / c)), or None.

    Shapes: forward (B, d) final-normed summary vectors -> (B, classes).
    """

    reads = "last"  # what an LM reads to predict the next token: the last attended one

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        tokens: Sequence[int],
        class_names: Sequence[str],
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.classifier = linear_from(weight, bias, like=weight)
        self.tokens, self.class_names, self.softcap = list(tokens), list(class_names), softcap

    @classmethod
    def from_lm(
        cls, model: nn.Module, choices: Sequence[str] | Mapping[str, str], tokenizer
    ) -> Verbaliser:
        """The verbaliser of causal LM `model` over `choices` (words, or {class name: word}),
        each word written as it follows the prompt (mind the leading space: ' river').

        Raises:
            ValueError: `model` has no LM head; no tokenizer; a choice with no tokens or two
                choices with the same first token (see `transfer.lm.choice_tokens`).
        """
        if not is_causal_lm(model):
            raise ValueError(
                f"choices need a causal LM as the fine-tuned model, but {type(model).__name__} "
                "has no LM head; load it with load_model(..., lm=True), or drop choices to use "
                "its classification head"
            )
        if tokenizer is None:
            raise ValueError(
                "choices are read through the tokenizer, but none was found; pass "
                "processor=AutoTokenizer.from_pretrained(folder)"
            )
        words, names = _words(choices)
        tokens = choice_tokens(words, tokenizer)
        head = model.get_output_embeddings()
        idx = torch.tensor(tokens, device=head.weight.device)
        bias = None if getattr(head, "bias", None) is None else head.bias.detach()[idx]
        softcap = getattr(model.config, "final_logit_softcapping", None)
        return cls(head.weight.detach()[idx], bias, tokens=tokens, class_names=names,
                   softcap=softcap)  # fmt: skip

    @property
    def num_classes(self) -> int:
        """Number of choices."""
        return self.classifier.out_features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(z)  # (B, classes)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors in float32 on CPU, metadata) that rebuild this head (`from_state`)."""
        tensors = {k: v.detach().float().cpu() for k, v in self.classifier.state_dict().items()}
        meta = {"class": "Verbaliser", "tokens": self.tokens, "class_names": self.class_names,
                "softcap": self.softcap}  # fmt: skip
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Verbaliser:
        """Inverse of `state`."""
        return cls(tensors["weight"], tensors.get("bias"), tokens=meta["tokens"],
                   class_names=meta["class_names"], softcap=meta["softcap"])  # fmt: skip
