"""tasklift export: folded into a plain transformers classifier where possible, else a bundle."""

import numpy as np
import pytest
import torch
import transformers as tf

from conftest import tiny_classifier, tiny_images
from tasklift.cli import main
from tasklift.export import export, load_export
from tasklift.taskmatrix import TaskMatrix


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


def test_pre_ln_vit_is_exported_as_a_bundle_that_loads_in_one_call(tmp_path):
    ft = tiny_classifier("vit", seed=0)
    ft.vit.save_pretrained(tmp_path / "base")
    ft.save_pretrained(tmp_path / "ft")
    X = tiny_images(24).numpy()
    tm = TaskMatrix(str(tmp_path / "base"), str(tmp_path / "ft"), layer=1, device="cpu").fit(X)
    assert export(tm, tmp_path / "bundle") == "tasklift"  # the final norm sits after the map
    moved = tmp_path / "moved"
    (tmp_path / "bundle").rename(moved)  # the bundle is self-contained
    back = load_export(moved)
    assert back.layer_ == 1 and back.base_model_.config.num_hidden_layers == 1  # cut after 1
    np.testing.assert_allclose(back.decision_function(X), tm.decision_function(X), atol=1e-5)
    with pytest.raises(ValueError, match="no map for layer 2"):
        export(tm, tmp_path / "x", layer=2)
