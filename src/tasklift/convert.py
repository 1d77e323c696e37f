"""Checkpoints in other formats made into Hugging Face folders: a BERT exported to ONNX,
EfficientNet-Lite weights in EfficientNet-PyTorch's names, and a causal LM in a (quantised) GGUF.

ONNX keeps the named initialisers of biases, norms and embeddings, but the exporter stores each
linear weight transposed under an anonymous name (onnx::MatMul_470). Every such weight feeds a
MatMul whose output is added to a named bias, so the weight takes the bias's module name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["onnx_to_bert", "efficientnet_pytorch_to_hf", "gguf_to_hf"]

_BERT_ROOTS = ("embeddings.", "encoder.", "pooler.")


def _bert_key(name: str) -> str | None:
    """'model.0.auto_model.encoder.layer.0.output.dense.bias' -> 'encoder.layer.0...bias'."""
    hits = [name.find(root) for root in _BERT_ROOTS if root in name]
    return name[min(hits) :] if hits else None


def _head_dim(graph, values: dict, hidden: int) -> int | None:
    """The attention head width, read off the score scaling (÷√d or ×1/√d) in the graph."""
    for node in graph.node:
        if node.op_type not in ("Div", "Mul") or "attention" not in node.name:
            continue
        for name in node.input[1:]:
            c = values.get(name)
            if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.floating):
                continue
            c = float(c.reshape(()))
            for d in (c * c, 1 / (c * c) if c else 0, 1 / c**4 if c else 0):
                if d >= 1 and abs(d - round(d)) < 1e-3 and hidden % round(d) == 0:
                    return round(d)
    return None


def onnx_to_bert(path: str | os.PathLike, *, num_attention_heads: int | None = None):
    """A `transformers.BertModel` with the weights of a BERT encoder exported to ONNX, exactly.

    Args:
        path: the .onnx file (inputs input_ids and attention_mask, as sentence-transformers and
            torch.onnx export BERT).
        num_attention_heads: only needed when the graph does not show the score scaling.

    Raises:
        ValueError: the graph is not a BERT encoder, or a weight cannot be named.
    """
    import onnx
    import transformers as tf
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # constants and the exporter's de-duplicated copies (Identity)
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    state = {}
    for name, v in values.items():
        key = _bert_key(name)
        if key is not None:
            state[key] = v
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else None
        if weight not in values or _bert_key(weight) is not None:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [_bert_key(i) for a in adds for i in a.input if i != node.output[0]]
        biases = [b for b in biases if b is not None and b.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"{path}: cannot name the weight {weight} (no single named bias)")
        state[biases[0][: -len("bias")] + "weight"] = values[weight].T
    if "embeddings.word_embeddings.weight" not in state:
        raise ValueError(f"{path} is not a BERT encoder: no embeddings.word_embeddings.weight")
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    heads = num_attention_heads
    if heads is None:
        head_dim = _head_dim(graph, values, hidden)
        if head_dim is None:
            raise ValueError(f"{path}: cannot read the number of heads; pass num_attention_heads")
        heads = hidden // head_dim
    eps = [
        a.f for n in graph.node if n.op_type == "LayerNormalization" for a in n.attribute
        if a.name == "epsilon"
    ]  # fmt: skip
    config = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        intermediate_size=state["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=float(f"{eps[0]:.6g}") if eps else 1e-12,  # float32 1e-12 -> 1e-12
    )
    pooler = "pooler.dense.weight" in state
    model = tf.BertModel(config, add_pooling_layer=pooler).eval()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}  # writable copies
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: the ONNX weights do not make a BertModel (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model


def efficientnet_pytorch_to_hf(path: str | os.PathLike, *, num_labels: int = 1000):
    """tasklift's EfficientNet-Lite0 classifier with weights from an EfficientNet-PyTorch
    state dict (`_conv_stem`, `_blocks.N._depthwise_conv`, ... `_fc`), matched in order.

    Raises:
        ValueError: the tensors' count or shapes differ from EfficientNet-Lite0's, in order.
    """
    from .convnet import ConvNetConfig, ConvNetForImageClassification

    theirs = torch.load(Path(path), map_location="cpu", weights_only=True)  # no pickle code
    model = ConvNetForImageClassification(ConvNetConfig(num_labels=num_labels)).eval()
    ours = model.state_dict()
    if len(theirs) != len(ours):
        raise ValueError(f"{path} holds {len(theirs)} tensors; EfficientNet-Lite0 has {len(ours)}")
    for (k, v), (k2, v2) in zip(ours.items(), theirs.items(), strict=True):
        if v.shape != v2.shape:
            raise ValueError(f"{path}: {k2} {tuple(v2.shape)} does not fit {k} {tuple(v.shape)}")
    model.load_state_dict(dict(zip(ours, theirs.values(), strict=True)), strict=True)
    return model


def gguf_to_hf(path: str | os.PathLike):
    """A plain `*ForCausalLM` (float32, dequantised) and its tokenizer, from a GGUF file.

    transformers reads GGUF (with the `gguf` package) but refuses to save what it read; the same
    weights moved, not copied, into a model built from the config (without its quantization
    config) save as a plain safetensors folder that reloads without `gguf`.

    Raises:
        ImportError: the `gguf` package is missing (pip install "tasklift[llm]").
        ValueError: the file is not a GGUF transformers can read.
    """
    import transformers as tf

    path = Path(path)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError(f"reading {path.name} needs the gguf package: pip install gguf") from None
    kw = {"gguf_file": path.name, "local_files_only": True}
    read = tf.AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(path.parent, **kw)
    config = read.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):  # no second copy: the read tensors are assigned, not copied
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(read.state_dict(), strict=True, assign=True)
    for name, buf in read.named_buffers():  # not in the state dict (rotary frequencies, ...)
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = buf
    model.tie_weights()
    model.generation_config = read.generation_config
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{path}: no weights in the GGUF for {left[:3]}")
    return model.eval(), tokenizer
