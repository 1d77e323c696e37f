"""Every bad input through the CLI, in-process: exit 2, one line on stderr naming the input and the
fix, no traceback, and no output file left behind."""

import os
import shutil

import pytest
import torch

from tasklift.cli import main


def _evil_pickle(folder):
    """A model folder whose only weights are a pickle that runs a command when unpickled."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {folder}/PWNED",))

    torch.save({"x": Evil()}, folder / "pytorch_model.bin")


def _case_folder(text_task, tmp_path, name: str, damage) -> str:
    """A copy of the fine-tuned model with its weights damaged by `damage(folder)`."""
    folder = tmp_path / name
    shutil.copytree(text_task / "ft", folder)
    damage(folder)
    return str(folder)


def _truncate(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _pickle_only(folder):
    (folder / "model.safetensors").unlink()
    _evil_pickle(folder)


def _latin1_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("sentence,label\ncaf\xe9 a,a\n".encode("latin-1"))
    return str(path)


def _tm_file(tmp_path, content: bytes):
    path = tmp_path / "task.safetensors"
    path.write_bytes(content)
    return str(path)


def _data_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _bad_jsonl(tmp_path):
    good = '{"sentence": "alpha w1", "label": "a"}\n'
    return _data_file(tmp_path, "bad.jsonl", good * 17 + '{"sentence": "beta", label: "b"}\n')


def _mixed_weights(text_task, tmp_path):
    """A BERT config.json beside a RoBERTa classifier's weights."""
    from conftest import tiny_classifier

    folder = tmp_path / "mixed"
    shutil.copytree(text_task / "base", folder)
    tiny_classifier("roberta").save_pretrained(tmp_path / "roberta")
    shutil.copy(tmp_path / "roberta" / "model.safetensors", folder / "model.safetensors")
    return str(folder)


