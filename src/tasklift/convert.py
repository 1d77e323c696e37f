"""Checkpoints in other formats made into Hugging Face folders: a BERT or a DINOv2 backbone
exported to ONNX, EfficientNet-Lite weights in EfficientNet-PyTorch's names, and a causal LM in a
(quantised) GGUF.

ONNX keeps the named initialisers of biases, norms and embeddings, but the exporter stores each
linear weight transposed under an anonymous name (onnx::MatMul_470). Every such weight feeds a
MatMul whose output is added to a named bias, so the weight takes the bias's module name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["onnx_to_bert", "onnx_to_dinov2", "efficientnet_pytorch_to_hf", "gguf_to_hf"]

_BERT_ROOTS = ("embeddings.", "encoder.", "pooler.")
_DINOV2_ROOTS = ("embeddings.", "encoder.", "layernorm.")
#: Dinov2 attention names before and after transformers 5 (an export may hold either)
_DINOV2_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def _module_key(name: str, roots: tuple[str, ...]) -> str | None:
    """'model.0.auto_model.encoder.layer.0.output.dense.bias' -> 'encoder.layer.0...bias'."""
    hits = [name.find(root) for root in roots if root in name]
    return name[min(hits) :] if hits else None


def _onnx_graph(path: str | os.PathLike):
    """The graph and every tensor it holds by name: initialisers, constants and the exporter's
    de-duplicated copies (Identity)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return graph, values


def _named_state(path, graph, values: dict, roots: tuple[str, ...]) -> dict:
    """The tensors named under `roots`, and each anonymous MatMul weight named after the bias
    added to its output (transposed to nn.Linear's (out, in))."""
    state = {}
    for name, v in values.items():
        key = _module_key(name, roots)
        if key is not None:
            state[key] = v
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else None
        if weight not in values or _module_key(weight, roots) is not None:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [_module_key(i, roots) for a in adds for i in a.input if i != node.output[0]]
        biases = [b for b in biases if b is not None and b.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"{path}: cannot name the weight {weight} (no single named bias)")
        state[biases[0][: -len("bias")] + "weight"] = values[weight].T
    return state


def _head_dim(graph, values: dict, hidden: int) -> int | None:
    """The attention head width d, read off the score scaling: the scores (a MatMul's output)
    ÷√d or ×1/√d, or query and key each ×d^-1/4 before their MatMul (the SDPA export)."""
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type not in ("Div", "Mul") or "attention" not in node.name:
            continue
        scores = producer.get(node.input[0])
        power = 2 if scores is not None and scores.op_type == "MatMul" else 4
        for name in node.input[1:]:
            c = values.get(name)
            if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.floating):
                continue
            c = float(c.reshape(()))
            d = (c if node.op_type == "Div" else 1 / c) ** power if c > 0 else 0
            if d >= 1 and abs(d - round(d)) < 1e-3 and hidden % round(d) == 0:
                return round(d)
    return None


def _heads(path, graph, values: dict, hidden: int, given: int | None) -> int:
    if given is not None:
        return given
    head_dim = _head_dim(graph, values, hidden)
    if head_dim is None:
        raise ValueError(f"{path}: cannot read the number of heads; pass num_attention_heads")
    return hidden // head_dim


def _layer_norm_eps(graph, values: dict, default: float) -> float:
    """The layer norms' epsilon: a LayerNormalization attribute (opset 17+), or the constant added
    to the variance before its square root (earlier opsets spell the norm out)."""
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        eps = [a.f for a in node.attribute if a.name == "epsilon"]
        if node.op_type == "LayerNormalization" and eps:
            return float(f"{eps[0]:.6g}")  # float32 1e-12 -> 1e-12
        add = producer.get(node.input[0]) if node.op_type == "Sqrt" else None
        if add is not None and add.op_type == "Add":
            eps = [values[i] for i in add.input if i in values and values[i].size == 1]
            if eps:
                return float(f"{float(eps[0].reshape(())):.6g}")
    return default


