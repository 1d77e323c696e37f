import json

import numpy as np

from conftest import tiny_classifier, token_task
from tasklift.data import Dataset
from tasklift.finetune import finetune, finetune_cached
from tasklift.probe import FineTuned


def test_finetune_learns_a_token_task():
    model = tiny_classifier("bert", seed=1)
    X, y = token_task(400, seed=1)
    losses = finetune(model, X, y, epochs=6, lr=2e-3, batch_size=16)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    Xt, yt = token_task(200, seed=2)
    assert (model(**Xt).logits.argmax(-1).numpy() == yt).mean() > 0.8


def test_finetune_cached_names_labels_and_reuses_the_same_recipe(tmp_path):
    tiny_classifier("bert", seed=1).bert.save_pretrained(tmp_path / "base")
    X, y = token_task(64, seed=3)
    train = Dataset(X, y, ["red", "green", "blue"], "tokens", "generated")
    info = finetune_cached(tmp_path / "base", train, tmp_path / "ft", epochs=1, lr=1e-3)
    assert info["reused"] is False and info["final_loss"] > 0
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "red", "1": "green", "2": "blue"}
    again = finetune_cached(tmp_path / "base", train, tmp_path / "ft", epochs=1, lr=1e-3)
    assert again["reused"] is True
    assert (
        finetune_cached(tmp_path / "base", train, tmp_path / "ft", epochs=2, overwrite=True)[
            "reused"
        ]
        is False
    )
    assert FineTuned(tmp_path / "ft").fit().class_names_ == ["red", "green", "blue"]


def test_the_same_recipe_gives_the_same_model_bit_for_bit(tmp_path):
    """The new head is drawn after seeding (it was drawn from torch's per-process seed, so two
    runs of one command differed by up to 0.1 in weights and 8 points in accuracy)."""
    import torch
    from safetensors.torch import load_file

    tiny_classifier("bert", seed=1).bert.save_pretrained(tmp_path / "base")
    X, y = token_task(48, seed=3)
    train = Dataset(X, y, ["red", "green", "blue"], "tokens", "generated")
    for out in ("one", "two"):
        torch.rand(7)  # the global RNG moved on between the runs
        finetune_cached(tmp_path / "base", train, tmp_path / out, epochs=1, lr=1e-3)
    one, two = (load_file(tmp_path / o / "model.safetensors") for o in ("one", "two"))
    assert all(torch.equal(one[k], two[k]) for k in one)