def _loop(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    return str(tmp_path / "loop1")


def _wide_base(tmp_path):
    """A BERT base wider (48) than the fine-tuned model (32): not what it was fine-tuned from."""
    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    tf.BertModel(cfg).save_pretrained(tmp_path / "wide")
    return str(tmp_path / "wide")


def _flag(command: str, *flag: str):
    """A builder running `command` on the standard models and data with `flag` added."""
    models = {"finetune": 1, "multitask": 1, "transfer": 3}.get(command, 2)

    def build(r, t):
        names = [str(r / "base"), str(r / "ft"), str(r / "base")][:models]
        return [command, *names, _data(r), *flag] if command != "multitask" else [
            command, str(r / "base"), "-t", "a", str(r / "ft"), _data(r), *flag
        ]  # fmt: skip

    return build


CASES = {
    # id: (argv builder(root, tmp) -> list, text the error must contain)
    "truncated safetensors model": (
        lambda r, t: ["fit", str(r / "base"), _case_folder(r, t, "trunc", _truncate), _data(r)],
        "cannot load the weights",
    ),
    "pickle-only model folder": (
        lambda r, t: ["fit", str(r / "base"), _case_folder(r, t, "pkl", _pickle_only), _data(r)],
        "--allow-pickle",
    ),
    "malicious pickle, even when allowed": (
        lambda r, t: [
            "fit",
            str(r / "base"),
            _case_folder(r, t, "pkl2", _pickle_only),
            _data(r),
            "--allow-pickle",
        ],  # fmt: skip
        "refused to unpickle",
    ),
    "non-UTF-8 CSV": (
        lambda r, t: ["fit", str(r / "base"), str(r / "ft"), _latin1_csv(t)],
        "--encoding",
    ),
    "layer that is not a number": (lambda r, t: ["fit", *_std(r), "--layer", "abc"], "'abc'"),
    "zero batch size": (lambda r, t: ["fit", *_std(r), "--batch-size", "0"], "at least 1"),
    "zero train limit": (lambda r, t: ["fit", *_std(r), "--train-limit", "0"], "at least 1"),
    "output parent is a file": (
        lambda r, t: ["sweep", *_std(r), "-o", str(r / "data.csv" / "out")],
        "is a file",
    ),
    "corrupt task matrix file": (
        lambda r, t: ["predict", _tm_file(t, b"\x80\x04K\x01."), _data(r)],
        "not a readable safetensors file",
    ),
    "layer out of range": (
        lambda r, t: ["fit", *_std(r), "--layer", "99"],
        "out of range",
    ),
    "zero max length": (_flag("fit", "--max-length", "0"), "--max-length: must be at least 1"),
    "negative max length": (_flag("fit", "--max-length", "-5"), "--max-length: must be at least"),
    "max length past the model's positions": (
        _flag("fit", "--max-length", "100000"),
        "more than the 64 tokens",
    ),
    "negative alpha": (_flag("fit", "--alpha", "-1"), "--alpha: must be 'auto', a number >= 0"),
    "negative alpha in a sweep": (_flag("eval", "--alphas", "0;-1"), "--alphas"),
    "one CV fold": (_flag("fit", "--cv", "1"), "--cv: must be at least 2"),
    "negative seed": (_flag("fit", "--seed", "-1"), "--seed: must be at least 0"),
    "zero test size": (_flag("fit", "--test-size", "0"), "--test-size: must be above 0"),
    "fractional test count": (_flag("fit", "--test-size", "1.5"), "--test-size"),
    "test size past the data": (
        _flag("fit", "--test-size", "1000"),
        "test_size=1000 (--test-size)",
    ),
    "zero image size": (_flag("fit", "--image-size", "0"), "--image-size: must be at least 1"),
    "unknown encoding": (
        _flag("fit", "--encoding", "bogus"),
        "unknown encoding 'bogus'; pass e.g. utf-8 or latin-1",
    ),
    "zero epochs": (_flag("finetune", "--epochs", "0"), "--epochs: must be above 0"),
    "negative learning rate": (_flag("finetune", "--lr", "-1"), "--lr: must be above 0"),
    "unknown transfer method": (_flag("transfer", "--methods", "foo"), "one of bico, activation"),
    "non-finite scale": (_flag("transfer", "--scales", "1,nan"), "--scales: must be a finite"),
    "no scales": (_flag("transfer", "--scales", ","), "--scales: must list at least one"),
    "tie-break above 1": (_flag("transfer", "--tie-break", "2"), "--tie-break: must be at most 1"),
    "zero calibration inputs": (_flag("transfer", "--calib", "0"), "--calib: must be at least 1"),
    "fewer calibration inputs than classes": (
        _flag("transfer", "--calib", "2"),
        "calib=2 (--calib)",
    ),
    "more calibration inputs than data": (_flag("transfer", "--calib", "5000"), "--calib, --val"),
    "zero validation inputs": (_flag("transfer", "--val", "0"), "--val: must be at least 1"),
    "zero fraction": (_flag("scaling", "--fractions", "0,0.5"), "--fractions: must be above 0"),
    "fraction above 1": (_flag("scaling", "--fractions", "1.5"), "--fractions: must be at most 1"),
    "zero per class": (_flag("scaling", "--per-class", "0"), "--per-class: must be at least 1"),
    "a multitask name twice": (
        lambda r, t: [*_flag("multitask")(r, t), "-t", "a", str(r / "ft"), _data(r)],
        "'a' twice",
    ),
    "predict layer auto": (
        lambda r, t: ["predict", _tm_file(t, b"x"), _data(r), "--layer", "auto"],
        "--layer: must be a whole number",
    ),
    "CSV with a repeated column": (
        lambda r, t: [
            "fit",
            str(r / "base"),
            str(r / "ft"),
            _data_file(t, "dup.csv", "sentence,label,sentence\nw1,a,w2\nw3,b,w4\n"),
        ],
        "two columns named 'sentence'",
    ),  # fmt: skip
    "CSV row with a field too few": (
        lambda r, t: [
            "fit",
            str(r / "base"),
            str(r / "ft"),
            _data_file(t, "short.csv", "sentence,label\nw1,a\nw2\n"),
        ],
        "line 3 has 1 field(s)",
    ),  # fmt: skip
    "bad JSONL line 18": (
        lambda r, t: ["fit", str(r / "base"), str(r / "ft"), _bad_jsonl(t)],
        "line 18 is not JSON",
    ),
    "config.json of another architecture than the weights": (
        lambda r, t: ["fit", _mixed_weights(r, t), str(r / "ft"), _data(r)],
        "do not fit its config.json (bert)",
    ),
    "symlink loop as the base": (
        lambda r, t: ["fit", _loop(t), str(r / "ft"), _data(r)],
        "is a symlink loop",
    ),
    "base and fine-tuned swapped": (
        lambda r, t: ["fit", str(r / "ft"), str(r / "base"), _data(r)],
        "pass the fine-tuned checkpoint as FINETUNED (it looks like you swapped",
    ),
    "text and label from one column": (
        _flag("fit", "--label-key", "sentence"),
        "--text-key and --label-key are both 'sentence'",
    ),
    "A_ft not a fine-tune of A": (
        lambda r, t: [
            "transfer",
            _wide_base(t),
            str(r / "ft"),
            str(r / "base"),
            _data(r),
            "--methods",
            "naive",
            "--calib",
            "8",
            "--val",
            "8",
        ],
        "is not a fine-tune of A",
    ),  # fmt: skip
}


def _data(root):
    return str(root / "data.csv")


def _std(root):
    return [str(root / "base"), str(root / "ft"), str(root / "data.csv")]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, text_task, tmp_path, capsys):
    build, expected = CASES[case]
    argv = build(text_task, tmp_path)
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out" / "task.safetensors")]
    argv += ["--quiet", "--text-key", "sentence"]
    before = set(tmp_path.rglob("*"))  # the damaged inputs are made; nothing more may appear
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert set(tmp_path.rglob("*")) == before  # no output, not even a folder
    assert not list(tmp_path.rglob("PWNED"))  # the pickle's code never ran


