"""BiCo on models whose spaces are exact (semi-)orthogonal images of each other."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_classifier
from tasklift.maps import procrustes
from tasklift.taskvector import TaskVector
from tasklift.transfer import bico_transport, calibrate, match_layers

D_IN, HID, OUT = 6, 5, 8


def orth(rows, cols, seed):
    """A (rows, cols) matrix with orthonormal columns (rows >= cols)."""
    q, _ = torch.linalg.qr(
        torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q.float()


def mlp(w0, w1, b1, w2, b2):
    """Linear layers only: an input adapter, then hidden and output layers."""
    net = nn.Sequential(
        nn.Linear(w0.shape[1], w0.shape[0], bias=False),
        nn.Linear(w1.shape[1], w1.shape[0]),
        nn.Linear(w2.shape[1], w2.shape[0]),
    )
    with torch.no_grad():
        for layer, w in zip(net, (w0, w1, w2), strict=True):
            layer.weight.copy_(w)
        net[1].bias.copy_(b1)
        net[2].bias.copy_(b2)
    return net


def pair(hid_b):
    """A, A fine-tuned, and B = A with input rotated by Q0, hidden embedded by E (HID -> hid_b),
    output rotated by Q2; returns the maps too."""
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(HID, D_IN, generator=g), torch.randn(HID, generator=g)
    w2, b2 = torch.randn(OUT, HID, generator=g), torch.randn(OUT, generator=g)
    d = [0.1 * torch.randn(*t.shape, generator=g) for t in (w1, b1, w2, b2)]
    q0, e, q2 = orth(D_IN, D_IN, 1), orth(hid_b, HID, 2), orth(OUT, OUT, 3)
    a = mlp(torch.eye(D_IN), w1, b1, w2, b2)
    a_ft = mlp(torch.eye(D_IN), w1 + d[0], b1 + d[1], w2 + d[2], b2 + d[3])
    b = mlp(q0, e @ w1 @ q0.T, e @ b1, q2 @ w2 @ e.T, q2 @ b2)
    b_ft_expected = mlp(
        q0, e @ (w1 + d[0]) @ q0.T, e @ (b1 + d[1]), q2 @ (w2 + d[2]) @ e.T, q2 @ (b2 + d[3])
    )
    return a, a_ft, b, b_ft_expected, q2


@pytest.mark.parametrize("hid_b", [HID, HID + 3], ids=["rotation", "wider"])
def test_bico_recovers_the_transported_task_vector_exactly(hid_b):
    a, a_ft, b, b_ft_expected, q2 = pair(hid_b)
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(64, D_IN, generator=g), torch.randn(64, OUT, generator=g)) for _ in range(3)
    ]

    def loss(model, batch):  # per-sample targets, given to B in B's output coordinates
        x, t = batch
        t = t if model is a else t @ q2.T
        return 0.5 * ((model(x) - t) ** 2).sum()

    pairs = match_layers(a, b)
    assert pairs == {"0": "0", "1": "1", "2": "2"}
    stats = calibrate(a, b, pairs, batches, loss)
    tv_b = bico_transport(
        TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict()), pairs, stats
    )
    expected = TaskVector.from_state_dicts(b.state_dict(), b_ft_expected.state_dict())
    for k, v in expected.deltas.items():
        torch.testing.assert_close(tv_b.deltas[k], v, atol=1e-5, rtol=0)
    x = torch.randn(10, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(tv_b.apply_to(b)(x), a_ft(x) @ q2.T, atol=1e-5, rtol=0)
    for s_in, s_out in stats.values():  # the maps BiCo used are (semi-)orthogonal
        for r in (procrustes(s_in.xy), procrustes(s_out.xy)):
            small = r.T @ r if r.shape[0] >= r.shape[1] else r @ r.T
            np.testing.assert_allclose(small, np.eye(len(small)), atol=1e-10)


def test_match_layers_maps_depth_proportionally():
    a, b = tiny_classifier("bert"), tiny_classifier("bert")
    pairs = match_layers(a, b)
    assert (
        pairs["bert.encoder.layer.1.attention.self.query"]
        == "bert.encoder.layer.1.attention.self.query"
    )
    import transformers as tf

    deep = tf.BertForSequenceClassification(
        tf.BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=5,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )
    pairs = match_layers(a, deep)  # 2 blocks onto 5: 0 -> 0, 1 -> 4
    assert pairs["bert.encoder.layer.1.output.dense"] == "bert.encoder.layer.4.output.dense"
    assert pairs["classifier"] == "classifier"


def test_bico_on_a_transformer_runs_and_errors_are_clear():
    a, b = tiny_classifier("bert", seed=0), tiny_classifier("bert", seed=1)
    ids = torch.randint(5, 50, (8, 7))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 3, (8,)),
    }
    pairs = match_layers(a, b)
    stats = calibrate(a, b, pairs, [batch], lambda m, bt: m(**bt).loss, token="mean")
    a_ft = tiny_classifier("bert", seed=0)
    with torch.no_grad():
        for p in a_ft.parameters():
            p.add_(0.01)
    tv_b = bico_transport(
        TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict()), pairs, stats
    )
    assert set(tv_b.deltas) >= {f"{n}.weight" for n in pairs.values()}
    tv_b.apply_to(b)  # shapes fit B
    with pytest.raises(KeyError, match="no layer"):
        calibrate(a, b, {"bert.nope": "bert.nope"}, [batch], lambda m, bt: m(**bt).loss)
    with pytest.raises(ValueError, match="token alignment"):
        calibrate(a, b, pairs, [batch], lambda m, bt: m(**bt).loss, token="max")
    with pytest.raises(ValueError, match="token counts differ"):
        ids2 = torch.randint(5, 50, (8, 9))
        calibrate(
            a,
            b,
            pairs,
            [(batch, dict(batch, input_ids=ids2, attention_mask=torch.ones_like(ids2)))],
            lambda m, bt: m(**bt[0 if m is a else 1]).loss,
            token="all",
        )
