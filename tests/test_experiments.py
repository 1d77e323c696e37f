import json

import numpy as np
import pytest
import torch

from tasklift.cli import main
from tasklift.data import load_dataset, split
from tasklift.experiments import data_scarce, multitask, scaling


def test_scaling_rows_and_double_descent_guard(text_task):
    root = text_task
    train, test = split(load_dataset(root / "data.csv", text_key="sentence"), seed=0)
    rows = scaling(
        root / "base",
        root / "ft",
        train,
        test,
        per_class=(1, 4, 16, 64),
        fractions=(0.05, 0.2, 1.0),
        max_length=16,
    )
    methods = {r["method"] for r in rows}
    assert methods == {"task matrix (lstsq)", "task matrix (ridge-CV)", "linear probe"}
    per_class = [r for r in rows if r["regime"] == "per class" and r["method"] == "linear probe"]
    assert [r["n"] for r in per_class] == [3, 12, 48, 192]  # 3 classes
    full = {
        r["method"]: r["accuracy"] for r in rows if r["regime"] == "fraction" and r["size"] == 1.0
    }
    assert full["task matrix (lstsq)"] > 0.8
    scarce = data_scarce(rows)
    assert {r["fraction"] for r in scarce} == {0.05, 0.2, 1.0}
    r = scarce[0]
    assert np.isclose(r["gain %"], 100 * (r["task matrix"] - r["linear probe"]) / r["linear probe"])


def test_multitask_joint_map_serves_every_task(text_task):
    """Two tasks on one base whose fine-tuned embeddings disagree (task b's final LayerNorm is
    negated): one W per task serves each, the joint W, fitted on both tasks' pairs, cannot."""
    import transformers as tf

    root = text_task
    ds = load_dataset(root / "data.csv", text_key="sentence")
    train, test = split(ds, seed=0)
    ft = tf.BertForSequenceClassification.from_pretrained(root / "ft").eval()
    flipped = tf.BertForSequenceClassification.from_pretrained(root / "ft").eval()
    with torch.no_grad():
        norm = flipped.bert.encoder.layer[-1].output.LayerNorm
        norm.weight.neg_()
        norm.bias.neg_()
        flipped.bert.pooler.dense.weight.neg_()  # the head reads -y: the same predictions
    rows = multitask(
        root / "base",
        {"a": (ft, train, test), "b": (flipped, train, test)},
        max_length=16,
    )
    acc = {(r["task"], r["method"]): r["accuracy"] for r in rows}
    for task in ("a", "b"):
        assert acc[(task, "single-task matrix")] > 0.8
        # a no-op merge (joint = single statistics) would give the single-task accuracy
        assert acc[(task, "multi-task matrix")] < acc[(task, "single-task matrix")] - 0.2
    mean = np.mean([acc[("a", "multi-task matrix")], acc[("b", "multi-task matrix")]])
    assert acc[("average", "multi-task matrix")] == pytest.approx(mean)


