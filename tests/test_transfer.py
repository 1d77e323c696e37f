"""BiCo and its baselines on models whose spaces are exact (semi-)orthogonal or permuted images."""

import json
import re

import numpy as np
import pytest
import torch
import transformers as tf
from torch import nn

from conftest import nudged, permuted, tiny_classifier
from tasklift.solvers import procrustes
from tasklift.stats import GramStats
from tasklift.taskvector import TaskVector
from tasklift.transfer import (
    METHODS,
    Transfer,
    calibrate,
    get_method,
    gradient_sign_mask,
    match_modules,
    solve_maps,
    transport,
)

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


def mlp_pair(hid_b):
    """A, A fine-tuned, and B = A with input rotated by Q0, hidden embedded by E (HID -> hid_b),
    output rotated by Q2; B fine-tuned as expected, and Q2."""
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(HID, D_IN, generator=g), torch.randn(HID, generator=g)
    w2, b2 = torch.randn(OUT, HID, generator=g), torch.randn(OUT, generator=g)
    d = [0.1 * torch.randn(*t.shape, generator=g) for t in (w1, b1, w2, b2)]
    q0, e, q2 = orth(D_IN, D_IN, 1), orth(hid_b, HID, 2), orth(OUT, OUT, 3)
    a = mlp(torch.eye(D_IN), w1, b1, w2, b2)
    a_ft = mlp(torch.eye(D_IN), w1 + d[0], b1 + d[1], w2 + d[2], b2 + d[3])
    b = mlp(q0, e @ w1 @ q0.T, e @ b1, q2 @ w2 @ e.T, q2 @ b2)
    b_ft = mlp(
        q0, e @ (w1 + d[0]) @ q0.T, e @ (b1 + d[1]), q2 @ (w2 + d[2]) @ e.T, q2 @ (b2 + d[3])
    )
    return a, a_ft, b, b_ft, q2


