"""tasklift's EfficientNet: TF 'same' padding, HF save/load, layers for task matrices, training."""

import numpy as np
import torch
import torch.nn.functional as F

from tasklift.convnet import ConvNetConfig, ConvNetForImageClassification, SameConv2d
from tasklift.extract import embed
from tasklift.finetune import finetune
from tasklift.loading import load_model
from tasklift.models import Head, blocks, final_norm, layer_width
from tasklift.taskmatrix import TaskMatrix

STAGES = [["ds", 1, 3, 1, 1, 8], ["ir", 1, 3, 2, 2, 12], ["ir", 2, 5, 2, 2, 16]]


def tiny_convnet(seed: int = 0, num_labels: int = 3) -> ConvNetForImageClassification:
    torch.manual_seed(seed)
    cfg = ConvNetConfig(
        stages=STAGES, stem_size=8, num_features=24, image_size=16, dropout=0.0,
        num_labels=num_labels,
    )  # fmt: skip
    model = ConvNetForImageClassification(cfg).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_same_padding_is_tensorflows():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    conv = SameConv2d(3, 4, 3, stride=2, padding=0, bias=False)
    # TF: out = ceil(8/2) = 4; total pad 1, all of it after (bottom/right)
    want = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), want)
    conv1 = SameConv2d(3, 4, 5, stride=1, padding=0, bias=False)
    assert torch.allclose(conv1(x), F.conv2d(x, conv1.weight, padding=2), atol=1e-6)


def test_save_load_roundtrip_through_auto_classes(tmp_path):
    model = tiny_convnet()
    model.save_pretrained(tmp_path / "cnn")
    loaded, processor = load_model(tmp_path / "cnn", head=True, device="cpu")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, loaded(pixel_values=x).logits)
    base, _ = load_model(tmp_path / "cnn", device="cpu")  # the backbone alone (AutoModel)
    assert type(base).__name__ == "ConvNetModel" and processor is None


def test_layers_are_stem_stages_and_head_conv_pooled():
    model = tiny_convnet()
    assert len(blocks(model)) == len(STAGES) + 1 and final_norm(model) is None
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    emb = embed(model, x, layers="all")
    widths = [8, 8, 12, 16, 24]
    assert [emb[i].shape for i in range(5)] == [(5, w) for w in widths]
    assert [layer_width(model, i) for i in range(5)] == widths
    with torch.no_grad():  # the last layer is exactly the classifier's input
        feats = model.convnet(pixel_values=torch.from_numpy(x)).pooler_output
        logits = model(pixel_values=torch.from_numpy(x)).logits
    assert torch.allclose(torch.as_tensor(emb[4]), feats, atol=1e-6)
    assert torch.allclose(Head(model)(feats), logits, atol=1e-6)


def test_task_matrix_on_its_own_backbone_reproduces_the_classifier():
    ft = tiny_convnet(seed=1)
    x = np.random.default_rng(1).normal(size=(60, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        pred = ft(pixel_values=torch.from_numpy(x)).logits.argmax(-1).numpy()
    tm = TaskMatrix(ft.convnet, ft, layer=4, alpha=0.0, device="cpu").fit(x)
    feats = embed(ft, x, layers=[4])[4].double().numpy()
    assert np.allclose(tm.maps_[4].transform(feats), feats, atol=1e-5)  # X = Y: a perfect fit
    assert np.array_equal(tm.predict(x), pred)
    mid = TaskMatrix(ft.convnet, ft, layer=2, device="cpu").fit(x)  # 12 channels -> 24 features
    assert mid.score(x, pred) > 0.3


def test_finetune_lowers_the_loss():
    model = tiny_convnet()
    g = np.random.default_rng(0)
    x = g.normal(size=(48, 3, 16, 16)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > 0).astype(np.int64)
    losses = finetune(model, x, y, epochs=6, lr=3e-3, batch_size=16)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_finetuning_the_head_alone_leaves_the_frozen_backbone_as_it_was():
    """A frozen backbone keeps its features while the head trains (the frozen-head recipe):
    its BatchNorm running statistics are not updated by the head's training batches."""
    model = tiny_convnet()
    x = np.random.default_rng(0).normal(size=(48, 3, 16, 16)).astype(np.float32)
    y = np.arange(48) % 3
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    head = {id(p) for p in Head(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    finetune(model, x, y, epochs=2, lr=3e-3, batch_size=16)
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