def test_scaling_multitask_sweep_and_report_cli(text_task, tmp_path):
    root = text_task
    data = ["--text-key", "sentence", "--quiet", "--max-length", "16"]
    assert (
        main(
            [
                "scaling",
                str(root / "base"),
                str(root / "ft"),
                str(root / "data.csv"),
                "-o",
                str(tmp_path / "scaling"),
                "--per-class",
                "1,8",
                "--fractions",
                "0.2,1.0",
                "--pool",
                "cls+mean",  # [CLS] joined to the tokens' mean: X is 2 x 32 wide
                *data,
            ]
        )
        == 0
    )
    assert (tmp_path / "scaling" / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "width d = 64" in (tmp_path / "scaling" / "report.md").read_text()
    assert (
        main(
            [
                "sweep",
                str(root / "base"),
                str(root / "ft"),
                str(root / "data.csv"),
                "-o",
                str(tmp_path / "sweep"),
                *data,
            ]
        )
        == 0
    )
    assert (tmp_path / "sweep" / "results.csv").read_text().startswith("method,")
    assert (
        main(
            [
                "multitask",
                str(root / "base"),
                "-t",
                "words",
                str(root / "ft"),
                str(root / "data.csv"),
                "-o",
                str(tmp_path / "multi"),
                *data,
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "multi" / "results.json").read_text())["rows"]
    assert (
        main(
            [
                "report",
                str(tmp_path / "sweep"),
                str(tmp_path / "scaling"),
                str(tmp_path / "multi"),
                "-o",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html  # 2 sweep, 1 scaling
    md = (tmp_path / "report" / "report.md").read_text()
    assert "sweep_layer_sweep.png" in md and "sweep_layers.png" in md


def test_transfer_table_onto_wider_and_deeper_targets(text_task, tmp_path):
    """Width and depth mismatches run end to end; naive arithmetic, which needs equal shapes, is
    reported as not applicable to the wider target instead of failing the table."""
    import transformers as tf

    from tasklift.experiments import transfer_table

    root = text_task
    ds = load_dataset(root / "data.csv", text_key="sentence")
    calib, rest = split(ds, test_size=0.7, seed=0)
    val, test = split(rest, test_size=0.5, seed=0)
    cfg = tf.BertConfig.from_pretrained(root / "base").to_dict()
    for change in ({"hidden_size": 48, "intermediate_size": 96}, {"num_hidden_layers": 3}):
        torch.manual_seed(0)
        target = tmp_path / str(len(change))
        tf.BertModel(tf.BertConfig(**{**cfg, **change})).save_pretrained(target)
        tf.AutoTokenizer.from_pretrained(root / "base").save_pretrained(target)
        rows = transfer_table(
            root / "base",
            root / "ft",
            target,
            calib,
            val,
            test,
            train=calib,
            methods=("bico", "naive"),
            target_finetuned=root / "ft",
            batch_size=32,
            max_length=16,
        )
        got = {r["method"]: r for r in rows}
        assert list(got) == [
            "B + carried head", "bico", "naive", "linear probe on B", "A fine-tuned", "B fine-tuned"
        ]  # fmt: skip
        # τ_B is applied (a scale above 0 chosen on validation). Whether it helps a random,
        # untrained target is noise (+0.05 or -0.00 by the tie-break's threshold); BiCo's
        # numbers are checked exactly on permuted models in test_transfer.py
        assert got["bico"]["scale"] > 0
        n_moved, n_source = map(int, got["bico"]["moved"].split("/"))
        assert n_moved >= n_source  # every delta found a place in B (deeper: some twice)
        if "hidden_size" in change:
            assert got["naive"]["accuracy"] is None and "no delta" in got["naive"]["note"]
        else:  # 3 target blocks take source blocks 0, 1, 1 (proportional depth)
            assert got["naive"]["accuracy"] is not None


def test_fidelity_is_mean_row_cosine_and_variance_weighted_r2():
    from sklearn.metrics import r2_score

    from tasklift.experiments import fidelity

    rng = np.random.default_rng(0)
    Y = rng.normal(size=(40, 6)) * np.arange(1, 7) + 3.0
    P = Y + rng.normal(size=Y.shape)
    cos = [p @ y / np.linalg.norm(p) / np.linalg.norm(y) for p, y in zip(P, Y, strict=True)]
    got = fidelity(torch.from_numpy(P).float(), Y)
    assert got["cosine"] == pytest.approx(np.mean(cos), rel=1e-6)  # float32 input
    assert fidelity(P, Y)["r2"] == pytest.approx(
        r2_score(Y, P, multioutput="variance_weighted"), rel=1e-12
    )
    assert fidelity(Y, Y) == {"cosine": pytest.approx(1.0), "r2": 1.0}


def test_sweep_scores_baselines_per_layer_and_each_maps_fidelity(text_task):
    """Against references computed here: numpy's lstsq for the map and its fidelity, sklearn's
    logistic regression for the probe, the fine-tuned head on the base's raw layer for head-only
    (BERT is post-LN: no final norm)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tasklift.experiments import compare, embed_split, enrichment, load_pair, summarise
    from tasklift.models import Head

    root = text_task
    train, test = split(load_dataset(root / "data.csv", text_key="sentence"), seed=0)
    rows = compare(root / "base", root / "ft", train, test, max_length=16, device="cpu")
    bm, fm, tok = load_pair(root / "base", root / "ft", device="cpu")
    tr, te = (embed_split(bm, fm, tok, d, max_length=16) for d in (train, test))
    by = {(r["method"], r["layer"]): r for r in rows}
    head = Head(fm)
    for i in range(3):  # tiny BERT: layers 0..2
        curve = i < 2
        assert by[("linear probe", i)].get("curve", False) == curve
        assert by[("head-only", i)].get("curve", False) == curve
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        want = (clf.fit(tr.base[i].numpy(), train.y).predict(te.base[i].numpy()) == test.y).mean()
        assert by[("linear probe", i)]["accuracy"] == pytest.approx(want)
        with torch.no_grad():
            want = (head(te.base[i]).argmax(-1).numpy() == test.y).mean()
        assert by[("head-only", i)]["accuracy"] == pytest.approx(want)
        X, Y = tr.base[i].double().numpy(), tr.finetuned.double().numpy()
        P = te.base[i].double().numpy() @ np.linalg.lstsq(X, Y, rcond=None)[0]
        Yt = te.finetuned.double().numpy()
        r = by[("task matrix (lstsq)", i)]
        assert r["r2"] == pytest.approx(r2_score(Yt, P, multioutput="variance_weighted"), rel=1e-7)
        cos = (P * Yt).sum(1) / np.linalg.norm(P, axis=1) / np.linalg.norm(Yt, axis=1)
        assert r["cosine"] == pytest.approx(cos.mean(), rel=1e-7)
    summary = [r["method"] for r in summarise(rows)]
    assert summary.count("linear probe") == summary.count("head-only") == 1
    probe = [by[("linear probe", i)]["accuracy"] for i in range(3)]
    e = enrichment(rows)
    assert e["enrichment"] == pytest.approx(max(probe[:2]) - probe[2])
    assert e["probe peak layer"] == int(np.argmax(probe))
    tm = [by[("task matrix (lstsq)", i)]["accuracy"] for i in range(3)]
    assert e["lstsq beats probe at"] == [i for i in range(3) if tm[i] > probe[i]]
    assert e["lstsq best - probe last"] == pytest.approx(max(tm) - probe[2])


def test_frozen_head_fine_tune_keeps_the_head_trained_on_the_frozen_base(text_task, tmp_path):
    """The paper's frozen head (Table 6): phase 1 trains only the head on the frozen base, phase 2
    only the backbone; the saved head equals phase 1's, the backbone moved from the base."""
    from tasklift._torch import seed_everything
    from tasklift.finetune import _train_only, finetune, finetune_cached
    from tasklift.loading import load_model
    from tasklift.models import Head

    root = text_task
    train = load_dataset(root / "data.csv", text_key="sentence")
    kw = dict(epochs=1, lr=1e-3, max_length=16, device="cpu")
    info = finetune_cached(root / "base", train, tmp_path / "frozen", frozen_head=True, **kw)
    assert info["head"] == "frozen, backbone in eval mode" and not info["reused"]
    seed_everything(0)  # as finetune_cached does before the head is made
    ref, tok = load_model(root / "base", head=True, num_labels=3, device="cpu", dtype="fp32")
    base = {k: v.clone() for k, v in ref.state_dict().items()}
    _train_only(ref, head=True)
    finetune(ref, train.X, train.y, tok, lr=1e-2, epochs=1, max_length=16)
    got, _ = load_model(tmp_path / "frozen", head=True, device="cpu")
    head = {id(p) for p in Head(ref).parameters()}
    for (name, p), q in zip(ref.named_parameters(), got.parameters(), strict=True):
        if id(p) in head:
            torch.testing.assert_close(q, p, msg=name)  # kept fixed in phase 2
        else:
            torch.testing.assert_close(p, base[name], msg=name)  # frozen in phase 1
            assert not torch.equal(q, p), name  # moved in phase 2
