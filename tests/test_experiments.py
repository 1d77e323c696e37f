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
                *data,
            ]
        )
        == 0
    )
    assert (tmp_path / "scaling" / "scaling.png").read_bytes()[:4] == b"\x89PNG"
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
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert "sweep_layer_sweep.png" in (tmp_path / "report" / "report.md").read_text()


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
