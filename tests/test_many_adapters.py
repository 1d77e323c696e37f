"""Many adapters, one calibration (issue 20): the maps A -> B are cached on disk and reused
bit for bit without calibrating; any change to the data, B, the method or the token limit
misses; a damaged entry is recomputed with a warning; label-free and GradFix runs are per
adapter; `tasklift transfer A B ADAPTER... DATA` writes PEFT folders and a manifest."""

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


def test_the_cache_misses_when_data_b_method_or_token_limit_change(pair, tmp_path, calls):
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


def test_cli_moves_two_adapters_to_peft_folders_and_a_manifest(tmp_path, capsys):
    """Llama (4 query / 2 KV heads): a Qwen2 config would load its own tokenizer class over
    the tiny WordPiece files."""
    from peft import PeftModel

    from conftest import WORDS, tiny_tokenizer
    from tasklift.cli import main

    a, b = tiny_lm("llama"), tiny_lm("llama", seed=1, hidden=48, layers=3)
    for name, model in (("a", a), ("b", b)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(WORDS).save_pretrained(tmp_path / name)
    adapters = [str(_adapter(a, tmp_path / f"task{i}", r=2, seed=i)) for i in range(2)]
    (tmp_path / "texts.csv").write_text(
        "text\n" + "\n".join(" ".join(WORDS[i : i + 6]) for i in range(20)) + "\n"
    )
    paths = [str(tmp_path / "a"), str(tmp_path / "b"), *adapters, str(tmp_path / "texts.csv")]
    opts = ["--calib", "8", "--methods", "activation", "--quiet", "--device", "cpu"]
    opts += ["--map-cache", str(tmp_path / "cache")]
    assert main(["transfer", *paths, "-o", str(tmp_path / "out"), *opts]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 8 texts and cached in" in printed, printed
    manifest = json.loads((tmp_path / "out" / "tasklift_run.json").read_text())
    assert [r["moved_to"] for r in manifest["adapters"]] == [
        str(tmp_path / "out" / f"task{i}") for i in range(2)
    ]
    assert manifest["method"] == "activation" and manifest["target"] == str(tmp_path / "b")
    for i in range(2):
        loaded = PeftModel.from_pretrained(b, tmp_path / "out" / f"task{i}")
        assert loaded.peft_config["default"].base_model_name_or_path == str(tmp_path / "b")
        b = loaded.unload()
    assert main(["transfer", *paths, "-o", str(tmp_path / "out2"), *opts]) == 0
    assert "(no calibration)" in capsys.readouterr().out
    wrong = [*paths[:3], str(tmp_path / "b"), *paths[3:]]  # a model among the adapters
    assert main(["transfer", *wrong, "-o", str(tmp_path / "out3"), *opts]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b'} is no PEFT adapter folder" in err and err.count("\n") == 1, err
    assert main(["transfer", *paths, "-o", str(tmp_path / "out4"), *opts, "--probe"]) == 2
    assert "--probe" in capsys.readouterr().err