@pytest.mark.parametrize("hid_b", [HID, HID + 3], ids=["rotation", "wider"])
def test_bico_recovers_the_transported_task_vector_exactly(hid_b):
    a, a_ft, b, b_ft, q2 = mlp_pair(hid_b)
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(64, D_IN, generator=g), torch.randn(64, OUT, generator=g)) for _ in range(3)
    ]

    def loss(model, batch):  # per-sample targets, given to B in B's output coordinates
        x, t = batch
        t = t if model is a else t @ q2.T
        return 0.5 * ((model(x) - t) ** 2).sum()

    pairs = match_modules(a, b)
    assert pairs == {"0": "0", "1": "1", "2": "2"}
    maps = solve_maps(a, b, pairs, calibrate(a, b, pairs, batches, loss), "bico")
    for r_in, r_out in maps.values():  # the maps BiCo used are (semi-)orthogonal
        for r in (r_in, r_out):
            small = r.T @ r if r.shape[0] >= r.shape[1] else r @ r.T
            torch.testing.assert_close(small, torch.eye(len(small)), atol=1e-5, rtol=0)
    tv_b = transport(
        TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict()), a, b, pairs, maps
    )
    expected = TaskVector.from_state_dicts(b.state_dict(), b_ft.state_dict())
    assert tv_b.deltas.keys() == expected.deltas.keys()
    for k, v in expected.deltas.items():
        torch.testing.assert_close(tv_b.deltas[k], v, atol=1e-5, rtol=0)
    x = torch.randn(10, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(tv_b.apply_to(b)(x), a_ft(x) @ q2.T, atol=1e-5, rtol=0)


def gpt2_classifier(seed=0):
    torch.manual_seed(seed)
    cfg = tf.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, num_labels=3,
        pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return tf.GPT2ForSequenceClassification(cfg).eval()


def text_batches(n_batches=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        ids = torch.randint(1, 50, (size, 8), generator=g)
        yield {"input_ids": ids, "labels": torch.randint(0, 3, (size,), generator=g)}


def trained_like(model):
    """Base weights moved off their initialisation (LayerNorm shifts, biases), as when trained."""
    return nudged(model, seed=3, scale=0.2)


@pytest.mark.parametrize("method", ["bico", "permutation"])
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_bico_and_rebasin_undo_a_permuted_copy(kind, method):
    """B is A with residual stream, heads and units permuted (GPT-2: fused q|k|v, Conv1D): τ_B =
    P(τ_A) is recovered exactly, norms and embeddings included, and B + τ_B computes A_ft. B's
    activations are A's bit for bit, so directions far below float32 round-off still inform:
    tie_break=1e-9 keeps them (the default 1e-3, right for a real pair, maps them to zero)."""
    a = trained_like(tiny_classifier("bert") if kind == "bert" else gpt2_classifier())
    a_ft = nudged(a)
    b, b_ft = permuted(a, kind), permuted(a_ft, kind)
    pairs = match_modules(a, b)
    loss = lambda model, batch: model(**batch).loss  # noqa: E731
    # 160 inputs: the last block's MLP sees a gradient at one token per input, 128 units wide
    cov = calibrate(a, b, pairs, text_batches(10), loss, signals=get_method(method).signals)
    tv_b = transport(
        TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict()),
        a,
        b,
        pairs,
        solve_maps(a, b, pairs, cov, method, tie_break=1e-9),
    )
    expected = TaskVector.from_state_dicts(b.state_dict(), b_ft.state_dict())
    assert tv_b.deltas.keys() == expected.deltas.keys()  # every parameter has moved
    for k, v in expected.deltas.items():
        torch.testing.assert_close(tv_b.deltas[k], v, atol=1e-4, rtol=0, msg=k)
    ids = next(text_batches(seed=9))["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            tv_b.apply_to(b)(input_ids=ids).logits, a_ft(input_ids=ids).logits, atol=1e-4, rtol=0
        )


def test_fused_qkv_is_aligned_projection_by_projection():
    """The output map of a fused q|k|v layer is block-diagonal: q only with q, k with k, v with v,
    each block orthogonal, also when the widths differ."""
    a, b = nn.Module(), nn.Module()
    a.c_attn, b.c_attn = nn.Linear(4, 12), nn.Linear(4, 18)
    g = np.random.default_rng(0)
    stats = {
        ("c_attn", "input"): GramStats(gram=False).update(np.eye(4), np.eye(4)),
        ("c_attn", "grad_output"): GramStats(gram=False).update(
            g.normal(size=(30, 12)), g.normal(size=(30, 18))
        ),
    }
    _, r_out = solve_maps(a, b, {"c_attn": "c_attn"}, stats, "bico")["c_attn"]
    for i in range(3):
        for j in range(3):
            block = r_out[4 * i : 4 * i + 4, 6 * j : 6 * j + 6]
            if i == j:
                torch.testing.assert_close(block @ block.T, torch.eye(4), atol=1e-5, rtol=0)
            else:
                assert block.abs().max() == 0


def deeper_bert(layers):
    cfg = tiny_classifier("bert").config
    cfg = tf.BertConfig(**{**cfg.to_dict(), "num_hidden_layers": layers})
    return tf.BertForSequenceClassification(cfg).eval()


def test_match_modules_maps_depth_proportionally_or_by_a_given_map():
    a = tiny_classifier("bert")
    pairs = match_modules(a, tiny_classifier("bert", seed=1))
    assert pairs["bert.encoder.layer.1.attention.self.query"] == (
        "bert.encoder.layer.1.attention.self.query"
    )
    assert pairs["bert.embeddings.LayerNorm"] == "bert.embeddings.LayerNorm"
    deep = deeper_bert(5)
    pairs = match_modules(a, deep)  # 5 target blocks take 2 source blocks: 0,0,0|1,1 by position
    src = [
        pairs[f"bert.encoder.layer.{j}.output.dense"][len("bert.encoder.layer.")] for j in range(5)
    ]
    assert src == ["0", "0", "0", "1", "1"]  # round(j/4): 0, 0.25, 0.5, 0.75, 1
    pairs = match_modules(a, deep, block_map={0: 0, 4: 1})
    assert "bert.encoder.layer.2.output.dense" not in pairs
    assert pairs["bert.encoder.layer.4.output.dense"] == "bert.encoder.layer.1.output.dense"


def test_naive_and_gradfix_move_equal_shapes_only_and_gradfix_keeps_agreeing_signs():
    a, b = tiny_classifier("bert"), tiny_classifier("bert", seed=1)
    tv = TaskVector.from_state_dicts(a.state_dict(), nudged(a).state_dict())
    pairs = match_modules(a, b)
    naive = transport(tv, a, b, pairs, solve_maps(a, b, pairs, None, "naive"))
    for k, v in naive.deltas.items():
        torch.testing.assert_close(v, tv.deltas[k])
    from tasklift.transfer import gradient_sign_mask

    loss = lambda model, batch: model(**batch).loss  # noqa: E731
    fixed = gradient_sign_mask(naive, b, text_batches(), loss, mode="mean")
    b.zero_grad()
    sum(loss(b, bt) for bt in text_batches()).backward()
    g = b.bert.encoder.layer[0].intermediate.dense.weight.grad
    v = fixed.deltas["bert.encoder.layer.0.intermediate.dense.weight"]
    assert ((v * -g)[v != 0] > 0).all() and 0 < (v != 0).float().mean() < 1
    wide = tf.BertForSequenceClassification(
        tf.BertConfig(**{**a.config.to_dict(), "hidden_size": 48})
    )
    with pytest.raises(ValueError, match="no delta"):  # nothing has A's shapes
        transport(
            tv,
            a,
            wide,
            match_modules(a, wide),
            solve_maps(a, wide, match_modules(a, wide), None, "naive"),
        )


def test_calibration_errors_name_the_bad_input():
    a, b = tiny_classifier("bert"), tiny_classifier("bert", seed=1)
    loss = lambda model, batch: model(**batch).loss  # noqa: E731
    pairs = match_modules(a, b)
    with pytest.raises(KeyError, match="no module 'bert.nope'"):
        calibrate(a, b, {"bert.nope": "bert.nope"}, text_batches(1), loss)
    with pytest.raises(ValueError, match="token alignment"):
        calibrate(a, b, pairs, text_batches(1), loss, token="max")
    with pytest.raises(ValueError, match="calibration signal"):
        calibrate(a, b, pairs, text_batches(1), loss, signals=("input", "weights"))
    assert get_method("bico").signals == ["grad_output", "input", "output"]
    assert get_method("naive").signals == [] and "gradfix" in METHODS
    with pytest.raises(ValueError, match="unknown transfer method"):
        solve_maps(a, b, pairs, None, "magic")
    short = {"input_ids": torch.randint(1, 50, (4, 7)), "labels": torch.zeros(4, dtype=torch.long)}
    long = dict(short, input_ids=torch.randint(1, 50, (4, 9)))
    with pytest.raises(ValueError, match=r"token='cls', 'mean' or \(text\) 'word'"):
        calibrate(a, b, pairs, [(short, long)], lambda m, bt: m(**bt[m is b]).loss)
    deep = deeper_bert(3)
    cov = calibrate(
        a,
        deep,
        match_modules(a, deep),
        [(short, long)],
        lambda m, bt: m(**bt[m is deep]).loss,
        token="mean",
    )
    assert cov[("bert.encoder.layer.2.output.dense", "grad_output")].xy.shape == (32, 32)


def test_patch_grids_of_another_size_are_resampled():
    from tasklift.transfer import align_tokens

    a, b = torch.randn(2, 1 + 16, 5), torch.randn(2, 1 + 64, 7)  # 4x4 vs 8x8 patches + [CLS]
    xa, xb = align_tokens(a, b, "all", "x")
    assert xa.shape == (34, 5) and xb.shape == (34, 7)
    torch.testing.assert_close(xb[0], b[0, 0])  # the class token stays paired with itself
    with pytest.raises(ValueError, match="'word'"):  # text: 17 and 65 tokens are no grids
        align_tokens(a, b, "all", "x", grids=False)


def test_transfer_estimator_carries_the_head_and_task_onto_a_permuted_model(tmp_path):
    """End to end: A's base, A fine-tuned, and B = permuted A as a bare backbone; the result
    predicts exactly like A_ft, is saved as a loadable checkpoint, and α is chosen on validation."""
    a = trained_like(tiny_classifier("bert"))
    a_ft = nudged(a)
    b = permuted(a, "bert").bert  # a backbone: the head comes from A_ft
    X = {"input_ids": torch.randint(1, 50, (48, 8), generator=torch.Generator().manual_seed(1))}
    y = a_ft(**X).logits.argmax(-1).detach().numpy()
    t = Transfer(
        a,
        a_ft,
        b,
        method="bico",
        batch_size=16,
        scale_search="grid",
        tie_break=1e-9,
        stats_dtype="float64",
    )  # exact: float64 statistics, every direction
    t.fit(X, y, X_val=X, y_val=y)  # a permuted copy: tie_break as in the test above
    assert t.val_scores_[1.0] == 1.0 and t.val_scores_[0.0] < 1.0 and t.scale_ == 1.0
    np.testing.assert_allclose(t.decision_function(X), a_ft(**X).logits.detach(), atol=1e-4)
    assert t.score(X, y) == 1.0 and t.moved_params_ == t.source_params_
    assert list(t.classes_) == [0, 1, 2] and (t.predict(X) == y).all()
    t.save(tmp_path / "out")
    info = json.loads((tmp_path / "out" / "tasklift_transfer.json").read_text())
    assert info["params"]["method"] == "bico" and info["scale"] == 1.0
    assert info["timings"] == t.timings_ and info["params"]["scale_search"] == "grid"
    assert info["open_directions"] == t.open_directions_ and 0 <= t.open_directions_[0] < 10
    assert info["params"]["scales"] == list(t.scales) and info["params"]["tie_break"] == 1e-9
    again = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(again(**X).logits.detach(), a_ft(**X).logits.detach(), atol=1e-4)
    back = Transfer.load(tmp_path / "out")  # one call: model, τ_B, settings, scores
    np.testing.assert_array_equal(back.decision_function(X), t.decision_function(X))
    np.testing.assert_allclose(
        back.decision_function(X, scale=0.0), t.decision_function(X, scale=0.0), atol=1e-5
    )
    assert back.val_scores_ == t.val_scores_ and back.get_params()["method"] == "bico"
    assert back.task_vector_.deltas.keys() == t.task_vector_.deltas.keys()
    with pytest.raises(ValueError, match="unknown transfer method"):
        Transfer(a, a_ft, b, method="magic").fit(X, y)
    with pytest.raises(ValueError, match="calibration set is empty"):
        Transfer(a, a_ft, b).fit({"input_ids": torch.zeros(0, 8, dtype=torch.long)})
    from tasklift.transfer import transport_head

    with pytest.raises(ValueError, match="head layout"):
        transport_head(a_ft, tiny_classifier("roberta"), torch.eye(32), ["classifier"])
    with pytest.raises(ValueError, match="expected a head"):
        Transfer(a, a_ft.bert, b).fit(X, y)  # A_ft must be a classifier


# -- issue 11: tie-break in the null space only, centring, GradFix modes, tower discovery -------
def _orth(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


def _stats(xa: np.ndarray, xb: np.ndarray) -> GramStats:
    return GramStats(gram=False).update(torch.from_numpy(xa), torch.from_numpy(xb))


def _one_layer_maps(signals: dict, **kw) -> np.ndarray:
    """R_out of a single 4 -> 4 linear layer under BiCo, from hand-made calibration rows."""
    a, b = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))
    stats = {("0", sig): _stats(*rows) for sig, rows in signals.items()}
    return solve_maps(a, b, {"0": "0"}, stats, "bico", **kw)["0"][1].double().numpy()


