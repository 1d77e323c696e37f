import numpy as np
import pytest
import torch

from conftest import tiny_classifier
from tasklift.loading import load_model
from tasklift.maps import NotFittedError
from tasklift.probe import FineTuned, HeadOnly, LinearProbe
from tasklift.taskmatrix import TaskMatrix


def test_identity_when_finetuned_equals_base():
    ft = tiny_classifier("bert")
    X = {
        "input_ids": torch.randint(3, 50, (200, 9)),
        "attention_mask": torch.ones(200, 9, dtype=torch.long),
    }
    # Fresh LayerNorms (bias 0) make every last-layer row zero-mean, so X has rank d - 1 up to
    # float32 rounding (σ_min/σ_max ~ 1e-7): the Gram route drops that direction and returns the
    # minimum-norm projector I - 11ᵀ/d; QR, like numpy.lstsq on the same floats, keeps it: I.
    tm = TaskMatrix(ft.bert, ft, layer=-1, solver="gram").fit(X)
    np.testing.assert_allclose(tm.maps_[2].coef_, np.eye(32) - 1 / 32, atol=1e-4)
    tm = TaskMatrix(ft.bert, ft, layer=-1, solver="qr").fit(X)
    np.testing.assert_allclose(tm.maps_[2].coef_, np.eye(32), atol=1e-4)
    # With a trained-looking (non-zero) final LayerNorm bias the rows span R^d: W is I.
    with torch.no_grad():
        ft.bert.encoder.layer[-1].output.LayerNorm.bias.normal_()
    tm = TaskMatrix(ft.bert, ft, layer=-1).fit(X)
    np.testing.assert_allclose(tm.maps_[2].coef_, np.eye(32), atol=1e-4)


def test_fit_beats_head_only_and_approaches_finetuned(tiny_task):
    base, ft, (Xtr, ytr), (Xte, yte) = tiny_task
    acc_ft = FineTuned(ft).fit().score(Xte, yte)
    acc_head = HeadOnly(base, ft).fit().score(Xte, yte)
    tm = TaskMatrix(base, ft, layer="auto", alpha="auto").fit(Xtr)
    acc_tm = tm.score(Xte, yte)
    assert acc_ft > 0.9, acc_ft  # the fine-tuning really learned the task
    assert acc_head < 0.6, acc_head  # the head alone does not transfer
    assert acc_tm > acc_head + 0.25, (acc_tm, acc_head)
    assert set(tm.maps_) == {0, 1, 2} and tm.layer_ in tm.maps_


def test_score_layers_one_pass_equals_per_layer_scores(tiny_task):
    base, ft, (Xtr, _), (Xte, yte) = tiny_task
    tm = TaskMatrix(base, ft, layer="auto").fit(Xtr)
    per_layer = tm.score_layers(Xte, yte)
    for i, acc in per_layer.items():
        assert acc == pytest.approx(tm.score(Xte, yte, layer=i))


def test_module_forward_equals_batched_logits_and_finetuned_matches_hf(tiny_task):
    base, ft, (Xtr, _), (Xte, _) = tiny_task
    tm = TaskMatrix(base, ft, layer=1).fit(Xtr)
    batch = {k: v[:20] for k, v in Xte.items()}
    torch.testing.assert_close(
        tm.model()(**batch).float(), torch.from_numpy(tm.decision_function(batch))
    )
    hf, _ = load_model(ft, head=True)
    with torch.no_grad():
        ref = hf(**batch).logits
    np.testing.assert_allclose(FineTuned(ft).fit().decision_function(batch), ref.numpy(), atol=1e-5)


def test_refit_from_stats_without_reextraction(tiny_task):
    """Refitting with a ridge grid from saved statistics picks, per layer, the alpha with the
    least CV error over the WHOLE grid (the grid starts with a poor, strong alpha on purpose)."""
    from tasklift.solvers import cv_errors

    base, ft, (Xtr, _), _ = tiny_task
    assert TaskMatrix(base, ft, layer="auto").fit(Xtr).stats_ == {}  # not kept unless asked
    tm = TaskMatrix(base, ft, layer="auto", keep_stats=True).fit(Xtr)
    grid = [10.0, 0.0, 0.1]
    ridge = TaskMatrix(base, ft, layer="auto", alpha=grid).fit_stats(tm.stats_)
    for i, s in tm.stats_.items():
        errs = cv_errors(s, grid)
        assert ridge.alphas_[i] == grid[int(np.argmin(errs))]
        assert ridge.cv_errors_[i] == pytest.approx(errs.min())
    assert set(ridge.alphas_.values()) != {grid[0]}  # the first alpha alone would not do
    assert ridge.layer_ == min(ridge.cv_errors_, key=ridge.cv_errors_.get)


