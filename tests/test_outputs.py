"""Outputs never destroy what tasklift did not write (issue 18): every data-loss case leaves the
victim byte-identical; tasklift's own outputs are replaced only with --overwrite; files follow the
umask; a full disk, SIGTERM and killed runs leave nothing behind."""

import os
import shutil
import signal

import pytest

from tasklift.cli import main
from tasklift.io import check_output, remove_stale_temps, written_by_tasklift


def _snapshot(path):
    """Every file below `path` (or the file itself) with its bytes."""
    if path.is_file():
        return {path: path.read_bytes()}
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _std(root):
    return [str(root / "base"), str(root / "ft"), str(root / "data.csv")]


def _run(*argv):
    """`tasklift ARGV` quietly, on the word task's text column where the command reads data."""
    extra = {"export": ["--quiet"], "report": []}.get(
        argv[0], ["--quiet", "--text-key", "sentence"]
    )
    return main([*argv, *extra])


@pytest.fixture(scope="module")
def task_file(text_task, tmp_path_factory):
    """A task matrix written by `tasklift fit` (layer fixed: fast)."""
    out = tmp_path_factory.mktemp("tm") / "task.safetensors"
    assert _run("fit", *_std(text_task), "--layer", "1", "-o", str(out)) == 0
    return out


def _users_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("years of work")
    return folder


DATA_LOSS = {
    # id: (argv builder(root, task file, tmp) -> argv, the victim path, text the error names)
    "export onto the user's folder": (
        lambda r, t, tmp: ["export", str(t), "-o", str(_users_folder(tmp))],
        lambda r, tmp: tmp / "mine",
        "not written by tasklift",
    ),
    "finetune onto the user's folder": (
        lambda r, t, tmp: [
            "finetune",
            str(r / "base"),
            str(r / "data.csv"),
            "-o",
            str(_users_folder(tmp)),
        ],  # fmt: skip
        lambda r, tmp: tmp / "mine",
        "not written by tasklift",
    ),
    "fit onto its own data file": (
        lambda r, t, tmp: ["fit", *_std(r), "-o", str(r / "data.csv")],
        lambda r, tmp: r / "data.csv",
        "is the input",
    ),
    "fit into the model folder": (
        lambda r, t, tmp: ["fit", *_std(r), "-o", str(r / "ft" / "task.safetensors")],
        lambda r, tmp: r / "ft",
        "is inside the input",
    ),
    "sweep into a folder holding its inputs": (
        lambda r, t, tmp: ["sweep", *_std(r), "-o", str(r)],
        lambda r, tmp: r / "data.csv",
        "contains the input",
    ),
    "predict onto its input CSV": (
        lambda r, t, tmp: ["predict", str(t), str(r / "data.csv"), "-o", str(r / "data.csv")],
        lambda r, tmp: r / "data.csv",
        "is the input",
    ),
    "fit onto an unrelated file": (
        lambda r, t, tmp: ["fit", *_std(r), "-o", str(_notes(tmp))],
        lambda r, tmp: tmp / "notes.txt",
        "not written by tasklift",
    ),
    "report onto a run it reports": (
        lambda r, t, tmp: ["report", str(_run_folder(tmp)), "-o", str(tmp / "run")],
        lambda r, tmp: tmp / "run",
        "is the input",
    ),
}


def _notes(tmp):
    (tmp / "notes.txt").write_text("my notes")
    return tmp / "notes.txt"


def _run_folder(tmp):
    run = tmp / "run"
    run.mkdir()
    (run / "report.md").write_text("# my run\n")
    return run


@pytest.mark.parametrize("case", list(DATA_LOSS))
def test_no_output_destroys_anything(case, text_task, task_file, tmp_path, capsys):
    build, victim, expected = DATA_LOSS[case]
    argv = build(text_task, task_file, tmp_path)
    path = victim(text_task, tmp_path)
    before, files = _snapshot(path), set(tmp_path.rglob("*")) | set(text_task.rglob("*"))
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert _snapshot(path) == before  # byte-identical
    assert set(tmp_path.rglob("*")) | set(text_task.rglob("*")) == files  # nothing new either


