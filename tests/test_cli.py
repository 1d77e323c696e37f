import json

from conftest import tiny_classifier
from tasklift.cli import main
from tasklift.finetune import finetune


def on_words(root, command: str, *extra: str) -> int:
    """Run a tasklift command on the word-task fixture's base, fine-tuned model and CSV."""
    data = [str(root / "base"), str(root / "ft"), str(root / "data.csv"), "--text-key", "sentence"]
    return main([command, *data, "--quiet", *extra])


def test_fit_writes_matrix_and_config(text_task, capsys):
    root = text_task
    out = root / "tm.safetensors"
    assert on_words(root, "fit", "-o", str(out), "--alpha", "auto") == 0
    assert out.is_file()
    cfg = json.loads((root / "tm.safetensors.config.json").read_text())
    assert cfg["layer_selected"] in (0, 1, 2) and cfg["test_accuracy"] > 0.6
    assert "test accuracy" in capsys.readouterr().out


def test_eval_writes_table_plot_and_json(text_task, capsys):
    root = text_task
    out = root / "eval"
    assert on_words(root, "eval", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    for method in (
        "fine-tuned",
        "head-only",
        "linear probe",
        "task matrix (lstsq)",
        "task matrix (ridge-CV)",
    ):
        assert method in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    acc = {r["method"]: r["accuracy"] for r in rows if "selected" not in r}
    best_tm = max(r["accuracy"] for r in rows if "selected" in r)
    assert acc["fine-tuned"] > 0.9 and best_tm > acc["head-only"]
    assert (out / "layer_sweep.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "![layer sweep]" in report and "## Per class (test)" in report
    assert "| true | a | b | c |" in report  # the confusion matrix of the CV-layer task matrix
    ft_row = next(r for r in rows if r["method"] == "fine-tuned")
    assert [c["class"] for c in ft_row["per_class"]] == ["a", "b", "c"]
    assert abs(sum(c["support"] for c in ft_row["per_class"]) - 72) == 0  # 20% of 360


def test_vision_eval_on_digits(tmp_path):
    ft = tiny_classifier("vit", seed=0, num_labels=10)
    ft.vit.save_pretrained(tmp_path / "base")
    from tasklift.data import load_dataset, split

    train, _ = split(load_dataset("digits", image_size=16), seed=0)
    finetune(ft, train.X, train.y, epochs=3, lr=3e-3, batch_size=32)
    ft.save_pretrained(tmp_path / "ft")
    assert (
        main(
            [
                "eval",
                str(tmp_path / "base"),
                str(tmp_path / "ft"),
                "digits",
                "--image-size",
                "16",
                "-o",
                str(tmp_path / "eval"),
                "--quiet",
                "--alphas",
                "auto",
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    acc = {r["method"]: r["accuracy"] for r in rows if "selected" not in r}
    assert acc["fine-tuned"] > 0.5
    assert max(r["accuracy"] for r in rows if "selected" in r) > acc["head-only"]


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert (
        main(
            [
                "fit",
                str(tmp_path / "nobase"),
                str(tmp_path / "noft"),
                "digits",
                "-o",
                str(tmp_path / "x.safetensors"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "no checkpoint folder" in capsys.readouterr().err
    assert (
        main(["eval", "a", "b", str(tmp_path / "missing.csv"), "-o", str(tmp_path), "--quiet"]) == 2
    )
    assert "no dataset" in capsys.readouterr().err


def test_transfer_onto_a_permuted_base_matches_the_fine_tuned_source(text_task, tmp_path, capsys):
    """B = A's base with its units permuted (saved with the tokenizer): BiCo carries A_ft's skill
    over exactly, so B reaches A_ft's accuracy; the report, plot and JSON are written."""
    import transformers as tf

    from conftest import permuted

    root = text_task
    base = tf.BertForSequenceClassification.from_pretrained(root / "ft").eval()
    base.bert.load_state_dict(tf.BertModel.from_pretrained(root / "base").state_dict())
    permuted(base, "bert").bert.save_pretrained(tmp_path / "b")
    tf.AutoTokenizer.from_pretrained(root / "base").save_pretrained(tmp_path / "b")
    out = tmp_path / "transfer"
    argv = [str(root / "base"), str(root / "ft"), str(tmp_path / "b"), str(root / "data.csv")]
    opts = [
        "--text-key",
        "sentence",
        "--calib",
        "64",
        "--val",
        "48",
        "--quiet",
        "-o",
        str(out),
        "--tie-break",
        "1e-6",
        "--stats-dtype",
        "float64",
    ]  # exact: every direction a twin has
    assert main(["transfer", *argv, "--methods", "bico,naive", *opts]) == 0
    assert "bico" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert abs(rows["bico"]["accuracy"] - rows["A fine-tuned"]["accuracy"]) < 0.02
    assert rows["bico"]["accuracy"] > rows["B + carried head"]["accuracy"]
    phases = rows["bico"]["timings"]  # the fit's phases, within its seconds
    assert {"calibrate", "solve", "scale search"} <= set(phases)
    assert sum(phases.values()) <= rows["bico"]["seconds"] + 0.1
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    saved = tf.AutoModelForSequenceClassification.from_pretrained(out / "model").eval()  # bico
    assert rows["bico"]["saved"] == str(out / "model") and saved.config.id2label[2] == "c"
    assert main(["transfer", *argv, *opts, "--calib", "5000"]) == 2  # clear error, no traceback
    variant = ["--methods", "bico", "--center", "--token", "word", "-o", str(tmp_path / "v")]
    assert main(["transfer", *argv, *opts, *variant]) == 0  # centred, words paired: still exact
    rows = {r["method"]: r for r in json.loads((tmp_path / "v/results.json").read_text())["rows"]}
    assert abs(rows["bico"]["accuracy"] - rows["A fine-tuned"]["accuracy"]) < 0.02


def test_labels_are_matched_to_the_model_by_name(text_task, tmp_path, capsys):
    """A file holding only classes 'c' and 'b' (in that order of first appearance) must score
    the fine-tuned model by name, not by the position of the sorted file labels."""
    import csv

    root = text_task
    rows = list(csv.DictReader((root / "data.csv").open()))
    sub = tmp_path / "cb.csv"
    with sub.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sentence", "label"])
        w.writeheader()
        w.writerows(r for r in rows if r["label"] in "cb")
    args = [str(root / "base"), str(root / "ft"), str(sub), "--text-key", "sentence", "--quiet"]
    assert main(["eval", *args, "-o", str(tmp_path / "eval")]) == 0
    acc = {
        r["method"]: r["accuracy"]
        for r in json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
        if "selected" not in r
    }
    assert acc["fine-tuned"] > 0.9  # by position ('b' -> 0, 'c' -> 1) it would be about 0
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nalpha w1,a\nbeta w2,zebra\n")
    args[2] = str(bad)
    assert main(["eval", *args, "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "'zebra'" in err and "not classes of" in err and not (tmp_path / "bad").exists()


def test_unavailable_or_unknown_devices_and_ctrl_c_are_one_line(text_task, tmp_path, capsys):
    import pytest
    import torch

    import tasklift.cli

    args = ["-o", str(tmp_path / "tm.safetensors")]
    if not torch.cuda.is_available():
        assert on_words(text_task, "fit", *args, "--device", "cuda") == 2
        err = capsys.readouterr().err
        assert "'cuda' is not available" in err and "Traceback" not in err
    assert on_words(text_task, "fit", *args, "--device", "bogus") == 2
    assert "unknown device 'bogus'" in capsys.readouterr().err

    def interrupted(_args):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasklift.cli, "cmd_fit", interrupted)
        assert on_words(text_task, "fit", *args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_predict_with_a_saved_task_matrix(text_task, tmp_path, capsys):
    import csv

    task = tmp_path / "tm.safetensors"
    assert on_words(text_task, "fit", "-o", str(task), "--layer", "2") == 0
    fitted = json.loads((tmp_path / "tm.safetensors.config.json").read_text())
    capsys.readouterr()
    data = str(text_task / "data.csv")
    out = tmp_path / "pred.csv"
    argv = ["predict", str(task), data, "-o", str(out), "--text-key", "sentence", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 360 and set(rows[0]) == {"row", "prediction", "sentence", "label"}
    acc = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert f"accuracy {acc:.4f}" in printed and acc > fitted["test_accuracy"] - 0.1
    assert "| class | support | precision | recall | f1 |" in printed and "confusion" in printed
    (tmp_path / "texts.csv").write_text("sentence\n" + "\n".join(r["sentence"] for r in rows[:5]))
    argv = ["predict", str(task), str(tmp_path / "texts.csv"), "--no-labels", "--text-key",
            "sentence", "-o", str(tmp_path / "p2.csv"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    again = list(csv.DictReader((tmp_path / "p2.csv").open()))
    assert [r["prediction"] for r in again] == [r["prediction"] for r in rows[:5]]
