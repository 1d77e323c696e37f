"""tasklift export: folded into a plain transformers classifier where possible, else a bundle
(decoders: the base cut after block i, as every family's config allows)."""

import shutil

import numpy as np
import pytest
import torch
import transformers as tf

from conftest import WORDS, nudged, tiny_classifier, tiny_images, tiny_tokenizer
from tasklift.cli import main
from tasklift.export import export, load_export
from tasklift.models import backbone
from tasklift.taskmatrix import TaskMatrix
from test_lm import V, tiny_lm
from test_verbaliser import CHOICES, _texts, qwen_pair


def test_bert_task_matrix_folds_into_a_plain_transformers_classifier(text_task, tmp_path, capsys):
    task = tmp_path / "tm.safetensors"
    data = [str(text_task / "base"), str(text_task / "ft"), str(text_task / "data.csv")]
    args = ["--text-key", "sentence", "--quiet"]
    fit = ["fit", *data, "-o", str(task), "--layer", "1", "--alpha", "0.01", *args]
    assert main(fit) == 0  # ridge: plain lstsq on 288 rows gives |W| ~ 1e5, float32 noise
    assert main(["export", str(task), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "(transformers)" in capsys.readouterr().out
    model = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 1 and model.config.id2label[2] == "c"
    texts = ["alpha w1 w2 w3", "w4 beta w5", "gamma w6 w7 w8 w9"]
    with torch.no_grad():
        got = model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
    tm = TaskMatrix.load(task)
    np.testing.assert_allclose(got, tm.decision_function(texts), atol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_pre_ln_vit_is_exported_as_a_bundle_that_loads_in_one_call(kind, tmp_path):
    """DINOv2's config also lists its backbone stages, cut with its blocks."""
    ft = tiny_classifier(kind, seed=0)
    backbone(ft).save_pretrained(tmp_path / "base")
    ft.save_pretrained(tmp_path / "ft")
    X = tiny_images(24).numpy()
    pool = "cls+mean" if kind == "dinov2" else "cls"
    tm = TaskMatrix(str(tmp_path / "base"), str(tmp_path / "ft"), layer=1, pool=pool,
                    device="cpu").fit(X)  # fmt: skip
    assert export(tm, tmp_path / "bundle") == "tasklift"  # the final norm sits after the map
    moved = tmp_path / "moved"
    (tmp_path / "bundle").rename(moved)  # the bundle is self-contained
    back = load_export(moved)
    assert back.layer_ == 1 and back.base_model_.config.num_hidden_layers == 1  # cut after 1
    np.testing.assert_allclose(back.decision_function(X), tm.decision_function(X), atol=1e-5)
    with pytest.raises(ValueError, match="no map for layer 2"):
        export(tm, tmp_path / "x", layer=2)


def _decoder_pair(kind: str, root) -> int:
    """A tiny causal LM of `kind` in root/base and its nudged copy in root/ft (Gemma-3 with
    sliding, full, sliding attention blocks; Qwen2 with its own tokenizer); its layer count."""
    if kind == "qwen2":
        return qwen_pair(root)[0].config.num_hidden_layers
    if kind == "gemma3":
        torch.manual_seed(0)
        cfg = tf.Gemma3TextConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, head_dim=8, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )  # fmt: skip
        base = nudged(tf.Gemma3ForCausalLM(cfg).eval(), seed=3, scale=0.2)
    else:
        base = tiny_lm(kind, layers=3)
    for name, model in (("base", base), ("ft", nudged(base, seed=2, scale=0.3))):
        model.save_pretrained(root / name)
        tiny_tokenizer(WORDS).save_pretrained(root / name)
    return 3


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gemma3", "gpt2"])
def test_a_decoder_verbaliser_matrix_exports_a_cut_base_fitted_or_loaded(kind, tmp_path, capsys):
    """Cut before its last block (config lists such as Gemma-3's sliding/full layer_types cut
    with it), the bundle predicts what the matrix does, and holds no fine-tuned model: the
    verbaliser is in the task file. A matrix loaded without its fine-tuned model exports too."""
    layer = _decoder_pair(kind, tmp_path) - 1
    texts = _texts(60, seed=4)
    kw = dict(layer=layer, pool="last", choices=CHOICES[:3], device="cpu")
    tm = TaskMatrix(str(tmp_path / "base"), str(tmp_path / "ft"), **kw).fit(texts)
    want = tm.decision_function(texts)
    assert export(tm, tmp_path / "fitted") == "tasklift"
    tm.save(tmp_path / "tm.safetensors")
    shutil.rmtree(tmp_path / "ft")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "tm.safetensors"), "-o", str(tmp_path / "loaded"),
                 "--quiet"]) == 0  # fmt: skip
    assert "exported (tasklift)" in capsys.readouterr().out
    for out in ("fitted", "loaded"):
        (tmp_path / out).rename(tmp_path / f"{out}-moved")  # the bundle is self-contained
        back = load_export(tmp_path / f"{out}-moved")
        assert not (tmp_path / f"{out}-moved" / "finetuned").exists()
        assert back.finetuned_model_ is None and back.class_names_ == ["alpha", "beta", "gamma"]
        cfg = back.base_model_.config
        assert cfg.num_hidden_layers == layer
        if kind == "gemma3":
            assert cfg.layer_types == ["sliding_attention", "full_attention"]
        np.testing.assert_allclose(back.decision_function(texts), want, atol=1e-5)
        np.testing.assert_array_equal(back.predict(texts), tm.predict(texts))


def test_a_verbaliser_matrix_reading_the_finetuned_norm_exports_the_finetuned_model(tmp_path):
    """norm='finetuned' needs the fine-tuned LM's final norm, so the bundle carries that model;
    layer 0 (the embeddings: block 0's input) keeps one block to read it at."""
    _decoder_pair("qwen2", tmp_path)
    texts = _texts(60, seed=4)
    tm = TaskMatrix(str(tmp_path / "base"), str(tmp_path / "ft"), layer="auto", pool="last",
                    norm="finetuned", choices=CHOICES[:3], device="cpu").fit(texts)  # fmt: skip
    for layer in (0, 1):
        out = tmp_path / f"out{layer}"
        export(tm, out, layer=layer)
        back = load_export(out)
        assert (out / "finetuned").is_dir() and back.finetuned_model_ is not None
        assert back.layer_ == layer and back.base_model_.config.num_hidden_layers == 1
        np.testing.assert_allclose(
            back.decision_function(texts), tm.decision_function(texts, layer=layer), atol=1e-5
        )