def test_tasklift_outputs_are_replaced_only_with_overwrite(text_task, task_file, tmp_path, capsys):
    out = tmp_path / "export"
    assert _run("export", str(task_file), "-o", str(out)) == 0
    assert written_by_tasklift(out)
    assert _run("export", str(task_file), "-o", str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    (out / "stray.txt").write_text("x")  # replaced wholesale: the export is tasklift's
    assert _run("export", str(task_file), "-o", str(out), "--overwrite") == 0
    assert not (out / "stray.txt").exists()
    tm = tmp_path / "tm.safetensors"
    assert _run("fit", *_std(text_task), "--layer", "0", "-o", str(tm)) == 0
    first = tm.read_bytes()
    assert _run("fit", *_std(text_task), "--layer", "1", "-o", str(tm)) == 2
    assert tm.read_bytes() == first
    assert _run("fit", *_std(text_task), "--layer", "1", "-o", str(tm), "--overwrite") == 0
    assert tm.read_bytes() != first


def test_overwrite_never_replaces_a_file_tasklift_did_not_write(text_task, tmp_path, capsys):
    notes = _notes(tmp_path)
    assert _run("fit", *_std(text_task), "-o", str(notes), "--overwrite") == 2
    assert "not written by tasklift" in capsys.readouterr().err
    assert notes.read_text() == "my notes"
    assert not (tmp_path / "notes.txt.config.json").exists()


def test_the_api_follows_the_same_rules(task_file, tmp_path):
    from tasklift.taskmatrix import TaskMatrix

    tm = TaskMatrix.load(task_file)
    out = tmp_path / "again.safetensors"
    tm.save(out)
    with pytest.raises(ValueError, match="overwrite=True"):
        tm.save(out)
    tm.save(out, overwrite=True)
    with pytest.raises(ValueError, match="not written by tasklift"):
        tm.save(_notes(tmp_path), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output(empty)  # an empty folder holds nothing to lose


def test_outputs_follow_the_umask(task_file, tmp_path):
    from tasklift.taskmatrix import TaskMatrix

    tm = TaskMatrix.load(task_file)
    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(mask)
        try:
            out = tmp_path / f"tm{mask:o}.safetensors"
            tm.save(out)
            assert out.stat().st_mode & 0o777 == mode
            assert _run("export", str(out), "-o", str(tmp_path / f"e{mask:o}")) == 0
            for p in (tmp_path / f"e{mask:o}").rglob("*"):
                want = (0o777 & ~mask) if p.is_dir() else mode
                assert p.stat().st_mode & 0o777 == want, p
        finally:
            os.umask(old)


def test_a_full_disk_is_one_line_and_leaves_nothing(text_task, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import tasklift.io

    def full(tensors, path, metadata=None):
        open(path, "wb").write(b"\0" * 100)  # a partial write, then the device is full
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(tasklift.io, "save_file", full)
    assert _run("fit", *_std(text_task), "--layer", "1", "-o", str(tmp_path / "t.safetensors")) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_sigterm_exits_143_and_leaves_no_temp(text_task, tmp_path, capsys, monkeypatch):
    import tasklift.io

    def killed(tensors, path, metadata=None):
        open(path, "wb").write(b"\0" * 100)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, mid-write

    monkeypatch.setattr(tasklift.io, "save_file", killed)
    previous = signal.getsignal(signal.SIGTERM)
    assert (
        _run("fit", *_std(text_task), "--layer", "1", "-o", str(tmp_path / "t.safetensors")) == 143
    )
    assert "terminated" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) == previous  # main() restores the handler


def _dead_pid() -> int:
    pid = int(open("/proc/sys/kernel/pid_max").read()) - 1
    while pid > 1:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1
    raise RuntimeError("no free pid")


def test_temps_of_killed_runs_are_removed_by_the_next_run(text_task, tmp_path, caplog):
    stale = tmp_path / f".t.safetensors.{_dead_pid()}.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    live = tmp_path / f".t.safetensors.{os.getpid()}.def456.tmp"
    live.write_bytes(b"writing")
    mine = tmp_path / ".t.safetensors.tmp"  # not of tasklift's pattern: the user's
    mine.write_text("keep")
    assert _run("fit", *_std(text_task), "--layer", "1", "-o", str(tmp_path / "t.safetensors")) == 0
    assert not stale.exists() and live.exists() and mine.exists()
    assert "left by a run that was killed" in caplog.text
    assert remove_stale_temps(tmp_path) == []  # nothing more to remove


def test_a_fine_tune_cache_is_reused_but_replaced_only_with_overwrite(text_task, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", str(text_task / "base"), str(text_task / "data.csv"), "-o", str(out),
            "--train-limit", "40", "--epochs", "0.5"]  # fmt: skip
    assert _run(*argv) == 0
    assert _run(*argv) == 0  # the same recipe: reused, nothing replaced
    assert "reusing" in capsys.readouterr().out
    assert _run(*argv, "--lr", "0.001") == 2  # another recipe would replace it
    assert "--overwrite" in capsys.readouterr().err
    assert _run(*argv, "--lr", "0.001", "--overwrite") == 0
    shutil.rmtree(out)


def test_a_transfer_where_no_method_applies_fails_with_the_reasons(text_task, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    import tasklift.experiments.transfer as experiment

    def cannot(self, *a, **k):
        raise ValueError(f"{self.method} cannot carry this head")

    monkeypatch.setattr(experiment.Transfer, "fit", cannot)
    models = [str(text_task / "base"), str(text_task / "ft"), str(text_task / "base")]
    out = tmp_path / "run"
    argv = ["transfer", *models, str(text_task / "data.csv"), "--methods", "bico,naive", "-o",
            str(out), "--calib", "16", "--val", "16"]  # fmt: skip
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert "no transfer method could run" in err and "naive cannot carry" in err, err
    assert not out.exists()


def test_scaling_with_no_valid_size_fails_before_any_work(tmp_path):
    from tasklift.experiments import scaling

    for bad, match in (({"fractions": [0, 2, -1]}, "fractions must lie"),
                       ({"per_class": [0]}, "at least 1"),
                       ({"fractions": [], "per_class": []}, "no training size")):  # fmt: skip
        with pytest.raises(ValueError, match=match):  # before the (missing) models are loaded
            scaling(tmp_path / "no-base", tmp_path / "no-ft", None, None, **bad)


def test_a_users_temp_looking_file_is_never_removed_and_keeps_its_folder_theirs(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    odd = folder / f".draft.{_dead_pid()}.old.tmp"  # looks like a killed run's temp
    odd.write_text("mine")
    with pytest.raises(ValueError, match="not written by tasklift"):
        check_output(folder, overwrite=True)
    assert odd.read_text() == "mine"


def test_files_put_into_an_output_folder_while_a_run_works_stop_the_replacement(tmp_path):
    from tasklift.io import atomic_dir

    out = tmp_path / "out"
    check_output(out)  # nothing there yet: the run starts
    out.mkdir()
    (out / "notes.txt").write_text("added by the user meanwhile")
    with pytest.raises(ValueError, match="did not write"), atomic_dir(out) as tmp:
        (tmp / "model.bin").write_bytes(b"x")
    assert (out / "notes.txt").read_text() == "added by the user meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the temp is gone too


def test_a_file_never_replaces_a_folder(task_file, tmp_path, text_task, capsys):
    from tasklift.io import write_text

    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "tasklift_finetune.json").write_text('{"tasklift": "0.1.0"}')
    with pytest.raises(ValueError, match="is a folder"):
        write_text(tmp_path / "ft", "a,b\n")
    assert (tmp_path / "ft" / "tasklift_finetune.json").exists()
    notes = tmp_path / "notes.json"
    for text in ('"my tasklift notes"', '["bert", "tasklift"]', '{"tasklift": 1}'):
        notes.write_text(text)
        assert not written_by_tasklift(notes), text


def test_export_never_replaces_the_models_its_task_matrix_was_fitted_from(tmp_path, capsys):
    """The fine-tuned folder is tasklift's own, so --overwrite alone would have allowed it."""
    import conftest
    from tasklift.data import Dataset
    from tasklift.finetune import finetune_cached

    conftest.tiny_classifier("bert", seed=1).bert.save_pretrained(tmp_path / "base")
    X, y = conftest.token_task(40, seed=3)
    finetune_cached(tmp_path / "base", Dataset(X, y, ["a", "b", "c"], "t", "g"), tmp_path / "ft",
                    epochs=1)  # fmt: skip
    from tasklift.taskmatrix import TaskMatrix

    TaskMatrix(tmp_path / "base", tmp_path / "ft", layer=1).fit(X).save(tmp_path / "t.safetensors")
    before = _snapshot(tmp_path / "ft")
    assert main(["export", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "ft"),
                 "--overwrite", "--quiet"]) == 2  # fmt: skip
    assert "is the input" in capsys.readouterr().err and _snapshot(tmp_path / "ft") == before