def _load_exactly(model, state: dict, path):
    """`model` holding exactly the tensors of `state` (its position_ids buffers aside)."""
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}  # writable copies
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: the ONNX weights do not make a {type(model).__name__} (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def onnx_to_bert(path: str | os.PathLike, *, num_attention_heads: int | None = None):
    """A `transformers.BertModel` with the weights of a BERT encoder exported to ONNX, exactly.

    Args:
        path: the .onnx file (inputs input_ids and attention_mask, as sentence-transformers and
            torch.onnx export BERT).
        num_attention_heads: only needed when the graph does not show the score scaling.

    Raises:
        ValueError: the graph is not a BERT encoder, or a weight cannot be named.
    """
    import transformers as tf

    graph, values = _onnx_graph(path)
    state = _named_state(path, graph, values, _BERT_ROOTS)
    if "embeddings.word_embeddings.weight" not in state:
        raise ValueError(f"{path} is not a BERT encoder: no embeddings.word_embeddings.weight")
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    config = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=_heads(path, graph, values, hidden, num_attention_heads),
        intermediate_size=state["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=_layer_norm_eps(graph, values, 1e-12),
    )
    pooler = "pooler.dense.weight" in state
    return _load_exactly(tf.BertModel(config, add_pooling_layer=pooler), state, path)


def _dinov2_positions(path, graph, values: dict) -> np.ndarray:
    """(1, 1 + n², D) position embeddings that torch.onnx folded into two anonymous tensors: the
    patch grid read up from the bicubic Resize, the class position from the Concat it feeds."""
    producer = {out: node for node in graph.node for out in node.output}
    consumer = {name: n for n in graph.node if n.op_type != "Shape" for name in n.input}
    resize = next((n for n in graph.node if n.op_type == "Resize" and "embeddings" in n.name), None)
    if resize is None:
        raise ValueError(f"{path}: no position embeddings (named or resized) in the graph")
    name = resize.input[0]
    while name not in values:  # Cast <- Transpose <- Reshape <- the (1, n², D) grid
        name = producer[name].input[0]
    patches = values[name]
    node = consumer[resize.output[0]]
    while node.op_type != "Concat":  # Cast -> Transpose -> Reshape -> [class, patches]
        node = consumer[node.output[0]]
    cls_pos = values[next(i for i in node.input if i in values)]
    return np.concatenate([cls_pos.reshape(1, 1, -1), patches.reshape(1, -1, cls_pos.size)], 1)


def _dinov2_name(key: str, expected) -> str:
    """`key` as the model spells it (old or new transformers attention names)."""
    for old, new in _DINOV2_RENAMES:
        for a, b in ((old, new), (new, old)):
            if key not in expected and a in key and key.replace(a, b) in expected:
                return key.replace(a, b)
    return key


def onnx_to_dinov2(path: str | os.PathLike, *, num_attention_heads: int | None = None):
    """A `transformers.Dinov2Model` with the backbone weights of a DINOv2 ViT exported to ONNX
    (any head after the backbone's final norm is left out), exactly.

    The exporter folds the position embeddings into a class part and a patch grid that the graph
    resizes bicubically (no antialiasing) to the input's grid, as `Dinov2Model` does: both are
    joined again, so the model interpolates from the same grid at any input size.

    Args:
        path: the .onnx file (input pixel values (B, C, H, W)).
        num_attention_heads: only needed when the graph does not show the score scaling.

    Raises:
        ValueError: the graph is not a DINOv2 backbone, has register tokens or another
            activation than exact GELU, or a weight cannot be named.
    """
    import transformers as tf

    graph, values = _onnx_graph(path)
    state = _named_state(path, graph, values, _DINOV2_ROOTS)
    if "embeddings.cls_token" not in state or "layernorm.weight" not in state:
        raise ValueError(f"{path} is not a DINOv2 backbone: no embeddings.cls_token / layernorm")
    if "embeddings.register_tokens" in state:
        raise ValueError(
            f"{path} has register tokens (Dinov2WithRegisters), whose transformers model resizes "
            "its positions with antialiasing, unlike the graph; only plain DINOv2 converts"
        )
    if not any(n.op_type in ("Erf", "Gelu") for n in graph.node):
        raise ValueError(f"{path}: the MLP is not exact GELU (no Erf/Gelu node), as DINOv2's is")
    if "embeddings.position_embeddings" not in state:
        state["embeddings.position_embeddings"] = _dinov2_positions(path, graph, values)
    hidden = state["embeddings.cls_token"].shape[-1]
    conv = state["embeddings.patch_embeddings.projection.weight"]  # (D, C, p, p)
    width = state["encoder.layer.0.mlp.fc1.bias"].shape[0]
    if width % hidden:
        raise ValueError(f"{path}: MLP width {width} is not a multiple of the width {hidden}")
    grid = math.isqrt(state["embeddings.position_embeddings"].shape[1] - 1)
    config = tf.Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")}),
        num_attention_heads=_heads(path, graph, values, hidden, num_attention_heads),
        mlp_ratio=width // hidden,
        image_size=grid * conv.shape[-1],
        patch_size=conv.shape[-1],
        num_channels=conv.shape[1],
        layer_norm_eps=_layer_norm_eps(graph, values, 1e-6),
        hidden_act="gelu",
        use_mask_token=False,  # masking is for pre-training; graphs never hold the token
    )
    model = tf.Dinov2Model(config)
    expected = model.state_dict().keys()
    return _load_exactly(model, {_dinov2_name(k, expected): v for k, v in state.items()}, path)


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