def test_tie_break_does_not_touch_directions_the_gradient_determines():
    rng = np.random.default_rng(0)
    r_grad, r_act = _orth(4, 1), _orth(4, 2)
    ga = rng.normal(size=(64, 4)) * [1, 1, 1, 1e-2]  # σ 1e-4 of the largest: above 1e-6
    xa = rng.normal(size=(64, 4))
    r = _one_layer_maps(
        {"input": (xa, xa), "grad_output": (ga, ga @ r_grad), "output": (xa, xa @ r_act)},
        tie_break=1e-6,
    )
    # the gradient alone decides: plain Procrustes of its cross-covariance, not bent by outputs
    want, _ = procrustes(ga.T @ (ga @ r_grad))
    np.testing.assert_allclose(r, want, atol=1e-6)


def test_tie_break_settles_exactly_the_null_space_of_the_gradient():
    rng = np.random.default_rng(0)
    true = _orth(4, 3)
    ga = np.zeros((64, 4))
    ga[:, :2] = rng.normal(size=(64, 2))  # gradients see 2 of the 4 directions
    xa = rng.normal(size=(64, 4))
    r = _one_layer_maps(
        {"input": (xa, xa), "grad_output": (ga, ga @ true), "output": (xa, xa @ true)}
    )
    np.testing.assert_allclose(r, true, atol=1e-6)  # the outputs fixed the 2 unseen directions
    np.testing.assert_allclose(r.T @ r, np.eye(4), atol=1e-6)


def test_centring_ignores_offsets_that_do_not_transfer():
    rng = np.random.default_rng(0)
    true = _orth(4, 4)
    z = rng.normal(size=(256, 4))
    xa, xb = z + [8, 0, 0, 0], z @ true + [0, 0, 0, -8]  # means unrelated to the rotation
    signals = {"input": (xa, xb), "grad_output": (z, z @ true)}
    maps = {}
    for center in (False, True):
        a, b = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))
        stats = {("0", sig): _stats(*rows) for sig, rows in signals.items()}
        maps[center] = solve_maps(a, b, {"0": "0"}, stats, "bico", center=center)["0"][0]
    np.testing.assert_allclose(maps[True].double().numpy(), true, atol=1e-6)
    assert np.abs(maps[False].double().numpy() - true).max() > 0.1


def test_zeroed_counts_the_directions_each_map_sends_to_zero():
    """A partial isometry's rank is ‖R‖²_F: an orthogonal map zeroes none, a rank-2 map of 4x6
    zeroes 2 of its 4, identities (None) are not maps; on a real fit, a stricter cutoff zeroes
    more of the maps' directions than a looser one."""
    from tasklift.transfer import zeroed

    part = torch.from_numpy(procrustes(np.diag([1.0, 1.0, 0, 0]) @ np.eye(4, 6))[0])
    tally = [0, 0]
    maps = [("a", (torch.eye(4), None)), ("b", (part, torch.eye(3)))]
    assert list(zeroed(maps, tally)) == maps and tally == [2, 11]
    a = trained_like(tiny_classifier("bert"))
    X = {"input_ids": torch.randint(1, 50, (48, 8), generator=torch.Generator().manual_seed(1))}
    kw = dict(scales=(1.0,), batch_size=16)
    loose, strict = (Transfer(a, nudged(a), permuted(a, "bert").bert, tie_break=tb, **kw).fit(X)
                     for tb in (1e-9, 1e-3))  # fmt: skip
    assert loose.open_directions_[1] == strict.open_directions_[1]
    assert loose.open_directions_[0] < strict.open_directions_[0]


