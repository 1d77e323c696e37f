import pytest
import torch

from conftest import tiny_classifier
from tasklift.taskvector import TaskVector


def pair():
    base = tiny_classifier("bert", seed=0)
    ft = tiny_classifier("bert", seed=0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return base, ft


def test_apply_from_recovers_finetuned_and_leaves_base_untouched():
    base, ft = pair()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tv = TaskVector.from_state_dicts(base.state_dict(), ft.state_dict())
    out = tv.apply_to(base)
    for k, v in ft.state_dict().items():
        torch.testing.assert_close(out.state_dict()[k], v, atol=1e-6, rtol=0)
        torch.testing.assert_close(base.state_dict()[k], before[k], atol=0, rtol=0)


def test_arithmetic():
    base, ft = pair()
    tv = TaskVector.from_state_dicts(base.state_dict(), ft.state_dict())
    assert (tv + tv - 2 * tv).norm() == pytest.approx(0.0, abs=1e-7)
    assert (0.5 * tv).norm() == pytest.approx(tv.norm() / 2, rel=1e-6)
    assert (-tv).norm() == pytest.approx(tv.norm(), rel=1e-6)
    assert (sum([tv, tv, tv]) - 3 * tv).norm() == pytest.approx(0.0, abs=1e-6)  # __radd__
    half = tv.apply_to(base, scale=0.5)
    for k, v in half.state_dict().items():
        if k in tv.deltas:
            expected = base.state_dict()[k] + 0.5 * tv.deltas[k]
            torch.testing.assert_close(v, expected, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path):
    base, ft = pair()
    tv = TaskVector.from_state_dicts(base.state_dict(), ft.state_dict())
    tv.save(tmp_path / "tv.safetensors", source="tiny")
    back = TaskVector.load(tmp_path / "tv.safetensors")
    assert back.deltas.keys() == tv.deltas.keys()
    assert (back - tv).norm() == 0.0


def test_mismatches_are_errors():
    base, ft = pair()
    sd = ft.state_dict()
    wide = dict(sd, **{"classifier.weight": torch.zeros(5, 32)})
    with pytest.raises(ValueError, match="shapes differ.*classifier.weight"):
        TaskVector.from_state_dicts(base.state_dict(), wide)
    tv = TaskVector.from_state_dicts(base.state_dict(), sd)
    small = TaskVector.from_state_dicts({"a": torch.zeros(2)}, {"a": torch.ones(2)})
    both = tv + small  # a parameter one fine-tune left unchanged counts as zero there
    assert both.deltas.keys() == tv.deltas.keys() | {"a"}
    with pytest.raises(ValueError, match="deltas of shapes"):
        small + TaskVector({"a": torch.ones(3)})
    with pytest.raises(KeyError, match="no parameter"):
        small.apply_to(base)
    with pytest.raises(ValueError, match="only one model"):
        TaskVector.from_state_dicts({"a": torch.zeros(2)}, {"b": torch.ones(2)}, strict=True)
    other = tiny_classifier("vit")
    with pytest.raises((KeyError, ValueError)):
        tv.apply_to(other)


def test_a_scale_tried_in_place_leaves_a_bf16_model_exactly_as_it_was():
    base, ft = pair()
    tv = TaskVector.from_state_dicts(base.state_dict(), ft.state_dict())
    model = base.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for s in (0.25, 0.5, 1.0, 2.0):
        with tv.applied(model, scale=s):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
