"""Many adapters, one calibration (issue 20): the maps A -> B are cached on disk and reused
bit for bit without calibrating; any change to the data, B, the method or the token limit
misses; a damaged entry is recomputed with a warning; label-free and GradFix runs are per
adapter, and each adapter's scale is chosen on validation as `fit` chooses it; `tasklift
transfer A B ADAPTER... DATA` writes PEFT folders and a manifest, honours --val and --scales,
moves a classifier's adapter with its head, and refuses the other form's flags."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import tasklift.transfer.many as many
from conftest import nudged
from tasklift.transfer import Transfer
from test_lm import WordTokenizer, tiny_lm
from test_lora import _adapter

PROMPTS = [f"q{i % 5} say:" for i in range(12)]
TARGETS = [" yes" if i % 5 < 2 else " no" for i in range(12)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A (Qwen2, 32 wide, 4 query / 2 KV heads), B (48 wide, 3 layers) and two adapters of A."""
    root = tmp_path_factory.mktemp("many")
    a, b = tiny_lm("qwen2"), tiny_lm("qwen2", seed=1, hidden=48, layers=3)
    adapters = [_adapter(a, root / f"task{i}", r=2, seed=10 + i) for i in range(2)]
    return a, b, adapters


def _move(pair, out, cache, *, X=PROMPTS, y=TARGETS, b=None, **kw):
    """Move both adapters; the manifest and {adapter: its tensors}."""
    a, b0, adapters = pair
    t = Transfer(a, None, b0 if b is None else b, processor=WordTokenizer(), **kw)
    t.move_adapters(adapters, X, y, out=out, map_cache=cache)
    manifest = json.loads((out / "tasklift_run.json").read_text())
    return manifest, {
        p.name: load_file(out / p.name / "adapter_model.safetensors") for p in adapters
    }


@pytest.fixture
def calls(monkeypatch):
    """How many calibrations ran (by calibrate's calls)."""
    count = []
    real = many.calibrate
    monkeypatch.setattr(many, "calibrate", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


def test_a_cache_hit_gives_the_same_adapters_bit_for_bit_without_calibrating(
    pair, tmp_path, monkeypatch
):
    first, want = _move(pair, tmp_path / "m1", tmp_path / "cache")
    assert first["maps"] == "shared" and first["map_cache"]["hit"] is False
    entry = first["map_cache"]["entry"]
    assert (tmp_path / "cache" / f"{entry}.json").is_file()

    def refuse(*a, **k):
        raise AssertionError("a cache hit must not calibrate")

    monkeypatch.setattr(many, "calibrate", refuse)
    second, got = _move(pair, tmp_path / "m2", tmp_path / "cache")
    assert second["map_cache"] == {**first["map_cache"], "hit": True}
    for name, tensors in want.items():
        assert tensors.keys() == got[name].keys()
        assert all(torch.equal(v, got[name][k]) for k, v in tensors.items()), name
    monkeypatch.undo()
    off, _ = _move(pair, tmp_path / "m3", False)  # no cache: none read, none written
    assert off["map_cache"] is None


def test_the_cache_misses_when_data_b_method_token_limit_or_solver_change(pair, tmp_path, calls):
    cache = tmp_path / "cache"
    base, _ = _move(pair, tmp_path / "base", cache, max_length=16)
    changes = {
        "data": dict(y=[t.upper() for t in TARGETS]),
        "b": dict(b=nudged(pair[1], scale=0.01)),
        "method": dict(method="activation"),
        "max_length": dict(max_length=12),
    }
    entries = {base["map_cache"]["entry"]}
    for name, change in changes.items():
        calls.clear()
        info, _ = _move(pair, tmp_path / name, cache, **{"max_length": 16, **change})
        assert calls and info["map_cache"]["hit"] is False, name
        entries.add(info["map_cache"]["entry"])
    assert len(entries) == 1 + len(changes)
    with pytest.MonkeyPatch.context() as mp:  # the solving code changed: its maps never match
        mp.setattr("tasklift.transfer.cache.solver_revision", lambda: "another")
        calls.clear()
        info, _ = _move(pair, tmp_path / "code", cache, max_length=16)
        assert calls and info["map_cache"]["hit"] is False
    calls.clear()
    assert _move(pair, tmp_path / "again", cache, max_length=16)[0]["map_cache"]["hit"]
    assert not calls


@pytest.mark.parametrize("damage", ["shard", "index", "key"])
def test_a_damaged_cache_entry_is_recomputed_with_a_warning(pair, tmp_path, calls, caplog, damage):
    cache = tmp_path / "cache"
    first, want = _move(pair, tmp_path / "m1", cache)
    stem = cache / first["map_cache"]["entry"]
    if damage == "shard":
        shard = stem.with_name(f"{stem.name}-00000.safetensors")
        shard.write_bytes(shard.read_bytes()[:-7])  # a truncated write
    elif damage == "index":
        stem.with_suffix(".json").write_text("{not json")
    else:
        index = json.loads(stem.with_suffix(".json").read_text())
        index["key"]["max_length"] = 99  # an entry made for another run
        stem.with_suffix(".json").write_text(json.dumps(index))
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="tasklift"):
        again, got = _move(pair, tmp_path / "m2", cache)
    assert calls and again["map_cache"]["hit"] is False
    assert "ignoring the cached maps" in caplog.text and "solving them again" in caplog.text
    for name, tensors in want.items():
        assert all(torch.equal(v, got[name][k]) for k, v in tensors.items()), name
    calls.clear()
    assert _move(pair, tmp_path / "m3", cache)[0]["map_cache"]["hit"] and not calls  # rewritten


