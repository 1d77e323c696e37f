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
