import numpy as np
import pytest
import torch
import transformers as tf

from conftest import nudged, tiny_classifier, tiny_images
from tasklift.loading import label_names, load_model
from tasklift.models import backbone, classifier_like, load_backbone


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


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    import shutil

    tiny_classifier("bert").save_pretrained(tmp_path / "bert")
    tiny_classifier("roberta").save_pretrained(tmp_path / "roberta")
    shutil.copy(tmp_path / "roberta" / "model.safetensors", tmp_path / "bert" / "model.safetensors")
    for head in (False, True):
        with pytest.raises(ValueError, match=r"do not fit its config.json \(bert\): 3\d tensor"):
            load_model(tmp_path / "bert", head=head)
    model, _ = load_model(tmp_path / "roberta")  # a classifier as a base: its head is unused
    assert type(model).__name__ == "RobertaModel"


def test_max_tokens_of_each_family_and_token_limit():
    from tasklift.models import max_tokens, token_limit

    bert, roberta = tiny_classifier("bert"), tiny_classifier("roberta")
    gpt2 = tf.GPT2Model(tf.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_head=4))
    assert (max_tokens(bert), max_tokens(roberta), max_tokens(gpt2)) == (64, 68, 16)
    assert max_tokens(tiny_classifier("vit")) is None  # images: nothing to truncate
    assert token_limit(None, bert) == 64 and token_limit(None, tiny_classifier("vit")) == 128
    assert token_limit(68, roberta) == 68
    with pytest.raises(ValueError, match="more than the 68 tokens"):
        token_limit(69, roberta)
    with pytest.raises(ValueError, match="must be at least 1"):
        token_limit(0, bert)


def test_paths_say_what_is_wrong_with_them(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(FileNotFoundError, match="symlink loop"):
        load_model(tmp_path / "loop1")
    tiny_classifier("bert").bert.save_pretrained(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="is a file; pass the checkpoint folder"):
        load_model(tmp_path / "base" / "config.json")
    with pytest.raises(ValueError, match="it looks like you swapped base and fine-tuned"):
        label_names(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="no folder, packaged model or cached hub model"):
        load_model("no-such-model-name")


def test_encoding_without_a_processor_points_at_processor():
    from tasklift.models import encode

    with pytest.raises(ValueError, match="processor="):
        encode(["some text"], None)


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_registers"])
def test_dinov2s_two_token_head_ends_a_task_matrix(kind):
    """HF's DINOv2 classifier reads [CLS] joined to the patch tokens' mean (2 x hidden), each
    after the final norm: pool 'cls+mean' reads exactly that, so the fine-tuned model through
    tasklift's path gives HF's logits, a task matrix on itself recovers them, and a [CLS]-pooled
    base maps into the 2 x wide head."""
    from tasklift import FineTuned, HeadOnly, MultiTaskModel, TaskMatrix

    ft = tiny_classifier(kind)
    pixels = tiny_images(100)
    with torch.no_grad():
        want = ft(pixel_values=pixels).logits.numpy()
    got = FineTuned(ft, device="cpu").fit().decision_function(pixels)  # pools where it reads
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="pooled 'cls' .* pass pool='cls\\+mean'"):
        HeadOnly(ft, ft, device="cpu").fit()
    head = HeadOnly(ft, ft, pool="cls+mean", device="cpu").fit()
    np.testing.assert_allclose(head.decision_function(pixels), want, atol=1e-5)
    # normed tokens leave X one exact null direction (the two halves' LayerNorm constraints):
    # W is not unique there, its predictions are (ridge / the gram solver drop that direction)
    tm = TaskMatrix(ft, ft, layer=2, pool="cls+mean", solver="gram", device="cpu").fit(pixels)
    np.testing.assert_allclose(tm.decision_function(pixels), want, atol=1e-4)
    base = nudged(ft)
    cls = TaskMatrix(base, ft, layer=1, device="cpu").fit(pixels)
    assert cls.maps_[1].coef_.shape == (64, 32) and cls.predict(pixels[:5]).shape == (5,)
    with pytest.raises(ValueError, match="norm='finetuned' cannot apply; use norm='base'"):
        HeadOnly(base, ft, pool="cls+mean", norm="finetuned", device="cpu").fit()
    both = TaskMatrix(base, ft, layer=1, pool="cls+mean", device="cpu").fit(pixels)
    with pytest.raises(ValueError, match=r"pool the base differently \(\['cls', 'cls\+mean'\]"):
        MultiTaskModel({"a": cls.model(), "b": both.model()})


def test_a_cnns_feature_maps_are_averaged_whatever_the_pool():
    from tasklift.extract import embed, pooled_width
    from test_convnet import tiny_convnet

    cnn = tiny_convnet()
    x = embed(cnn, torch.randn(3, 3, 32, 32), layers=[2], pool="cls+mean")[2]
    assert pooled_width(cnn, 2, "cls+mean") == x.shape[1] == 12


def test_fine_tuning_dinov2_with_its_head_frozen_trains_only_the_head():
    from tasklift.finetune import _train_only

    model = tiny_classifier("dinov2")
    _train_only(model, head=True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "classifier.weight",
        "classifier.bias",
    ]


def test_a_head_behind_a_pooling_tasklift_does_not_reproduce_is_refused_by_name():
    """BEiT's classifier reads a layernorm of the patch tokens' mean: reading token 0 instead
    would give other logits without a word, so the head is refused in one line."""
    from tasklift.models import Head

    config = tf.BeitConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=16, patch_size=8, num_labels=3, use_mean_pooling=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="reads BeitPooler, a pooling tasklift does not"):
        Head(tf.BeitForImageClassification(config))