def test_cv_choosing_a_layer_no_better_than_the_mean_warns_and_names_the_fix(tiny_task):
    """Fewer rows than the width: least squares interpolates noise, so CV picks a layer whose
    inputs are all the same (as when every prompt ends in one token), whose map is the mean of
    Y - said, with the fix; the mean's CV error is the closed form's."""
    import warnings

    from tasklift.solvers import mean_cv_error
    from tasklift.stats import GramStats

    base, ft, _, _ = tiny_task
    rng = np.random.default_rng(0)
    y = rng.normal(size=(20, 32))
    const = np.tile(rng.normal(size=(1, 32)), (20, 1))
    stats = {0: GramStats(folds=5, qr=True).update(const, y),
             1: GramStats(folds=5, qr=True).update(rng.normal(size=(20, 32)), y)}  # fmt: skip
    with pytest.warns(UserWarning, match=r"CV chose layer 0, but its map predicts no better.*"
                      r"alpha='auto'"):  # fmt: skip
        tm = TaskMatrix(base, ft, layer="auto", alpha=0.0).fit_stats(stats)
    assert tm.layer_ == 0
    folds = np.arange(20) % 5
    want = sum(((y[folds == k] - y[folds != k].mean(0)) ** 2).sum() for k in range(5)) / y.size
    assert mean_cv_error(stats[0]) == pytest.approx(want, rel=1e-10)
    assert tm.cv_errors_[0] == pytest.approx(want, rel=1e-8)
    stats[0] = GramStats(folds=5, qr=True).update(y + 0.1 * rng.normal(size=y.shape), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TaskMatrix(base, ft, layer="auto", alpha=0.0).fit_stats(stats).layer_ == 0


@pytest.mark.parametrize("layer", [-1, "all"])
def test_head_only_refuses_a_base_of_another_width_in_one_line(layer):
    """Head-only puts the fine-tuned head on the base's features: no layer of equal width, no
    head-only (a TaskMatrix maps across widths), said in one line."""
    import transformers as tf

    from conftest import tiny_config

    cfg = tiny_config("bert")
    cfg.hidden_size, cfg.num_attention_heads = 48, 4
    ft = tf.BertForSequenceClassification(cfg).eval()
    with pytest.raises(ValueError, match="equal widths.*TaskMatrix"):
        HeadOnly(tiny_classifier("bert"), ft, layer=layer).fit()


def test_linear_probe(tiny_task):
    base, _, (Xtr, ytr), (Xte, yte) = tiny_task
    probe = LinearProbe(base).fit(Xtr, ytr)
    assert probe.decision_function(Xte).shape == (len(yte), 3)
    assert probe.score(Xte, yte) > 0.4


def test_save_load_round_trip(tiny_task, tmp_path):
    base, ft, (Xtr, _), (Xte, _) = tiny_task
    tm = TaskMatrix(base, ft, layer="auto", fit_intercept=True).fit(Xtr)
    tm.save(tmp_path / "tm.safetensors")
    back = TaskMatrix.load(tmp_path / "tm.safetensors")
    assert back.layer_ == tm.layer_ and back.fit_intercept
    np.testing.assert_array_equal(back.decision_function(Xte), tm.decision_function(Xte))
    np.testing.assert_array_equal(back.transform(Xte), tm.transform(Xte))


def test_clear_errors(tiny_task, tmp_path):
    base, ft, (Xtr, _), _ = tiny_task
    with pytest.raises(NotFittedError):
        TaskMatrix(base, ft).predict(Xtr)
    with pytest.raises(ValueError, match="no trained classification head"):
        TaskMatrix(base, base).fit(Xtr)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        TaskMatrix(tmp_path / "nope", ft).fit(Xtr)
    with pytest.raises(ValueError, match="out of range"):
        TaskMatrix(base, ft, layer=7).fit(Xtr)
    with pytest.raises(ValueError, match="empty"):
        TaskMatrix(base, ft, layer=1).fit({k: v[:0] for k, v in Xtr.items()})
    tm = TaskMatrix(base, ft, layer=1).fit(Xtr)
    tm.save(tmp_path / "tm.safetensors")
    wide = tiny_classifier("bert").bert.__class__(
        type(tiny_classifier("bert").config)(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=50,
        )
    )
    with pytest.raises(ValueError, match="width 32 but .* width 48 at layer"):
        TaskMatrix.load(tmp_path / "tm.safetensors", base=wide).predict(Xtr)
    with pytest.raises(ValueError, match="fitted for layer"):
        tm.predict(Xtr, layer=2)
    with pytest.raises(ValueError, match="norm must be one of"):
        TaskMatrix(base, ft, norm="post").fit(Xtr)
    with pytest.raises(FileNotFoundError):
        TaskMatrix.load(tmp_path / "missing.safetensors")
    bad = {0: torch.ones(4, 32), 1: torch.full((4, 32), float("nan"))}
    with pytest.raises(ValueError, match="base layer 1 .* NaN or inf"):
        tm.accumulate([(None, bad, torch.ones(4, 32))], [0, 1])
    with pytest.raises(ValueError, match="labels have shape"):
        tm.score(Xtr, [0, 1])


def test_multitask_model_serves_every_task_from_one_base_pass(tiny_task):
    from tasklift.inference import MultiTaskModel
    from tasklift.models import blocks

    base, ft, (Xtr, _), (Xte, _) = tiny_task
    shared, _ = load_model(base, device="cpu")
    tms = {
        "early": TaskMatrix(shared, ft, layer=1).fit(Xtr),
        "embed": TaskMatrix(shared, ft, layer=0, alpha=0.1).fit(Xtr),
    }
    serve = MultiTaskModel.from_task_matrices(tms)
    assert serve.layers == [0, 1]
    calls = []
    hook = blocks(shared)[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        out = serve.predict_logits(Xte, batch_size=64)
    finally:
        hook.remove()
    assert not calls  # the base pass stopped after block 1, the deepest layer any task reads
    for name, tm in tms.items():
        np.testing.assert_allclose(out[name], tm.decision_function(Xte), atol=1e-5)
    batch = {k: v[:8] for k, v in Xte.items()}
    torch.testing.assert_close(serve(**batch)["early"], tms["early"].model()(**batch))
    other, _ = load_model(base, device="cpu")
    with pytest.raises(ValueError, match="different base"):
        MultiTaskModel(
            {"a": tms["early"].model(), "b": TaskMatrix(other, ft, layer=1).fit(Xtr).model()}
        )


def test_a_fine_tuned_model_of_another_architecture_is_warned_about(tiny_task, caplog):
    base, ft, (Xtr, _), _ = tiny_task
    other = tiny_classifier("roberta", seed=2).roberta  # not the base `ft` was fine-tuned from
    with caplog.at_level("WARNING", logger="tasklift"):
        TaskMatrix(other, ft, layer=1).fit({k: v[:40] for k, v in Xtr.items()})
    assert "different architectures" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tasklift"):
        TaskMatrix(base, ft, layer=1).fit({k: v[:40] for k, v in Xtr.items()})
    assert "different architectures" not in caplog.text


def test_qr_solver_equals_numpy_lstsq_on_every_layer(tiny_task, tmp_path):
    from tasklift.extract import embed

    base, ft, (Xtr, _), (Xte, yte) = tiny_task
    tm = TaskMatrix(base, ft, layer="auto", solver="qr").fit(Xtr)
    xs = embed(tm.base_model_, Xtr, layers="all")
    y = embed(tm.finetuned_model_, Xtr, layers=[-1])
    y = next(iter(y.values())).double().numpy()
    for i, m in tm.maps_.items():
        want = np.linalg.lstsq(xs[i].double().numpy(), y, rcond=None)[0]
        assert np.linalg.norm(m.coef_.T - want) <= 1e-6 * np.linalg.norm(want), i
    assert np.isfinite(list(tm.cv_errors_.values())).all()  # the layer is still chosen by CV
    tm.save(tmp_path / "t.safetensors")
    assert TaskMatrix.load(tmp_path / "t.safetensors", base=base, finetuned=ft).solver == "qr"
    with pytest.raises(ValueError, match="solver"):
        TaskMatrix(base, ft, solver="svd").fit(Xtr)


def last_token_states(base, ft, X: dict, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference of a decoder's task matrix at layer 1: the base's block 0 and the
    fine-tuned model's last block at each row's `last` token (float64), by forward hooks."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, k=k: seen.__setitem__(k, out))
             for k, m in (("x", base.layers[0]), ("y", ft.model.layers[-1]))]  # fmt: skip
    with torch.no_grad():
        base(**X), ft(**X)
    for h in hooks:
        h.remove()
    rows = torch.arange(len(last))
    return tuple(
        (seen[k][0] if isinstance(seen[k], tuple) else seen[k])[rows, last].double() for k in "xy"
    )


def test_task_matrix_of_a_decoder_equals_lstsq_on_its_last_token_embeddings():
    """Qwen2 (4 query / 2 KV heads): base layer 1 and the fine-tuned final hidden state, each
    read at the last attended token (right padding), give numpy lstsq's W; token 0 is refused."""
    import transformers as tf

    cfg = tf.Qwen2Config(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=3,
                         pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    ft = tf.Qwen2ForSequenceClassification(cfg).eval()
    base = tf.Qwen2Model(cfg).eval()
    ids = torch.randint(1, 60, (80, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0
    ids[mask == 0] = 0
    X = {"input_ids": ids, "attention_mask": mask}
    tm = TaskMatrix(base, ft, layer=1, pool="last", alpha=0.0).fit(X)
    x, y = last_token_states(base, ft, X, mask.sum(1) - 1)
    want = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(tm.maps_[1].coef_.T, want, atol=1e-6)
    with pytest.raises(ValueError, match="pool='last'"):
        TaskMatrix(base, ft, layer=1).fit(X)
    same = TaskMatrix(ft.model, ft, layer=2, pool="last").fit(X)  # W = I: the fine-tuned model
    np.testing.assert_allclose(same.decision_function(X), ft(**X).logits.detach(), atol=1e-4)