def test_gradfix_majority_vote_differs_from_the_mean_gradient():
    target = nn.Linear(1, 1, bias=False)
    c = torch.tensor([-1.0, -1.0, 5.0])  # two small votes for +, one large gradient for -
    loss = lambda model, idx: (c[torch.as_tensor(idx)] * model.weight).sum()  # noqa: E731
    tv = TaskVector({"weight": torch.ones(1, 1)})
    majority = gradient_sign_mask(tv, target, [np.arange(3)], loss)
    mean = gradient_sign_mask(tv, target, [np.arange(3)], loss, mode="mean")
    assert majority.deltas["weight"].item() == 1.0 and mean.deltas["weight"].item() == 0.0
    assert "gradfix-mean" in METHODS and METHODS["gradfix"].post == "gradfix"


@pytest.mark.parametrize("mode", ["majority", "mean"])
def test_gradfix_gives_no_vote_to_a_gradient_at_round_off(mode):
    """An entry whose every gradient is 1e-9 of its parameter's largest (a BERT key bias's: zero
    but for float noise) is a tie and dropped; the entry with a real gradient is judged."""
    target = nn.Linear(2, 1, bias=False)
    c = torch.tensor([[-1.0, -1e-9]] * 3)  # −∇L = (1, 1e-9) for every example
    loss = lambda model, idx: (c[torch.as_tensor(idx)] * model.weight).sum()  # noqa: E731
    tv = TaskVector({"weight": torch.ones(1, 2)})
    kept = gradient_sign_mask(tv, target, [np.arange(3)], loss, mode=mode).deltas["weight"]
    assert kept.tolist() == [[1.0, 0.0]]


def test_backbone_of_a_siglip_style_tower_is_found_without_base_model_prefix():
    from tasklift.models import backbone, classifier_like

    cfg = tf.SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=16, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = tf.SiglipVisionModel(cfg).eval()
    cls = tf.SiglipForImageClassification(tf.SiglipConfig(vision_config=cfg.to_dict())).eval()
    assert backbone(cls) is cls.vision_model and backbone(encoder) is encoder
    moved = classifier_like(cls, backbone(encoder))  # was: "lacks 2 parameters", refused
    for k, v in encoder.state_dict().items():
        assert torch.equal(moved.vision_model.state_dict()[k], v), k


def as_mpnet(bert: tf.BertForSequenceClassification) -> tf.MPNetModel:
    """An MPNet computing exactly what `bert` computes (on inputs without padding or token id 1):
    weights copied role by role, BERT's token-type row folded into MPNet's positions, which
    start at 2, and no relative attention bias."""
    c = bert.config
    cfg = tf.MPNetConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings + 2, layer_norm_eps=c.layer_norm_eps,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    m = tf.MPNetModel(cfg, add_pooling_layer=False).eval()
    src, dst = bert.bert.state_dict(), {}
    names = {"self.query": "attn.q", "self.key": "attn.k", "self.value": "attn.v",
             "output.dense": "attn.o", "output.LayerNorm": "LayerNorm"}  # fmt: skip
    for k, v in src.items():
        if k.startswith("encoder."):
            for old, new in names.items():
                k = k.replace(f"attention.{old}", f"attention.{new}")
            dst[k] = v
        elif k.startswith("embeddings.") and "position" not in k and "token_type" not in k:
            dst[k] = v
    pos = m.embeddings.position_embeddings.weight.detach().clone()
    bert_emb = bert.bert.embeddings
    pos[2:] = (
        bert_emb.position_embeddings.weight[: len(pos) - 2]
        + bert_emb.token_type_embeddings.weight[0]
    )
    dst["embeddings.position_embeddings.weight"] = pos
    dst["encoder.relative_attention_bias.weight"] = torch.zeros_like(
        m.encoder.relative_attention_bias.weight
    )
    m.load_state_dict(dst, strict=False)
    return m