def test_label_free_and_gradfix_maps_are_per_adapter_and_say_so(
    pair, tmp_path, monkeypatch, caplog
):
    import tasklift.transfer.lm as lm

    monkeypatch.setattr(lm, "greedy_targets", lambda *a, **k: TARGETS)  # A_ft's own answers
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="tasklift"):
        info, _ = _move(pair, tmp_path / "free", cache, y=None, method="activation")
    assert info["maps"] == "per adapter" and "label-free" in info["why"]
    assert "maps computed per adapter (2 calibrations)" in caplog.text
    assert info["map_cache"] is None and not cache.exists()
    same = tiny_lm("qwen2", seed=2)  # GradFix adds τ as it is: B of A's shapes
    info, _ = _move(pair, tmp_path / "gradfix", cache, b=same, method="gradfix")
    assert info["maps"] == "per adapter" and "gradfix" in info["why"]
    assert all(r["refactorised"] for r in info["adapters"])  # the sign mask breaks low rank


def test_each_adapter_s_scale_is_chosen_on_validation_as_fit_chooses_it(pair, tmp_path):
    """With X_val, every adapter moved by the shared maps is written at the scale (and with the
    validation scores) that `Transfer.fit` of that adapter alone chooses; a scale and X_val
    together are refused."""
    from tasklift.lora import read_adapter

    a, b, adapters = pair
    kw = dict(processor=WordTokenizer(), scales=(0.0, 0.5, 1.0))
    val = dict(X_val=PROMPTS[:6], y_val=[t.upper() for t in TARGETS[:6]])
    t = Transfer(a, None, b, **kw)
    records = t.move_adapters(adapters, PROMPTS, TARGETS, out=tmp_path / "m", map_cache=False,
                              **val)  # fmt: skip
    for record, folder in zip(records, adapters, strict=True):
        alone = Transfer(a, folder, b, **kw).fit(PROMPTS, TARGETS, **val)
        assert record["scale"] == alone.scale_
        assert record["val_scores"] == pytest.approx(alone.val_scores_, abs=1e-5)
        moved, _ = read_adapter(tmp_path / "m" / folder.name)
        for k, v in alone.task_vector_.deltas.items():
            torch.testing.assert_close(moved.deltas[k].dense(), alone.scale_ * v.dense(),
                                       atol=1e-6, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="scale=0.5 and X_val both set the scale"):
        t.move_adapters(adapters, PROMPTS, TARGETS, out=tmp_path / "n", scale=0.5, **val)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Llama folders A and B (4 query / 2 KV heads; a Qwen2 config would load its own tokenizer
    class over the tiny WordPiece files), two adapters of A and 20 texts; their paths."""
    from conftest import WORDS, tiny_tokenizer

    root = tmp_path_factory.mktemp("cli")
    a, b = tiny_lm("llama"), tiny_lm("llama", seed=1, hidden=48, layers=3)
    for name, model in (("a", a), ("b", b)):
        model.save_pretrained(root / name)
        tiny_tokenizer(WORDS).save_pretrained(root / name)
    adapters = [str(_adapter(a, root / f"task{i}", r=2, seed=i)) for i in range(2)]
    (root / "texts.csv").write_text(
        "text\n" + "\n".join(" ".join(WORDS[i : i + 6]) for i in range(20)) + "\n"
    )
    return root, [str(root / "a"), str(root / "b"), *adapters, str(root / "texts.csv")]


OPTS = ["--calib", "8", "--methods", "activation", "--quiet", "--device", "cpu"]


def test_cli_moves_two_adapters_to_peft_folders_and_a_manifest(saved, tmp_path, capsys):
    from peft import PeftModel

    from tasklift.cli import main

    root, paths = saved
    b = tiny_lm("llama", seed=1, hidden=48, layers=3)
    opts = [*OPTS, "--map-cache", str(tmp_path / "cache")]
    assert main(["transfer", *paths, "-o", str(tmp_path / "out"), *opts]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 8 texts and cached in" in printed, printed
    manifest = json.loads((tmp_path / "out" / "tasklift_run.json").read_text())
    assert [r["moved_to"] for r in manifest["adapters"]] == [
        str(tmp_path / "out" / f"task{i}") for i in range(2)
    ]
    assert manifest["method"] == "activation" and manifest["target"] == str(root / "b")
    assert [r["scale"] for r in manifest["adapters"]] == [1.0, 1.0]  # no --val, no --scales
    for i in range(2):
        loaded = PeftModel.from_pretrained(b, tmp_path / "out" / f"task{i}")
        assert loaded.peft_config["default"].base_model_name_or_path == str(root / "b")
        b = loaded.unload()
    assert main(["transfer", *paths, "-o", str(tmp_path / "out2"), *opts]) == 0
    assert "(no calibration)" in capsys.readouterr().out
    wrong = [*paths[:3], str(root / "b"), *paths[3:]]  # a model among the adapters
    assert main(["transfer", *wrong, "-o", str(tmp_path / "out3"), *opts]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'b'} is no PEFT adapter folder" in err and err.count("\n") == 1, err


def test_cli_adapter_form_honours_val_and_scales_and_refuses_the_table_form_s_flags(
    saved, tmp_path, capsys
):
    """--val / --scales choose each adapter's scale on rows held out of calibration (the manifest
    records the settings; --scale-search without them is refused); --title,
    --probe, --train-limit, --test-size, --label-key (the table form's) are refused by the
    adapter form, and --map-cache
    or an LM's adapter as A_FT by the table form: one line naming the flag and its form, exit 2."""
    from tasklift.cli import main

    root, paths = saved
    out = tmp_path / "out"
    argv = ["transfer", *paths, "-o", str(out), *OPTS, "--map-cache", "off"]
    assert main([*argv, "--val", "6", "--scales", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("scale ") == 2 and "chosen on 6 rows" in printed, printed
    manifest = json.loads((out / "tasklift_run.json").read_text())
    for r in manifest["adapters"]:
        scores = r["val_scores"]
        assert set(scores) == {"0.0", "1.0"} and r["scale"] == float(max(scores, key=scores.get))
    assert manifest["settings"]["tie_break"] == 1e-3 and manifest["settings"]["scale_search"]
    assert main([*argv, "--overwrite", "--val", "13"]) == 2  # 8 + 13 rows of 20
    assert "--calib 8 and --val 13 rows are more than the 20" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--scale-search", "fibonacci"]) == 2  # no --val: scale 1
    assert "--scale-search searches the scales on --val rows" in capsys.readouterr().err
    split = (["--test-size", "0.2"], ["--label-key", "label"])  # even at their defaults
    for flag in (["--title", "x"], ["--probe"], ["--train-limit", "5"], *split):
        assert main([*argv, "--overwrite", *flag]) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]}: only A A_FT B DATA takes it" in err and err.count("\n") == 1, err
    table = [paths[0], paths[2], paths[1], paths[-1]]  # A ADAPTER B DATA: the table form
    assert main(["transfer", *table, "-o", str(tmp_path / "t"), *OPTS]) == 2
    err = capsys.readouterr().err
    assert "is a causal LM's PEFT adapter; A A_FT B DATA scores classifiers" in err, err
    table[1] = paths[0]  # A A B DATA: a model, but --map-cache is the adapter form's
    assert main(["transfer", *table, "-o", str(tmp_path / "t"), *OPTS, "--map-cache", "off"]) == 2
    assert "--map-cache is for moving adapters" in capsys.readouterr().err


def test_adapters_are_not_moved_across_tokenizers_that_split_the_texts_apart(saved, tmp_path):
    """B's tokenizer splits 'alpha' where A's does not: the shared maps pair tokens by
    position, so move_adapters refuses before loading a model and writes nothing; fit refuses
    prompts that split alike when their targets do not; token='mean' pairs no positions and
    moves them."""
    import tasklift.transfer.estimator as est
    from conftest import WORDS, tiny_tokenizer

    root, paths = saved
    tiny_lm("llama", seed=1, hidden=48, layers=3).save_pretrained(tmp_path / "b")
    tiny_tokenizer(["al", "##pha", *WORDS[1:]]).save_pretrained(tmp_path / "b")
    texts = ["w1 w2 w3 w4 w5 w6"] + [f"alpha w{i}" for i in range(5)]
    t = Transfer(root / "a", None, tmp_path / "b", device="cpu")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(est, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ValueError, match="split 5 of 6 calibration texts differently"):
            t.move_adapters(paths[2:4], [""] * 6, texts, out=tmp_path / "out", map_cache=False)
    assert not (tmp_path / "out").exists()
    prompts = [f"w{i} w{i + 1}" for i in range(6)]  # split alike; their targets do not
    with pytest.raises(ValueError, match="split 6 of 6 calibration texts differently"):
        Transfer(root / "a", paths[2], tmp_path / "b", device="cpu").fit(prompts, [" alpha"] * 6)
    mean = Transfer(root / "a", None, tmp_path / "b", device="cpu", token="mean")  # no positions
    mean.move_adapters(paths[2:4], [""] * 6, texts, out=tmp_path / "mean", map_cache=False)
    assert (tmp_path / "mean" / "tasklift_run.json").is_file()


def test_cli_moves_a_classifier_adapter_with_its_head(tmp_path, capsys):
    """A SEQ_CLS adapter of a BERT folder, moved by the adapter form to a wider BERT folder
    (calibrated on the texts with A_ft's own predictions): plain PEFT loads the folder onto B's
    classifier with B's carried head; --val is refused (the adapter names no classes)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from conftest import WORDS, tiny_tokenizer
    from tasklift.cli import main
    from test_lora import _bert

    a, b = _bert(), _bert(hidden=48, layers=3, seed=1)
    for name, model in (("a", a.bert), ("b", b.bert)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(WORDS).save_pretrained(tmp_path / name)
    _adapter(a, tmp_path / "cls", task_type="SEQ_CLS", targets=["query", "value"])
    (tmp_path / "texts.csv").write_text(
        "text\n" + "\n".join(" ".join(WORDS[i : i + 6]) for i in range(20)) + "\n"
    )
    paths = [str(tmp_path / p) for p in ("a", "b", "cls", "texts.csv")]
    argv = ["transfer", *paths, "-o", str(tmp_path / "out"), *OPTS, "--map-cache", "off"]
    assert main(argv) == 0
    assert "per adapter (a classifier's adapter carries its own head" in capsys.readouterr().out
    b_cls = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b", num_labels=3)
    loaded = PeftModel.from_pretrained(b_cls, tmp_path / "out" / "cls")
    assert loaded.peft_config["default"].task_type == "SEQ_CLS"
    head = loaded.base_model.model.classifier.modules_to_save["default"].weight
    assert head.shape == (3, 48) and head[:, 32:].abs().max() == 0  # A's head on B's features
    assert main([*argv, "--overwrite", "--val", "4"]) == 2
    assert "--val and --scales score against labels" in capsys.readouterr().err


def test_the_table_form_takes_a_classifier_adapter_as_a_ft_merged(tmp_path, capsys):
    """tasklift transfer A ADAPTER B DATA (a SEQ_CLS adapter as A_FT): every method runs on
    A + adapter merged, whose own row scores what the merged model predicts on the test rows."""
    import numpy as np

    from conftest import WORDS, tiny_tokenizer
    from tasklift.cli import main
    from tasklift.data import load_dataset, split
    from tasklift.lora import merged
    from test_lora import _bert

    a, b = _bert(), _bert(hidden=48, layers=3, seed=1)
    for name, model in (("a", a.bert), ("b", b.bert)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(WORDS).save_pretrained(tmp_path / name)
    _adapter(a, tmp_path / "cls", task_type="SEQ_CLS", targets=["query", "value"])
    rows = [(" ".join(WORDS[i : i + 6]), i % 3) for i in range(30)]
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    paths = [str(tmp_path / p) for p in ("a", "cls", "b", "d.csv")]
    opts = ["--calib", "8", "--val", "6", "--test-size", "0.2", "--quiet", "--device", "cpu"]
    out = tmp_path / "out"
    assert main(["transfer", *paths, "-o", str(out), *opts, "--methods", "bico,naive"]) == 0
    got = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert np.isfinite(got["bico"]["accuracy"]) and got["naive"]["accuracy"] is None  # widths
    a_ft = merged(tmp_path / "a", tmp_path / "cls", device="cpu")
    _, test = split(load_dataset(str(tmp_path / "d.csv")), test_size=0.2, seed=0)
    enc = tiny_tokenizer(WORDS)(list(test.X), padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = a_ft(**enc).logits.argmax(-1).numpy()
    assert got["A fine-tuned"]["accuracy"] == pytest.approx(np.mean(pred == test.y))


def test_moving_adapters_checks_parameters_and_refuses_what_it_cannot_do(pair, tmp_path):
    """The shared path checks Transfer's parameters as `fit` does (tie_break 5 was solved with
    and cached), refuses token='word' in one line, and writes nothing for an adapter none of
    whose modules B has."""
    a, b, adapters = pair
    kw = dict(out=tmp_path / "out", map_cache=False)
    with pytest.raises(ValueError, match="tie_break"):
        Transfer(a, None, b, tie_break=5.0).move_adapters(adapters, PROMPTS, TARGETS, **kw)
    with pytest.raises(ValueError, match="token='word' pairs the words"):
        Transfer(a, None, b, token="word").move_adapters(adapters, PROMPTS, TARGETS, **kw)
    t = Transfer(a, None, b, processor=WordTokenizer(), block_map={0: 0, 1: 0, 2: 0})
    lone = _adapter(a, tmp_path / "late", r=2, seed=3, targets=["layers.1.self_attn.q_proj"])
    with pytest.raises(ValueError, match="nothing of .*late could be moved"):
        t.move_adapters([lone], PROMPTS, TARGETS, **kw)
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_partial_output(pair, tmp_path, monkeypatch):
    """All adapter folders and the manifest appear together: a write failing at the second
    adapter leaves no output folder (a rerun is not refused as someone else's folder)."""
    import tasklift.adapter_io as adapter_io

    real, written = adapter_io.write_adapter, []

    def fail_second(*args, **kw):
        if written:
            raise OSError(28, "No space left on device")
        written.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(adapter_io, "write_adapter", fail_second)
    with pytest.raises(OSError):
        _move(pair, tmp_path / "out", False)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    manifest, _ = _move(pair, tmp_path / "out", False)
    assert len(manifest["adapters"]) == 2


def test_cli_refuses_classifier_and_lm_adapters_together(pair, tmp_path, capsys):
    from tasklift.cli import main
    from test_lora import _bert

    a, b, adapters = pair
    cls = _adapter(_bert(), tmp_path / "cls", task_type="SEQ_CLS", targets=["query", "value"])
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    (tmp_path / "texts.csv").write_text("text\n" + "\n".join(PROMPTS) + "\n")
    paths = [tmp_path / "a", tmp_path / "b", adapters[0], cls, tmp_path / "texts.csv"]
    argv = ["transfer", *map(str, paths), "-o", str(tmp_path / "out"), *OPTS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mix classifier (SEQ_CLS) and causal-LM ones" in err and err.count("\n") == 1, err