def test_read_only_output_folder_fails_before_any_work(text_task, tmp_path, capsys, monkeypatch):
    import tasklift.finetune
    import tasklift.io

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: the check asks os.access, so ask it "no"
    monkeypatch.setattr(tasklift.io.os, "access", lambda p, m: p != locked and real_access(p, m))
    monkeypatch.setattr(tasklift.finetune, "finetune", lambda *a, **k: pytest.fail("worked"))
    argv = ["finetune", str(text_task / "base"), str(text_task / "data.csv"),
            "-o", str(locked / "ft"), "--text-key", "sentence", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and err.count("\n") == 1 and not list(locked.iterdir())


def test_corrupt_task_matrix_files_are_one_line(tmp_path):
    from tasklift.taskmatrix import TaskMatrix

    for content in (b"\x00" * 16, b"garbage that is not a header", b"\x80\x04K\x01."):
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            TaskMatrix.load(_tm_file(tmp_path, content))


API_CASES = {
    # id: (estimator, parameter overrides, text the ValueError must match)
    "alpha": ("TaskMatrix", {"alpha": -1}, "alpha must be 'auto'"),
    "alpha list": ("TaskMatrix", {"alpha": [0.1, float("inf")]}, "alpha must be 'auto'"),
    "batch_size": ("TaskMatrix", {"batch_size": 0}, "batch_size must be at least 1"),
    "max_length": ("TaskMatrix", {"max_length": 0}, "max_length must be at least 1"),
    "cv": ("TaskMatrix", {"cv": 1}, "cv must be at least 2"),
    "layer": ("TaskMatrix", {"layer": "last"}, "layer must be a layer index"),
    "pool": ("TaskMatrix", {"pool": "max"}, "pool must be one of cls, first, mean"),
    "norm": ("TaskMatrix", {"norm": "layer"}, "norm must be one of base"),
    "solver": ("TaskMatrix", {"solver": "svd"}, "solver must be 'gram' or 'qr'"),
    "fit_intercept": ("TaskMatrix", {"fit_intercept": "no"}, "fit_intercept must be True or"),
    "head-only batch_size": ("HeadOnly", {"batch_size": -1}, "batch_size must be at least 1"),
    "method": ("Transfer", {"method": "foo"}, "unknown transfer method 'foo'"),
    "token": ("Transfer", {"token": "some"}, "token must be one of all, cls"),
    "scales empty": ("Transfer", {"scales": []}, "scales must list at least one"),
    "scales nan": ("Transfer", {"scales": [1.0, float("nan")]}, "scales must be a finite"),
    "tie_break": ("Transfer", {"tie_break": -0.1}, "tie_break must be at least 0"),
    "stats_dtype": ("Transfer", {"stats_dtype": "float16"}, "stats_dtype must be one of float32"),
    "transfer max_length": ("Transfer", {"max_length": 0}, "max_length must be at least 1"),
    "probe C": ("LinearProbe", {"C": 0}, "C must be above 0"),
    "probe layer": ("LinearProbe", {"layer": "x"}, "layer must be a whole number"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_parameters_are_checked_at_fit_naming_the_parameter(case, saved_pair):
    """scikit-learn's convention: __init__ stores anything; fit refuses it before any work."""
    import tasklift
    from conftest import tiny_text_inputs

    name, params, expected = API_CASES[case]
    base, ft = map(str, saved_pair)
    models = {"Transfer": (base, ft, base), "LinearProbe": (base,)}.get(name, (base, ft))
    est = getattr(tasklift, name)(*models, **params)  # stored, not checked
    X = tiny_text_inputs(12)
    with pytest.raises(ValueError, match=expected):
        est.fit(X, [0, 1, 2] * 4) if name == "LinearProbe" else est.fit(X)


def test_max_length_past_the_model_is_refused_and_the_default_fits_it(text_task):
    from tasklift import TaskMatrix

    texts = ["alpha w1 w2", "beta w3", "gamma w4 w5 w6"] * 4
    with pytest.raises(ValueError, match=r"max_length=65 .* more than the 64 tokens"):
        TaskMatrix(text_task / "base", text_task / "ft", layer=1, max_length=65).fit(texts)
    tm = TaskMatrix(text_task / "base", text_task / "ft", layer=1).fit(texts)  # 128 -> 64
    assert tm.max_length is None and tm.predict(texts).shape == (12,)


def test_a_block_map_naming_missing_blocks_is_refused():
    from conftest import tiny_classifier
    from tasklift.transfer.pairing import match_modules

    a, b = tiny_classifier("bert"), tiny_classifier("bert", seed=1)
    assert match_modules(a, b, {0: 1, 1: 0})  # two blocks each: fine
    for bad in ({2: 0}, {0: 5}, {-1: 0}):
        with pytest.raises(ValueError, match="names blocks that do not exist"):
            match_modules(a, b, bad)