def test_bert_to_mpnet_is_paired_by_role_and_recovers_the_fine_tuned_function():
    """Across families (BERT -> MPNet: other module names, head layout and position offsets),
    B equal to A in function: BiCo pairs every block module by role and reproduces A_ft."""
    from tasklift.transfer.pairing import head_pair

    a = trained_like(tiny_classifier("bert"))
    a_ft = nudged(a)
    with torch.no_grad():  # position tables are not transferred (their offsets differ)
        a_ft.bert.embeddings.position_embeddings.weight.copy_(
            a.bert.embeddings.position_embeddings.weight
        )
        a_ft.bert.embeddings.token_type_embeddings.weight.copy_(
            a.bert.embeddings.token_type_embeddings.weight
        )
    b = as_mpnet(a)
    X = {"input_ids": torch.randint(2, 50, (48, 8), generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        want = a.bert(**X).last_hidden_state
        np.testing.assert_allclose(b(**X).last_hidden_state, want, atol=1e-5)  # the fixture
    pairs = match_modules(a, tf.MPNetForSequenceClassification(b.config))
    assert (
        pairs["mpnet.encoder.layer.1.attention.attn.q"]
        == "bert.encoder.layer.1.attention.self.query"
    )
    assert len(pairs) == 2 + 8 * 2  # embeddings + norm, 8 modules per block
    assert head_pair(a, tf.MPNetForSequenceClassification(b.config), ["classifier"]) == (
        ["bert.pooler.dense", "classifier"],
        ["classifier.dense", "classifier.out_proj"],
    )
    y = a_ft(**X).logits.argmax(-1).detach().numpy()
    t = Transfer(a, a_ft, b, method="bico", batch_size=16, tie_break=1e-9, stats_dtype="float64")
    t.fit(X, y)  # A's twin
    np.testing.assert_allclose(t.decision_function(X), a_ft(**X).logits.detach(), atol=1e-4)
    assert (t.moved_params_, t.source_params_) == (35, 35)  # position/type tables: unchanged


class _AttnNet(nn.Module):
    """A tiny classifier built on torch.nn.MultiheadAttention (q|k|v fused, out_proj functional)."""

    def __init__(self, d: int = 16, heads: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids, mask=None):
        x = self.emb(ids)
        a, _ = self.attn(x, x, x, key_padding_mask=mask)
        x = self.norm(x + a)
        return self.head((x + torch.relu(self.ff(x))).mean(1))


def _permuted_attn(net: _AttnNet, seed: int = 0) -> _AttnNet:
    """The same function with the residual stream and the heads permuted."""
    d, h = 16, 4
    g = torch.Generator().manual_seed(seed)
    r = torch.randperm(d, generator=g)
    hp = (torch.randperm(h, generator=g)[:, None] * (d // h) + torch.arange(d // h)).flatten()
    qkv = torch.cat([hp, hp + d, hp + 2 * d])
    s = {k: v.clone() for k, v in net.state_dict().items()}
    s["emb.weight"] = s["emb.weight"][:, r]
    s["attn.in_proj_weight"] = s["attn.in_proj_weight"][qkv][:, r]
    s["attn.in_proj_bias"] = s["attn.in_proj_bias"][qkv]
    s["attn.out_proj.weight"] = s["attn.out_proj.weight"][r][:, hp]
    s["attn.out_proj.bias"] = s["attn.out_proj.bias"][r]
    for k in ("norm.weight", "norm.bias", "ff.bias"):
        s[k] = s[k][r]
    s["ff.weight"] = s["ff.weight"][r][:, r]
    s["head.weight"] = s["head.weight"][:, r]
    out = _AttnNet().eval()
    out.load_state_dict(s)
    return out


def test_multihead_attention_is_split_into_q_k_v_and_its_out_proj_is_aligned():
    torch.manual_seed(0)
    a = _AttnNet().eval()
    a_ft = _AttnNet().eval()
    a_ft.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in a.state_dict().items()})
    b, b_ft = _permuted_attn(a), _permuted_attn(a_ft)
    g = torch.Generator().manual_seed(1)
    ids, y = torch.randint(0, 50, (64, 7), generator=g), torch.randint(0, 3, (64,), generator=g)
    mask = torch.zeros(64, 7, dtype=torch.bool)
    mask[::4, 5:] = True  # some padded rows: the unfused forward must mask like MHA
    with torch.no_grad():
        np.testing.assert_allclose(b(ids, mask), a(ids, mask), atol=1e-5)  # the fixture
    loss = lambda m, idx: nn.functional.cross_entropy(m(ids[idx], mask[idx]), y[idx])  # noqa: E731
    pairs = {n: n for n in ("emb", "attn", "attn.out_proj", "norm", "ff")}
    batches = [np.arange(i, i + 16) for i in range(0, 64, 16)]
    stats = calibrate(a, b, pairs, batches, loss, signals=get_method("bico").signals)
    assert ("attn", "grad_output") in stats and (
        "attn.out_proj",
        "input",
    ) in stats  # hooks saw them
    tv = TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict())
    tv = TaskVector({k: v for k, v in tv.deltas.items() if not k.startswith("head")})
    maps = solve_maps(a, b, pairs, stats, "bico", tie_break=1e-9)  # a permuted copy: see above
    moved = transport(tv, a, b, pairs, maps)
    want = TaskVector.from_state_dicts(b.state_dict(), b_ft.state_dict())
    # A's LayerNorm (weight 1, bias 0) outputs zero-mean rows: ff's input never has an all-ones
    # component, so its map is P but for that direction, which it maps to zero, and τ_B of ff's
    # weight is P(τ_A) without it; every other map has full rank and τ_B is P(τ_A) exactly
    ranks = {(n, side): (np.linalg.matrix_rank(r.numpy(), tol=1e-4), min(r.shape))
             for n, rs in maps.items()
             for side, r in zip("io", rs, strict=True) if r is not None}  # fmt: skip
    assert ranks.pop(("ff", "i")) == (15, 16) and all(r == w for r, w in ranks.values()), ranks
    ones = torch.full((16, 16), 1 / 16)
    want.deltas["ff.weight"] = want.deltas["ff.weight"] @ (torch.eye(16) - ones)
    for k, v in moved.deltas.items():
        torch.testing.assert_close(v, want.deltas[k], atol=1e-4, rtol=0, msg=k)
    assert "attn.in_proj_bias" in moved.deltas and "attn.out_proj.weight" in moved.deltas


def _piece_tokenizer():
    """A WordPiece tokenizer that splits every word of conftest.WORDS into 2-3 pieces."""
    pieces = ["al", "##pha", "be", "##ta", "gam", "##ma", "w", ",", "!"]
    pieces += [f"##{i}" for i in range(10)]  # "w17" -> w ##1 ##7
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]
    return tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def test_word_pairing_matches_words_across_tokenizers_and_drops_cut_words():
    from conftest import WORDS, tiny_tokenizer
    from tasklift.transfer.tokens import align_tokens, word_pooling

    ta, tb = tiny_tokenizer([*WORDS, ",", "!"]), _piece_tokenizer()
    tb.padding_side = "left"  # B's [CLS] of the shorter text is not at position 0
    texts = ["alpha beta, gamma!", "w1 alpha w17"]
    gen = torch.Generator().manual_seed(0)
    emb = {w: torch.randn(4, generator=gen) for w in [*WORDS, ",", "!", "[CLS]"]}
    M = torch.randn(4, 6, generator=gen)  # B's space: another basis

    def states(tok, basis):  # each token's state = its word's vector (pieces: the same vector)
        enc = tok(texts, padding=True, return_offsets_mapping=True)
        out = torch.zeros(len(texts), len(enc["input_ids"][0]), basis.shape[1])
        for i, text in enumerate(texts):
            words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\w+|[^\w\s]", text)]
            for t, (s, e) in enumerate(enc["offset_mapping"][i]):
                word = next((w for a, b, w in words if a <= s < b), None)
                if enc["input_ids"][i][t] == tok.cls_token_id:
                    out[i, t] = emb["[CLS]"] @ basis
                elif e > s and word is not None:
                    out[i, t] = emb[word] @ basis
        return out

    pools = word_pooling(texts, (ta, tb), 16)
    xa, xb = align_tokens(states(ta, torch.eye(4)), states(tb, M), "word", "test", pools)
    assert xa.shape == (1 + 5 + 1 + 3, 4) and xb.shape == (10, 6)  # [CLS] + words, per text
    torch.testing.assert_close(xa @ M, xb)
    # max_length 5 keeps "alpha beta ," in A but cuts B inside "beta": only alpha is paired
    pa, pb = word_pooling(texts[:1], (ta, tb), 5)
    assert pa.sum((1, 2)).item() == pb.sum((1, 2)).item() == 2.0
    np.testing.assert_array_equal(pb[0, 1, :3], [0.0, 0.5, 0.5])


