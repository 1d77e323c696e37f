"""Property-based fuzzing of the CLI (issue 18): random flag values and malformed CSV/JSONL rows
give exit 0 or 2, never a traceback, and never change an input file. Derandomized, so CI sees
the same examples every run."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasklift.cli import main

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["0", "-1", "1e9", "", " ", "nan", "inf", "0.5", "1,2", "a,b", ";", "auto"]),
)
FLAGS = {  # fit's flags, with values from NUMBERS or their own choices
    "--layer": NUMBERS,
    "--alpha": NUMBERS,
    "--cv": NUMBERS,
    "--batch-size": NUMBERS,
    "--max-length": NUMBERS,
    "--test-size": NUMBERS,
    "--train-limit": NUMBERS,
    "--seed": NUMBERS,
    "--image-size": NUMBERS,
    "--encoding": st.sampled_from(["utf-8", "latin-1", "bogus", "", "utf-16", "ascii"]),
    "--pool": st.sampled_from(["cls", "mean", "max", ""]),
    "--norm": st.sampled_from(["base", "finetuned", "none", "x"]),
    "--label-key": st.sampled_from(["label", "sentence", "missing", ""]),
    "--solver": st.sampled_from(["qr", "gram", "svd"]),
}


def _files(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _exits_cleanly(argv, capsys) -> None:
    code = main(argv)  # any exception but the expected ones propagates: a traceback
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, err
    if code == 2:
        assert err.strip() and "\n" not in err.strip(), err  # one line


@FUZZ
@given(
    flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.just(None), max_size=3), data=st.data()
)
def test_random_fit_flags_exit_0_or_2(flags, data, text_task, tmp_path_factory, capsys):
    root = text_task
    values = {f: data.draw(FLAGS[f], label=f) for f in flags}
    out = tmp_path_factory.mktemp("fuzz") / "t.safetensors"
    argv = ["fit", str(root / "base"), str(root / "ft"), str(root / "data.csv"), "-o", str(out)]
    argv += ["--quiet", "--text-key", "sentence", "--layer", "1"]
    for f, v in values.items():
        argv += [f"{f}={v}"]  # '=' so values starting with '-' stay values
    before = _files(root)
    _exits_cleanly(argv, capsys)
    assert _files(root) == before


CELL = st.text(alphabet=string.printable + "é\x00\u2028", max_size=12)


@FUZZ
@given(
    rows=st.lists(
        st.one_of(st.tuples(CELL, st.sampled_from("abc")).map(list), st.lists(CELL, max_size=4)),
        max_size=12,
    ),
    header=st.one_of(
        st.just(["sentence", "label"]),
        st.lists(st.sampled_from(["sentence", "label", "text", "", "x"]), max_size=4),
    ),
    jsonl=st.booleans(),
)
def test_malformed_data_files_exit_0_or_2(rows, header, jsonl, text_task, tmp_path_factory, capsys):
    root = text_task
    folder = tmp_path_factory.mktemp("data")
    good = [line.split(",") for line in (root / "data.csv").read_text().splitlines()[1:41]]
    if jsonl:
        path = folder / "d.jsonl"
        lines = [json.dumps({"sentence": t, "label": y}) for t, y in good]
        lines += [json.dumps(dict(zip(header, r, strict=False))) if r else r"{bad" for r in rows]
        path.write_text("\n".join(lines))
    else:
        path = folder / "d.csv"
        lines = [",".join(header)] + [",".join(r) for r in good + rows]
        path.write_text("\n".join(lines))
    before = path.read_bytes()
    argv = ["fit", str(root / "base"), str(root / "ft"), str(path), "-o", str(folder / "t.st")]
    _exits_cleanly([*argv, "--quiet", "--text-key", "sentence", "--layer", "1"], capsys)
    assert path.read_bytes() == before


@pytest.mark.parametrize("command", ["sweep", "scaling", "transfer", "multitask", "predict"])
def test_every_command_refuses_nonsense_numbers_in_one_line(command, text_task, tmp_path, capsys):
    """The numeric flags each command adds, at values outside their range."""
    root = text_task
    models = [str(root / "base"), str(root / "ft")]
    data = str(root / "data.csv")
    bad = {
        "sweep": [*models, data, "--cv", "1"],
        "scaling": [*models, data, "--fractions", "0,2,-1"],
        "transfer": [*models, str(root / "base"), data, "--scales", "nan"],
        "multitask": [models[0], "-t", "a", models[1], data, "-t", "a", models[1], data],
        "predict": [str(tmp_path / "missing.safetensors"), data],
    }[command]
    argv = [command, *bad, "-o", str(tmp_path / "out"), "--quiet", "--text-key", "sentence"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
