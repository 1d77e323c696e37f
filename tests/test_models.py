import pytest
import torch
import transformers as tf

from conftest import tiny_classifier
from tasklift.models import backbone, classifier_like, label_names, load_backbone, load_model


def test_label_names_from_a_folder_without_loading_weights(tmp_path):
    ft = tiny_classifier("bert")
    ft.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    ft.save_pretrained(tmp_path / "ft")
    (tmp_path / "ft" / "model.safetensors").unlink()  # only the config is read
    assert label_names(tmp_path / "ft") == {0: "neg", 1: "neu", 2: "pos"}
    assert label_names(ft) == {0: "neg", 1: "neu", 2: "pos"}


def test_classifier_like_keeps_the_encoder_and_the_source_labels():
    ft = tiny_classifier("bert", num_labels=4)
    ft.config.id2label = {i: f"c{i}" for i in range(4)}
    enc = tiny_classifier("bert", seed=3).bert
    out = classifier_like(ft, enc)
    assert out.config.num_labels == 4 and out.config.id2label[3] == "c3"
    for k, v in enc.state_dict().items():
        assert torch.equal(backbone(out).state_dict()[k], v)
    shallow = tf.BertModel(tf.BertConfig(**{**enc.config.to_dict(), "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="lacks .* parameter"):  # layer 1 is missing
        load_backbone(out, shallow)


def test_load_model_refuses_a_base_as_classifier_and_missing_folders(tmp_path):
    tiny_classifier("bert").bert.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="no trained classification head"):
        load_model(tmp_path / "base", head=True)
    model, _ = load_model(tmp_path / "base", head=True, num_labels=5)
    assert model.config.num_labels == 5 and model.classifier.out_features == 5
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_model(tmp_path / "nope")