def test_transfer_across_tokenizers_pairs_words(text_task, tmp_path):
    root = text_task
    b = tiny_classifier("bert", seed=5).bert
    b.save_pretrained(tmp_path / "b")
    _piece_tokenizer().save_pretrained(tmp_path / "b")
    texts = [line.split(",")[0] for line in (root / "data.csv").read_text().splitlines()[1:41]]
    kw = dict(source=root / "base", finetuned=root / "ft", target=tmp_path / "b", scales=[1.0])
    with pytest.raises(ValueError, match="'word'"):  # token counts differ: one to one cannot pair
        Transfer(**kw, token="all").fit(texts)
    t = Transfer(**kw, token="word").fit(texts)
    assert t.moved_params_ == t.source_params_ > 0
    assert np.isfinite(t.decision_function(texts[:5])).all()


@pytest.mark.parametrize("token", ["word", "mean", "cls"])
def test_mapped_outputs_give_captured_outputs_tau_under_every_token_pairing(
    token, text_task, tmp_path, monkeypatch
):
    """Word pooling, means and [CLS] combine rows with weights summing to 1, so a linear
    layer's outputs pair as its inputs do: τ_B from mapped output statistics is τ_B from
    captured ones (a tiny BERT -> BERT of another tokenizer)."""
    from tasklift.transfer import calibration

    root = text_task
    tiny_classifier("bert", seed=5).bert.save_pretrained(tmp_path / "b")
    _piece_tokenizer().save_pretrained(tmp_path / "b")
    texts = [line.split(",")[0] for line in (root / "data.csv").read_text().splitlines()[1:41]]
    kw = dict(source=root / "base", finetuned=root / "ft", target=tmp_path / "b", scales=[1.0],
              token=token, stats_dtype="float64")  # fmt: skip
    mapped = Transfer(**kw).fit(texts).task_vector_.deltas
    monkeypatch.setattr(calibration, "affine_of", lambda m: None)  # capture every output
    captured = Transfer(**kw).fit(texts).task_vector_.deltas
    top = max(float(v.abs().max()) for v in captured.values())
    assert mapped.keys() == captured.keys()
    for k, v in captured.items():
        torch.testing.assert_close(mapped[k], v, rtol=0, atol=1e-5 * top, msg=k)


def test_token_all_is_refused_where_padding_would_hide_tokenizers_that_split_apart(
    text_task, tmp_path, monkeypatch
):
    """B's tokenizer splits 'alpha' (al ##pha), A's does not; in a batch whose longest text has
    no 'alpha' both pad to the same length, so token='all' would pair unrelated tokens without
    an error. Transfer.fit refuses it before loading a model, counting the texts; `check`
    counts them and says token='word', which runs; tokenizers that split alike pass, unless
    they pad on different sides."""
    import tasklift.transfer.estimator as est
    from conftest import WORDS, tiny_tokenizer
    from tasklift.preflight import check_pair
    from tasklift.transfer.pairing import split_alike

    root = text_task
    tok_b = tiny_tokenizer(["al", "##pha", *WORDS[1:]])
    tiny_classifier("bert", seed=5).bert.save_pretrained(tmp_path / "b")
    tok_b.save_pretrained(tmp_path / "b")
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8"] + [f"alpha w{i} beta" for i in range(7)]
    kw = dict(source=root / "base", finetuned=root / "ft", target=tmp_path / "b", scales=[1.0])
    with monkeypatch.context() as m:  # without the check the fit runs: the case is silent
        m.setattr(est, "token_refusal", lambda *a, **k: None)
        assert Transfer(**kw, token="all").fit(texts).moved_params_ > 0
    with monkeypatch.context() as m:
        m.setattr(est, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ValueError, match="split 7 of 8 calibration texts differently"):
            Transfer(**kw, token="all").fit(texts)
    tok_a = tiny_tokenizer(WORDS)
    assert split_alike(texts, (tok_a, tiny_tokenizer(WORDS)), 16) == (8, None)
    a, b = tiny_classifier("bert", seed=3).bert, tiny_classifier("bert", seed=5).bert
    report = check_pair(a, b, tokenizers=(tok_a, tok_b), texts=texts)
    assert report["texts_split_alike"] == [1, 8] and report["token_pairing"] == "word"
    assert Transfer(**kw, token="word").fit(texts).moved_params_ > 0
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]  # splits as A's, pads left
    left = tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, padding_side="left")
    tiny_classifier("bert", seed=5).bert.save_pretrained(tmp_path / "left")
    left.save_pretrained(tmp_path / "left")
    with pytest.raises(ValueError, match="pads on the right and B's on the left"):
        Transfer(**{**kw, "target": tmp_path / "left"}, token="all").fit(texts)


def test_a_weight_moved_between_linear_and_conv1d_is_turned_round():
    """GPT-2's Conv1D stores (d_in, d_out), a Linear (d_out, d_in): Llama -> GPT-2 pairs o_proj
    with c_proj, and the delta must land transposed (dense or as factors), and back again."""
    from transformers.pytorch_utils import Conv1D

    from tasklift.taskvector import LowRank
    from tasklift.transfer.solve import _move

    lin, conv = nn.Linear(4, 6), Conv1D(6, 4)  # both map 4 -> 6
    d = torch.randn(6, 4)
    torch.testing.assert_close(_move(d, lin, conv, None, None, "weight"), d.T)
    torch.testing.assert_close(_move(d.T, conv, lin, None, None, "weight"), d)
    torch.testing.assert_close(_move(d.T, conv, conv, None, None, "weight"), d.T)
    low = LowRank(torch.randn(6, 2), torch.randn(2, 4))
    torch.testing.assert_close(_move(low, lin, conv, None, None, "weight").dense(), low.dense().T)


