"""Locating the parts of a Hugging Face model that a task matrix reads, by structure: its list of
transformer blocks (to read layer i and stop there), the final norm applied before the head (ViT's
`layernorm`, CLIP's `post_layernorm`; BERT-style post-LN models have none), the head as a function
of the pooled summary vector, the token limit and input encoding, and a classifier built on
another base's backbone. Finding them by structure rather than by name is why new HF encoders
mostly just work; loading checkpoints is `tasklift.loading`'s concern (`load_model` is
re-exported here, where callers have always imported it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .checks import check_int
from .data import is_texts
from .loading import _HEADS, load_model

__all__ = [
    "load_model",
    "blocks",
    "num_layers",
    "hidden_size",
    "layer_width",
    "final_norm",
    "Head",
    "encode",
    "backbone",
    "classifier_like",
    "load_backbone",
    "max_tokens",
    "token_limit",
]

#: the token limit for texts when none is given (lowered to the model's maximum)
DEFAULT_MAX_LENGTH = 128

_NORM_NAMES = ("layernorm", "post_layernorm", "final_layer_norm", "ln_f", "norm")
#: what a classifier's head reads where it is not token 0 (`defaults.POOLS`): DINOv2's reads
#: [CLS] joined to the mean of the patch tokens, each after the final norm
_HEAD_READS = {"dinov2": "cls+mean", "dinov2_with_registers": "cls+mean"}
_BLOCK_HINTS = (
    "encoder.layer",
    "encoder.layers",
    "transformer.layer",
    "transformer.h",
    "layers",
    "h",
)


def backbone(model: nn.Module) -> nn.Module:
    """The encoder inside a classifier (model.bert, model.vit, ...), or the model itself.

    Found by `base_model_prefix`, else by unwrapping: a module with no parameters of its own
    whose only parameter-holding child, heads aside, is a tower (SigLIP's and CLIP's
    `vision_model`) is replaced by that child.
    """
    prefix = getattr(model, "base_model_prefix", "")
    enc = getattr(model, prefix, None) if prefix else None
    if isinstance(enc, nn.Module):
        return enc
    enc = model
    while next(enc.parameters(recurse=False), None) is None:
        holders = [
            m for name, m in enc.named_children()
            if name not in _HEADS and next(m.parameters(), None) is not None
        ]  # fmt: skip
        if len(holders) != 1 or not any(True for _ in holders[0].children()):
            break
        enc = holders[0]
    return enc


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks, in order (e.g. bert.encoder.layer).

    Raises:
        ValueError: no ModuleList of config.num_hidden_layers blocks was found.
    """
    enc = backbone(model)
    if hasattr(enc, "layer_modules"):  # a CNN (tasklift.convnet): its stages, then its head conv
        return nn.ModuleList(enc.layer_modules())
    config = getattr(model, "config", None)
    n = getattr(getattr(config, "vision_config", config), "num_hidden_layers", None)
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n)
    ]
    for hint in _BLOCK_HINTS:
        for name, m in found:
            if name == hint or name.endswith("." + hint):
                return m
    if found:
        return found[0][1]
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: no ModuleList "
        f"of {n} layers; tasklift supports HF encoders such as BERT, RoBERTa, ViT, CLIP"
    )


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks L (hidden states are indexed 0..L)."""
    return len(blocks(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream (of a CNN: its pre-classifier features)."""
    config = model.config
    return getattr(config, "vision_config", config).hidden_size


def is_cnn(model: nn.Module) -> bool:
    """True where the hidden states are a CNN's feature maps (its stages say their widths)."""
    return hasattr(backbone(model), "layer_widths")


