import pytest
import torch

from conftest import tiny_classifier, tiny_images, tiny_text_inputs, tiny_tokenizer
from tasklift.extract import embed, iter_embeddings, resolve_layers
from tasklift.hooks import capture, run
from tasklift.models import blocks


def reference(model, inputs, pool):
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    mask = inputs.get("attention_mask")
    if pool == "cls":
        return [h[:, 0] for h in hs]
    m = torch.ones(hs[0].shape[:2]) if mask is None else mask
    m = m[..., None].float()
    return [(h * m).sum(1) / m.sum(1) for h in hs]


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "vit", "deit", "clip_vision"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_all_layers_equal_output_hidden_states(kind, pool):
    model = tiny_classifier(kind)
    vision = kind in ("vit", "deit", "clip_vision")
    inputs = {"pixel_values": tiny_images()} if vision else tiny_text_inputs()
    ref = reference(model, inputs, pool)
    got = embed(model, inputs, layers="all", pool=pool, batch_size=5)
    assert sorted(got) == list(range(len(ref)))
    for i, r in enumerate(ref):
        torch.testing.assert_close(got[i], r.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_registers"])
def test_cls_mean_pool_is_exactly_what_dinov2s_classifier_reads(kind):
    """Each token through the final norm, then [CLS] joined to the patch tokens' mean (register
    tokens left out): HF's classifier on the last layer's pooled vector gives HF's logits."""
    model = tiny_classifier(kind)
    pixels = tiny_images()
    got = embed(model, pixels, layers="all", pool="cls+mean", batch_size=5)
    assert all(v.shape == (12, 64) for v in got.values())  # 2 x hidden at every layer
    with torch.no_grad():
        want = model(pixel_values=pixels).logits
        torch.testing.assert_close(model.classifier(got[2]), want, atol=1e-5, rtol=1e-5)


def test_cls_mean_pool_of_text_averages_the_attended_tokens_after_cls():
    model = tiny_classifier("bert")  # post-LN: no final norm to apply
    inputs = tiny_text_inputs()
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    m = inputs["attention_mask"][:, 1:, None].float()
    got = embed(model, inputs, layers="all", pool="cls+mean", batch_size=5)
    for i, h in enumerate(hs):
        want = torch.cat([h[:, 0], (h[:, 1:] * m).sum(1) / m.sum(1)], -1)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


def test_early_stop_gives_same_values_and_skips_later_blocks():
    model = tiny_classifier("bert")
    inputs = tiny_text_inputs()
    calls = []
    handle = blocks(model)[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        got = embed(model, inputs, layers=[1])
    finally:
        handle.remove()
    assert calls == []  # block 2 never ran
    torch.testing.assert_close(got[1], reference(model, inputs, "cls")[1])


def test_streaming_yields_batches():
    model = tiny_classifier("bert")
    sizes = [
        out[2].shape[0] for _, out in iter_embeddings(model, tiny_text_inputs(11), batch_size=4)
    ]
    assert sizes == [4, 4, 3]


def test_hooks_removed_even_after_exception():
    model = tiny_classifier("bert")
    block = blocks(model)[0]

    def boom(key, h):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with capture({0: (block, "output")}, boom):
            run(lambda: model(**tiny_text_inputs(2)))
    assert not block._forward_hooks and not block._forward_pre_hooks


def test_bad_layers_and_inputs():
    model = tiny_classifier("bert")
    assert resolve_layers(model, "all") == [0, 1, 2]
    assert resolve_layers(model, -1) == [2]
    assert resolve_layers(model, "0,2") == [0, 2]
    with pytest.raises(ValueError, match="out of range.*0..2"):
        resolve_layers(model, 3)
    with pytest.raises(ValueError, match="empty"):
        next(iter_embeddings(model, []))
    with pytest.raises(ValueError, match="unknown pool"):
        next(iter_embeddings(model, tiny_text_inputs(), pool="max"))
    with pytest.raises(ValueError, match="pre-encoded"):
        next(iter_embeddings(model, ["some text"]))


def test_text_batches_by_token_count_come_back_in_input_order():
    tok = tiny_tokenizer([f"w{i}" for i in range(40)])
    texts = [
        " ".join(f"w{(i * 7 + j) % 40}" for j in range(n)) for i, n in enumerate([9, 2, 5, 1, 7, 3])
    ]
    texts.append("unknownwordthatislong")  # the most characters, but one token ([UNK])
    model = tiny_classifier("bert")
    got = embed(model, texts, tok, layers=[2], batch_size=2)[2]
    for i, t in enumerate(texts):  # one at a time: no padding, no reordering
        torch.testing.assert_close(
            got[i], embed(model, [t], tok, layers=[2])[2][0], atol=1e-5, rtol=1e-5
        )
    idx = [i for i, _ in iter_embeddings(model, texts, tok, layers=[2], batch_size=2)]
    counts = [len(tok(t)["input_ids"]) for t in texts]
    assert [counts[j] for b in idx for j in b] == sorted(counts)  # by tokens, not characters