# -- issue 21: where the time goes, and a scale search of at most four evaluations ------------
def test_timings_never_overlap_and_count_a_generators_work(monkeypatch):
    from types import SimpleNamespace

    from tasklift.timing import Timings

    now = [0.0]
    monkeypatch.setattr("tasklift.timing.time", SimpleNamespace(perf_counter=lambda: now[0]))

    def work(seconds):
        now[0] += seconds

    def made():
        work(2)
        yield 1
        work(3)

    t = Timings()
    with t("outer"):
        work(1)
        with t("inner"):
            work(5)
        for _ in t.each(made(), "made"):
            work(0.5)
    assert t == {"outer": 1.5, "inner": 5.0, "made": 5.0}


def test_fit_records_every_phase_within_its_wall_time():
    import time

    a = trained_like(tiny_classifier("bert"))
    a_ft = nudged(a)
    b = permuted(a, "bert").bert
    X = {"input_ids": torch.randint(1, 50, (32, 8), generator=torch.Generator().manual_seed(1))}
    t = Transfer(a, a_ft, b, method="gradfix", batch_size=16).fit(X, X_val=X, y_val=[0] * 32)
    phases = {"load", "setup", "labels", "head", "calibrate", "statistics", "solve",
              "transport", "post", "scale search"}  # fmt: skip
    assert set(t.timings_) == phases  # GradFix's calibration: the head's forward passes alone
    t = Transfer(a, a_ft, b, method="bico", batch_size=16)
    start = time.perf_counter()
    t.fit(X, X_val=X, y_val=[0] * 32)
    wall = time.perf_counter() - start
    assert set(t.timings_) == phases
    assert all(v >= 0 for v in t.timings_.values()) and sum(t.timings_.values()) <= wall


def _unimodal(n: int, peak: int, seed: int) -> list[float]:
    """n strictly unimodal scores with their maximum at index `peak`."""
    rng = np.random.default_rng(seed)
    return [*np.sort(rng.random(peak)), 2.0, *np.sort(rng.random(n - peak - 1))[::-1]]


@pytest.mark.parametrize("n", range(1, 9))
def test_fibonacci_search_finds_the_grids_best_in_four_evaluations(n):
    """Exact on unimodal scores over up to 7 scales; on 8 (the default grid) at most one grid
    step off, and exact with a fifth evaluation."""
    from tasklift.transfer.scales import best_scale, search_scales

    grid = [0.25 * i for i in range(n)]
    for peak in range(n):
        for seed in range(20):
            v = dict(zip(grid, _unimodal(n, peak, seed), strict=True))
            got = search_scales(grid[::-1], v.__getitem__)  # any order: the grid is sorted
            assert len(got) <= 4 and all(got[s] == v[s] for s in got)
            off = abs(grid.index(best_scale(got)) - peak)
            assert off == 0 if n <= 7 else off <= 1
            assert best_scale(search_scales(grid, v.__getitem__, evals=5)) == grid[peak]
    flat = search_scales(grid, lambda s: 0.5)
    assert best_scale(flat) == (1.0 if n >= 5 else grid[-1])  # ties go towards scale 1


def test_choose_scale_searches_b_plus_scaled_task_vector(monkeypatch):
    """Through `Transfer`'s own scoring (monkeypatched to read the scale off B's one weight):
    the Fibonacci search picks the full grid's argmax on the report's 5-scale grid in at most
    four evaluations, and val_scores_ holds just the scales it evaluated."""
    from tasklift.transfer.scales import choose_scale

    b = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(b.weight)
    tv = TaskVector({"weight": torch.ones(1, 1)})  # B + s · τ_B has weight s
    grid = [0.0, 0.5, 1.0, 1.5, 2.0]
    for peak in grid:
        calls = []

        def score(model, X, y, peak=peak, calls=calls):
            calls.append(model.weight.item())
            return -abs(model.weight.item() - peak)

        monkeypatch.setattr(Transfer, "_score_model", lambda self, *a, s=score: s(*a))
        full = choose_scale(Transfer(scales=grid, scale_search="grid"), tv, b, [0], [0])
        assert full[0] == peak and len(calls) == 5
        calls.clear()
        best, scores = choose_scale(
            Transfer(scales=grid, scale_search="fibonacci"), tv, b, [0], [0]
        )
        assert best == peak and len(calls) == len(scores) <= 4 and set(calls) == set(scores)
        assert b.weight.item() == 0.0  # τ_B removed again
    assert choose_scale(Transfer(), tv, b, None, None) == (1.0, {})


def test_centred_statistics_are_float64_whatever_stats_dtype():
    """Centring subtracts the means' product from raw sums, which float32 sums cannot afford
    (0.7% off where means are 50x the spread): centred maps accumulate in float64, so
    stats_dtype does not change them."""
    a = trained_like(tiny_classifier("bert"))
    a_ft, b = nudged(a), tiny_classifier("bert", seed=3).bert
    X = {"input_ids": torch.randint(1, 50, (32, 8), generator=torch.Generator().manual_seed(1))}
    y = a_ft(**X).logits.argmax(-1).detach().numpy()
    taus = [
        Transfer(
            a, a_ft, b, method="bico", batch_size=16, center=True, stats_dtype=dtype, scales=(1.0,)
        )
        .fit(X, y)
        .task_vector_.deltas  # fmt: skip
        for dtype in ("float32", "float64")
    ]
    assert taus[0].keys() == taus[1].keys()
    assert all(torch.equal(taus[0][k], taus[1][k]) for k in taus[0])