def layer_width(model: nn.Module, layer: int) -> int:
    """Width of hidden state `layer`: the residual stream, or a CNN's channels there."""
    return backbone(model).layer_widths()[layer] if is_cnn(model) else hidden_size(model)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied to the last hidden state before the head, or None (post-LN BERT)."""
    enc = backbone(model)
    for owner in (enc, getattr(enc, "vision_model", None)):
        for name in _NORM_NAMES:
            norm = getattr(owner, name, None) if owner is not None else None
            if isinstance(norm, nn.Module):
                return norm
    return None


class Head(nn.Module):
    """A classifier's head as a function of the pooled, final-normed summary vector.

    Covers the HF heads that read token 0 (`reads` = "cls"): BERT-style pooler + classifier,
    RoBERTa's dense-tanh-out head, DistilBERT's pre_classifier, and plain linear heads (ViT,
    DeiT); DINOv2's linear head on [CLS] joined to the patch mean (`reads` = "cls+mean", the
    norm inside the pool); and decoders' sequence classifiers (`score`: Llama, Qwen2, Gemma-3,
    GPT-2), which read the last attended token (`reads` = "last").

    Shapes: forward (B, d) -> (B, num_classes).

    Raises:
        ValueError: the model has no classification head tasklift knows how to read.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        kind = getattr(getattr(model, "config", None), "model_type", None)
        self.reads = _HEAD_READS.get(kind, "cls")
        score = getattr(model, "score", None)
        if isinstance(score, nn.Linear) and getattr(model, "classifier", None) is None:
            self.pooler = self.pre = None
            self.classifier, self.sequence_head, self.reads = score, False, "last"
            return
        classifier = getattr(model, "classifier", None)
        if classifier is None:
            raise ValueError(
                f"{type(model).__name__} has no classification head (no .classifier); "
                "load the fine-tuned model with load_model(..., head=True)"
            )
        pooler = getattr(backbone(model), "pooler", None)
        if pooler is not None and not hasattr(pooler, "dense"):  # BEiT's mean-pooling layernorm
            raise ValueError(
                f"{type(model).__name__}'s head reads {type(pooler).__name__}, a pooling "
                "tasklift does not reproduce (it reads token 0, through a dense pooler or not, "
                "a decoder's last token, or DINOv2's cls+mean)"
            )
        self.pooler = pooler
        self.pre = getattr(model, "pre_classifier", None)
        self.classifier = classifier
        self.sequence_head = not isinstance(classifier, nn.Linear)  # RobertaClassificationHead
        if self.sequence_head and not hasattr(classifier, "out_proj"):
            raise ValueError(
                f"unsupported head {type(classifier).__name__} in {type(model).__name__}"
            )

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        last = self.classifier.out_proj if self.sequence_head else self.classifier
        return last.out_features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.pooler is not None:
            z = self.pooler.activation(self.pooler.dense(z))
        if self.pre is not None:
            z = torch.relu(self.pre(z))
        return self.classifier(z[:, None, :]) if self.sequence_head else self.classifier(z)


def max_tokens(model: nn.Module, processor=None) -> int | None:
    """The most tokens `model` reads: its learned position table, less the offset RoBERTa-style
    models start positions at (padding_idx + 1); else its config's max_position_embeddings; else
    the tokenizer's model_max_length; None when nothing says (image models)."""
    for name, m in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(m, nn.Embedding):
            return m.num_embeddings - (0 if m.padding_idx is None else m.padding_idx + 1)
    most = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(most, int):
        return most
    most = getattr(processor, "model_max_length", None)
    return most if isinstance(most, int) and most < 1_000_000 else None  # unset: 1e30


def token_limit(max_length: int | None, model: nn.Module, processor=None) -> int:
    """The token limit for texts fed to `model`: `max_length` checked against the most tokens the
    model reads (positions past it would crash or read untrained embeddings), or by default
    that most, at most 128.

    Raises:
        ValueError: max_length is not a whole number in 1..the model's maximum.
    """
    most = max_tokens(model, processor)
    if max_length is None:
        return DEFAULT_MAX_LENGTH if most is None else min(DEFAULT_MAX_LENGTH, most)
    check_int(max_length, "max_length (--max-length)", low=1)
    if most is not None and max_length > most:
        name = getattr(model.config, "name_or_path", "") or type(model).__name__
        raise ValueError(
            f"max_length={max_length} (--max-length) is more than the {most} tokens {name} "
            f"reads (its position embeddings); pass {most} or less"
        )
    return max_length


