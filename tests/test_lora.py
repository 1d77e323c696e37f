"""LoRA fine-tunes of tiny causal LMs (PEFT): targets read from the family, the loss falls,
the adapter folder is reused for the same recipe, and the merged model equals the adapter's."""

import torch

from tasklift.lora import lora_finetune, lora_finetune_cached, lora_targets, merged
from test_lm import WordTokenizer, tiny_lm


class _Tok(WordTokenizer):
    def __call__(self, texts, **kw):
        return super().__call__([texts] if isinstance(texts, str) else texts, **kw)


PROMPTS = [f"q{i % 7} say:" for i in range(32)]
TARGETS = [" yes" if i % 7 < 3 else " no" for i in range(32)]


def test_targets_come_from_the_family_roles():
    assert lora_targets(tiny_lm("qwen2")) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"
    ]  # fmt: skip
    assert lora_targets(tiny_lm("gpt2")) == ["c_attn", "c_fc", "c_proj"]


def test_lora_learns_and_the_merged_model_equals_the_adapter(tmp_path):
    model = tiny_lm("llama")
    peft_model, losses = lora_finetune(model, PROMPTS, TARGETS, _Tok(), r=4, lr=5e-3, epochs=6,
                                       batch_size=8, max_length=32)  # fmt: skip
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 60, (3, 9))
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        dense = merged(tiny_lm("llama"), tmp_path / "adapter", device="cpu")
        torch.testing.assert_close(dense(input_ids=ids).logits, want, atol=1e-5, rtol=0)


def test_cached_adapter_is_reused_for_the_same_recipe(tmp_path, monkeypatch):
    import tasklift.loading

    monkeypatch.setattr(tasklift.loading, "load_model", lambda src, **k: (tiny_lm("qwen2"), _Tok()))
    kw = dict(r=2, epochs=1, batch_size=8, max_length=32)
    info = lora_finetune_cached("tiny", PROMPTS, TARGETS, tmp_path / "a", **kw)
    assert not info["reused"] and (tmp_path / "a" / "adapter_config.json").is_file()
    assert lora_finetune_cached("tiny", PROMPTS, TARGETS, tmp_path / "a", **kw)["reused"]
    again = lora_finetune_cached("tiny", PROMPTS, TARGETS, tmp_path / "a", overwrite=True,
                                 **{**kw, "r": 4})  # fmt: skip
    assert not again["reused"]