def _affine_case(kind: str):
    """(A, B, pairs, loss, batches) of a tiny net whose paired modules are `kind`."""
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(5)
    batches = [np.arange(i, i + 16) for i in range(0, 48, 16)]
    if kind == "mha":  # fused q|k|v (InProj) and out_proj, torch's own linear subclass
        torch.manual_seed(1)
        a, b = _AttnNet().eval(), _AttnNet().eval()
        ids, y = torch.randint(0, 50, (48, 7), generator=g), torch.randint(0, 3, (48,), generator=g)
        loss = lambda m, idx: nn.functional.cross_entropy(m(ids[idx]), y[idx])  # noqa: E731
        return a, b, {n: n for n in ("attn", "attn.out_proj", "ff")}, loss, batches
    if kind == "linear":
        a, _, b, _, _ = mlp_pair(HID + 3)
        x, y = torch.randn(48, D_IN, generator=g), torch.randn(48, OUT, generator=g)
    elif kind == "conv1d":  # GPT-2's (d_in, d_out) weights
        torch.manual_seed(2)
        a, b = (nn.Sequential(Conv1D(8, D_IN), nn.ReLU(), Conv1D(OUT, 8)) for _ in range(2))
        x, y = torch.randn(48, 5, D_IN, generator=g), torch.randn(48, 5, OUT, generator=g)
    else:  # 1x1 convolutions; B's grid twice A's, resampled onto it
        torch.manual_seed(3)
        a = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, OUT, 1))
        b = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 5, 1), nn.ReLU(),
                          nn.Conv2d(5, OUT, 1), nn.AvgPool2d(2))  # fmt: skip
        x, y = torch.randn(48, 3, 4, 4, generator=g), torch.randn(48, OUT, 4, 4, generator=g)
        loss = lambda m, idx: (m(x[idx]) - y[idx]).square().mean()  # noqa: E731
        return a, b, {"1": "0", "3": "2"}, loss, batches
    loss = lambda m, idx: (m(x[idx]) - y[idx]).square().mean()  # noqa: E731
    pairs = {"1": "1", "2": "2"} if kind == "linear" else {"0": "0", "2": "2"}
    return a, b, pairs, loss, batches


@pytest.mark.parametrize("kind", ["linear", "mha", "conv1d", "conv1x1"])
def test_affine_outputs_are_mapped_from_input_statistics_not_captured(kind, monkeypatch):
    """Calibration's output statistics of per-token affine modules (linear, Conv1D, MHA's
    q|k|v and out_proj, 1x1 convolutions, patch grids resampled) are mapped from their
    inputs': equal to capturing the outputs, which is never done."""
    from tasklift.transfer import calibration

    a, b, pairs, loss, batches = _affine_case(kind)
    seen = []
    real = calibration._capture_pass
    spy = lambda model, points, *rest: seen.append(set(points)) or real(model, points, *rest)  # noqa: E731
    monkeypatch.setattr(calibration, "_capture_pass", spy)
    mapped = calibrate(a, b, pairs, batches, loss)
    assert all(sig != "output" for keys in seen for _, sig in keys)  # never hooked
    monkeypatch.setattr(calibration, "affine_of", lambda m: None)  # capture every output
    captured = calibrate(a, b, pairs, batches, loss)
    assert mapped.keys() == captured.keys() and all((n, "output") in mapped for n in pairs)
    for key, s in captured.items():
        got = mapped[key]
        for name in ("xy", "sx", "sy"):
            want, tol = getattr(s, name), 1e-5 * np.abs(getattr(s, name)).max()
            np.testing.assert_allclose(getattr(got, name), want, rtol=0, atol=tol, err_msg=name)
        assert got.n == s.n


def test_a_wide_linear_layers_tie_break_is_solved_at_its_inputs_rank(monkeypatch):
    """BiCo's output-side tie of a linear layer (its mapped outputs, `MappedStats.factors`) is
    solved at rank d_in + 1 where more directions are open, with the maps of the dense tie."""
    from tasklift import solvers

    a, b = tiny_classifier("bert"), tiny_classifier("bert", seed=1)
    x = torch.randint(1, 50, (16, 8), generator=torch.Generator().manual_seed(2))
    labels = torch.arange(16) % 3
    loss = lambda m, idx: m(input_ids=x[idx], labels=labels[idx]).loss  # noqa: E731
    pairs = {k: v for k, v in match_modules(a, b).items() if not k.startswith("classifier")}
    stats = calibrate(a, b, pairs, [np.arange(0, 8), np.arange(8, 16)], loss)
    dense = {k: GramStats(gram=False).merge(s) for k, s in stats.items()}  # plain: no factors
    calls = []
    real = solvers._procrustes_factors
    monkeypatch.setattr(solvers, "_procrustes_factors", lambda *a: calls.append(1) or real(*a))
    got = solve_maps(a, b, pairs, stats, "bico")
    assert calls  # the FFN's 64-wide output side (its tie of rank 33 = 32 + 1)
    n = len(calls)
    want = solve_maps(a, b, pairs, dense, "bico")
    assert len(calls) == n
    for name, (r_in, r_out) in want.items():
        for g, w in zip(got[name], (r_in, r_out), strict=True):
            assert (g is None) == (w is None)
            if w is not None:
                torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_affine_of_reads_only_modules_that_compute_x_w_plus_b_with_their_weights():
    """Subclasses (a quantised linear packs W), strided or padded convolutions, norms,
    instance forwards, hooks and weights not in memory are left to capture."""
    from transformers.pytorch_utils import Conv1D

    from tasklift.transfer.pairing import affine_of

    class Packed(nn.Linear):
        pass

    conv1 = nn.Conv2d(3, 4, 1)
    w, bias = affine_of(conv1)
    x = torch.randn(2, 3, 5, 5)
    tokens = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  (as calibration reads maps)
    torch.testing.assert_close(tokens(conv1(x)), tokens(x) @ w.T + bias)
    assert affine_of(nn.MultiheadAttention(8, 2))[0].shape == (24, 8)
    assert affine_of(Conv1D(5, 3))[0].shape == (5, 3)
    hooked, patched, meta = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 4, device="meta")
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    patched.forward = lambda t: t
    sharded, restored = nn.Linear(3, 4), nn.Linear(3, 4)
    sharded.weight = nn.Parameter(torch.empty(0))  # as ZeRO-3 leaves it between calls
    restored.forward = restored.forward  # accelerate's hook removed: the class's own forward
    refused = [nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 1, stride=2), nn.Conv2d(3, 4, 1, padding=1),
               Packed(3, 4), nn.LayerNorm(4), hooked, patched, meta, sharded]  # fmt: skip
    assert [affine_of(m) for m in refused] == [None] * len(refused)
    assert affine_of(restored) is not None and affine_of(nn.Conv2d(3, 4, 1, padding="same"))
    with pytest.raises(ValueError, match="gram=False"):
        GramStats().update(np.ones((3, 2)), np.ones((3, 2))).mapped((w, None), (w, None))