def encode(items, processor, *, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Turn a batch of raw inputs into model keyword tensors.

    Accepts a list of strings (tokenised to at most `max_length` tokens, default 128: check it
    against the model with `token_limit`), image arrays (N, C, H, W) floats used as
    pixel_values, PIL images / HWC arrays (image processor), or an already-encoded dict.
    """
    if isinstance(items, dict):
        return {k: torch.as_tensor(v) for k, v in items.items()}
    if (
        isinstance(items, (np.ndarray, torch.Tensor))
        and items.ndim == 4
        and items.shape[1] in (1, 3)
    ):
        return {"pixel_values": torch.as_tensor(np.asarray(items, dtype=np.float32))}
    if processor is None:
        raise ValueError(
            "this model has no tokenizer/image processor; pass one as processor= (e.g. "
            "AutoTokenizer.from_pretrained(folder)), or pre-encoded tensors (a dict of "
            "input_ids/attention_mask, or pixel_values arrays)"
        )
    if is_texts(items):
        return dict(
            processor(
                list(items),
                padding=True,
                truncation=True,
                max_length=DEFAULT_MAX_LENGTH if max_length is None else max_length,
                return_tensors="pt",
            )
        )
    return dict(processor(images=list(items), return_tensors="pt"))


def classifier_like(finetuned: nn.Module, encoder: nn.Module) -> nn.Module:
    """A classifier of `encoder`'s architecture and weights with `finetuned`'s labels and a blank
    head (how a transferred task gets a home on another base).

    Raises:
        ValueError: the encoder lacks weights its classifier needs (another architecture).
    """
    import copy

    import transformers as tf

    tower = hasattr(finetuned.config, "vision_config") and not hasattr(
        encoder.config, "vision_config"
    )
    if tower:  # a SigLIP-style tower: put its config into the classifier's composite config
        cfg = copy.deepcopy(finetuned.config)
        cfg.vision_config = copy.deepcopy(encoder.config)
    else:
        cfg = copy.deepcopy(encoder.config)
    cfg.num_labels = finetuned.config.num_labels
    cfg.id2label, cfg.label2id = dict(finetuned.config.id2label), dict(finetuned.config.label2id)
    if tower or cfg.model_type == finetuned.config.model_type:
        model = type(finetuned)(cfg)
    else:
        auto = (
            tf.AutoModelForImageClassification
            if "pixel" in str(finetuned.main_input_name)
            else tf.AutoModelForSequenceClassification
        )
        model = auto.from_config(cfg)
    load_backbone(model, encoder)
    p = next(encoder.parameters())
    return model.to(p.device, p.dtype).eval()


def load_backbone(classifier: nn.Module, encoder: nn.Module) -> None:
    """Copy an encoder's weights into a classifier's backbone, in place (extras such as a pooler
    the classifier lacks are ignored; anything the classifier needs must be there).

    Raises:
        ValueError: the encoder lacks parameters the classifier's backbone needs.
    """
    target, weights = backbone(classifier).state_dict(), encoder.state_dict()
    differ = [k for k, v in weights.items() if k in target and target[k].shape != v.shape]
    if differ:
        k = differ[0]
        raise ValueError(
            f"widths differ: {k} is {tuple(weights[k].shape)} in the encoder but "
            f"{tuple(target[k].shape)} in the classifier ({len(differ)} tensor(s) differ)"
        )
    missing, _ = backbone(classifier).load_state_dict(weights, strict=False)
    if missing:
        raise ValueError(
            f"the base checkpoint lacks {len(missing)} parameter(s) its classifier needs, "
            f"e.g. {missing[:3]}; is it the same architecture?"
        )
