"""LoRA fine-tunes of tiny causal LMs (PEFT): targets read from the family, the loss falls,
the adapter folder is reused for the same recipe, and the merged model equals the adapter's;
adapters of a decoder and of a BERT classifier (its head saved whole) moved to B as exact
rank-r PEFT folders that plain PEFT loads onto B."""

import copy

import numpy as np
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


def _adapter(model, folder, r=4, seed=5, task_type="CAUSAL_LM", targets=None):
    """A PEFT LoRA on `model` with random (not zero) factors, and for a classifier (SEQ_CLS) a
    random head saved whole, saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=8, target_modules=targets or lora_targets(model),
                        init_lora_weights=False, task_type=task_type)  # fmt: skip
    peft_model = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".modules_to_save." in name:  # the head PEFT saves whole: trained, not A's
                p.add_(0.5 * torch.randn_like(p))
    peft_model.save_pretrained(folder)
    return folder


def _saved_adapter_equals_the_transfer(t, b, folder, inputs: dict, r: int) -> dict:
    """t.save_adapter(folder) writes every pair at rank exactly r (nothing re-factorised), and
    plain PEFT loading it onto a copy of B computes t.model_, B + τ_B (1e-5); its config."""
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    assert t.save_adapter(folder) == {}
    weights = load_file(folder / "adapter_model.safetensors")
    downs = [k for k in weights if k.endswith(".lora_A.weight")]
    assert downs and len(downs) == len(t.task_vector_.deltas)
    for k in downs:
        up, down = weights[k.replace(".lora_A.", ".lora_B.")], weights[k]
        assert up.shape[1] == down.shape[0] == r
        assert torch.linalg.matrix_rank(up.double() @ down.double()) == r, k
    loaded = PeftModel.from_pretrained(copy.deepcopy(b), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, t.model_(**inputs).logits,
                                   atol=1e-5, rtol=0)  # fmt: skip
    return json.loads((folder / "adapter_config.json").read_text())


def test_an_adapter_moves_to_an_exact_lora_of_the_target(tmp_path):
    """A + LoRA -> B (a permuted copy of A): τ_B stays rank r (factors moved, never multiplied
    out), equals the permuted dense τ to 1e-4, and the written PEFT folder, loaded by plain PEFT
    onto B, computes B + τ_B (1e-5)."""
    from tasklift.taskvector import LowRank, TaskVector
    from tasklift.transfer import Transfer
    from test_lm import permuted_lm, token_batches

    a = tiny_lm("qwen2")
    adapter = _adapter(a, tmp_path / "adapter")
    a_ft = merged(a, adapter, device="cpu")
    b = permuted_lm(a)
    X = {
        k: torch.cat([t[k] for t in token_batches(4)])
        for k in ("input_ids", "attention_mask", "labels")
    }
    t = Transfer(a, adapter, b, scales=(1.0,)).fit(X)
    assert all(isinstance(v, LowRank) and v.rank == 4 for v in t.task_vector_.deltas.values())
    want = TaskVector.from_state_dicts(b.state_dict(), permuted_lm(a_ft).state_dict())
    assert t.task_vector_.deltas.keys() == want.deltas.keys()
    for k, v in want.deltas.items():
        torch.testing.assert_close(t.task_vector_.deltas[k].dense(), v, atol=1e-4, rtol=0, msg=k)
    _saved_adapter_equals_the_transfer(
        t, b, tmp_path / "moved", {"input_ids": X["input_ids"][:5]}, 4
    )


def test_an_lm_adapter_with_targets_is_never_merged_into_a_dense_a_ft(tmp_path, monkeypatch):
    """Targets given (here in the encoded batch), A_ft is never run, so A + adapter is not
    built (a model's memory less); label-free calibration generates from A_ft, so merges."""
    import pytest

    from tasklift.transfer import Transfer, estimator
    from test_lm import token_batches

    a = tiny_lm("qwen2")
    adapter = _adapter(a, tmp_path / "adapter")
    X = {k: torch.cat([t[k] for t in token_batches(2)]) for k in ("input_ids", "attention_mask")}
    X["labels"] = X["input_ids"].clone()

    def refuse(*args, **kw):
        raise AssertionError("A_ft merged")

    monkeypatch.setattr(estimator, "merged", refuse)
    t = Transfer(a, adapter, tiny_lm("qwen2", seed=1), scales=(1.0,)).fit(X)
    assert t.moved_params_ == t.source_params_ > 0
    with pytest.raises(AssertionError, match="A_ft merged"):
        t.fit(["alpha beta", "gamma"])  # no targets: A_ft's own continuations


def _bert(hidden=32, layers=2, seed=0):
    """A tiny config-built BERT sequence classifier of 3 classes."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=2 * hidden, num_labels=3,
                        max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return tf.BertForSequenceClassification(cfg).eval()


def test_a_classifier_adapter_moves_with_its_head_to_a_wider_deeper_bert(tmp_path):
    """Issue 20.2, encoder: a SEQ_CLS LoRA of BERT (query, value; r = 4; head saved whole) moved
    to a wider, deeper BERT as factors; the PEFT folder written for B holds every pair at rank
    4 and B's carried head (pooler and classifier, under PEFT's own key names), and plain PEFT
    on B's classifier computes tasklift's B + τ_B with that head (1e-5)."""
    from safetensors.torch import load_file

    from conftest import tiny_text_inputs
    from tasklift.taskvector import LowRank
    from tasklift.transfer import Transfer

    a, b = _bert(), _bert(hidden=48, layers=3, seed=1)
    adapter = _adapter(a, tmp_path / "adapter", task_type="SEQ_CLS", targets=["query", "value"])
    X = tiny_text_inputs(24)
    t = Transfer(a, adapter, b, scales=(1.0,)).fit(X)  # y: A_ft's own predictions
    assert len(t.task_vector_.deltas) == 6  # query and value of B's 3 blocks
    assert all(isinstance(v, LowRank) and v.rank == 4 for v in t.task_vector_.deltas.values())
    config = _saved_adapter_equals_the_transfer(t, b, tmp_path / "moved", X, 4)
    assert config["task_type"] == "SEQ_CLS" and config["target_modules"] == ["query", "value"]
    assert config["modules_to_save"] == ["bert.pooler.dense", "classifier"]
    head = [
        k for k in load_file(tmp_path / "moved" / "adapter_model.safetensors") if "lora" not in k
    ]
    assert sorted(head) == [f"base_model.model.{m}.{p}" for m in ("bert.pooler.dense", "classifier")
                            for p in ("bias", "weight")]  # fmt: skip


def test_a_classifier_adapter_moved_to_a_permuted_copy_recovers_tau(tmp_path):
    """B = A with its residual stream, heads and units permuted: the moved LoRA is A's LoRA
    permuted (1e-4) and B + τ_B predicts as A + adapter does."""
    from conftest import permuted, tiny_text_inputs
    from tasklift.taskvector import TaskVector
    from tasklift.transfer import Transfer
    from test_transfer import trained_like

    a = trained_like(_bert())
    adapter = _adapter(a, tmp_path / "adapter", task_type="SEQ_CLS", targets=["query", "value"])
    a_ft, b = merged(a, adapter, device="cpu"), permuted(a, "bert")
    X = tiny_text_inputs(48)
    t = Transfer(a, adapter, b, scales=(1.0,), tie_break=1e-9).fit(X)  # a twin: see test_transfer
    want = TaskVector.from_state_dicts(b.state_dict(), permuted(a_ft, "bert").state_dict())
    assert t.task_vector_.deltas.keys() == {k for k in want.deltas if "classifier" not in k}
    for k, v in t.task_vector_.deltas.items():
        torch.testing.assert_close(v.dense(), want.deltas[k], atol=1e-4, rtol=0, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(t.decision_function(X)),
                                   a_ft(**X).logits, atol=1e-4, rtol=0)  # fmt: skip


def test_a_classifier_adapter_merges_onto_a_from_a_classifier_a_backbone_or_their_folders(
    tmp_path,
):
    """A_ft = A + adapter is the same classifier whether A comes as the classifier the adapter
    was trained on, its bare backbone (a new head of the adapter's 3 classes), or a folder of
    either; an adapter saving whole modules outside the head is refused in one line."""
    import pytest
    from safetensors.torch import load_file, save_file

    from conftest import tiny_text_inputs

    a = _bert()
    adapter = _adapter(a, tmp_path / "adapter", task_type="SEQ_CLS", targets=["query", "value"])
    a.save_pretrained(tmp_path / "a")
    a.bert.save_pretrained(tmp_path / "backbone")
    X = tiny_text_inputs(6)
    with torch.no_grad():
        want = merged(a, adapter, device="cpu")(**X).logits
        assert (want - a(**X).logits).abs().max() > 0.1  # the adapter and its head do something
        for base in (a.bert, tmp_path / "a", tmp_path / "backbone"):
            got = merged(base, adapter, device="cpu")(**X).logits
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=str(base))
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.bert.embeddings.LayerNorm.weight"] = torch.ones(32)
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"outside the classification head \(\['bert.embeddings"):
        merged(a, adapter, device="cpu")


def test_an_adapter_that_does_not_fit_the_source_is_refused(tmp_path):
    import pytest

    from tasklift.transfer import Transfer

    adapter = _adapter(tiny_lm("qwen2", hidden=48), tmp_path / "adapter")
    X = {"input_ids": torch.ones(2, 4, dtype=torch.long)}
    X = {**X, "attention_mask": X["input_ids"], "labels": X["input_ids"]}
    with pytest.raises(ValueError, match="does not fit A|cannot load|size mismatch"):
        Transfer(tiny_lm("qwen2"), adapter, tiny_lm("qwen2"), scales=(1.0,)).fit(X)


def test_check_reports_a_pair_and_refuses_an_adapter_that_does_not_fit(tmp_path, capsys):
    from tasklift.cli import main
    from tasklift.preflight import check_pair

    tiny_lm("llama").save_pretrained(tmp_path / "a")
    tiny_lm("llama", seed=1, hidden=48, layers=3, heads=6).save_pretrained(tmp_path / "b")
    assert main(["check", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "families: A llama, B llama" in out and "{0: 0, 1: 0, 2: 1}" in out, out
    assert "recommendation: bico" in out and "naive needs equal shapes" in out
    assert "  q: 2 / 3 / 3, (32, 32) -> (48, 48)" in out and "  k: 2 / 3 / 3, (32, 16)" in out
    assert "B's weights kept" not in out  # every module of B is paired
    report = check_pair(tiny_lm("qwen2"), tiny_lm("gemma3", seed=1, hidden=48, layers=3, heads=6))
    assert report["roles"]["q_norm"] == [0, 3, 0, None, (0, 8)]  # Gemma's own: B's kept
    assert len(report["unpaired_in_b"]) == 12 and report["roles"]["o"][:3] == [2, 3, 3]
    _adapter(tiny_lm("llama", hidden=48), tmp_path / "wrong")
    assert main(["check", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert "the adapter does not fit A" in err and err.count("\n") == 1, err


def test_check_pair_measures_cka_and_recommends_naive_only_for_close_weights():
    from tasklift.preflight import check_pair, linear_cka
    from test_lm import WordTokenizer, nudged, permuted_lm

    x = np.random.default_rng(0).normal(size=(50, 6))
    assert (
        abs(linear_cka(x, x @ np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))[0]) - 1)
        < 1e-9
    )
    a = tiny_lm("llama")
    texts = ["hello there", "a longer text here", "xyz", "more words to read"] * 3
    tok = (WordTokenizer(), WordTokenizer())
    permuted = check_pair(a, permuted_lm(a), tokenizers=tok, texts=texts)
    assert min(permuted["cka"].values()) > 0.999  # the same function, coordinates permuted
    assert permuted["recommendation"].startswith("bico")  # ... so re-applying τ would not do
    assert check_pair(a, nudged(a, scale=0.001), tokenizers=tok)["recommendation"].startswith(
        "naive"
    )


def test_a_dense_delta_is_written_at_rank_r_with_its_true_relative_error(tmp_path):
    """A dense τ (GradFix's masked delta: full rank) is written as a rank-r LoRA whose reported
    error is ‖τ − τ_written‖ / ‖τ‖ of the factors read back (Eckart–Young: σ beyond r)."""
    import pytest

    from tasklift.lora import read_adapter, write_adapter
    from tasklift.taskvector import TaskVector

    tv, config = read_adapter(_adapter(tiny_lm("llama"), tmp_path / "a", r=4))
    g = torch.Generator().manual_seed(0)
    dense = {k: v.dense() * (torch.rand(v.dense().shape, generator=g) > 0.5)
             for k, v in tv.deltas.items()}  # fmt: skip
    errors = write_adapter(tmp_path / "b", TaskVector(dense), config, "B")
    back, _ = read_adapter(tmp_path / "b")
    for k, v in dense.items():
        true = float((v - back.deltas[k].dense()).norm() / v.norm())
        assert 0.05 < true < 1 and errors[k.removesuffix(".weight")] == pytest.approx(true, 1e-4)


def test_adapters_of_other_kinds_are_refused_and_a_layers_choice_is_not_carried(tmp_path):
    import json

    import pytest

    from tasklift.lora import read_adapter, write_adapter

    folder = _adapter(tiny_lm("llama"), tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    tv, _ = read_adapter(folder)
    write_adapter(tmp_path / "b", tv, {**config, "layers_to_transform": [0]}, "B")
    written = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert "layers_to_transform" not in written and written["base_model_name_or_path"] == "B"
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        read_adapter(folder)
    (folder / "adapter_config.json").write_text(
        json.dumps({**config, "modules_to_save": ["lm_head"]})
    )
    with pytest.raises(ValueError, match=r"\['modules_to_save'\] set.*only for a SEQ_CLS head"):
        read_adapter(folder)  # a causal LM's lm_head saved whole is not moved


def test_many_adapters_move_with_one_calibration_as_each_would_alone(tmp_path):
    """Three adapters of A -> B (wider, deeper) with one calibration: each written PEFT folder
    equals moving that adapter on its own with the same calibration (1e-6), and the manifest
    says what went where; label-free calibration (per adapter) needs text prompts."""
    import json

    import pytest

    from tasklift.transfer import Transfer
    from test_lm import token_batches

    a = tiny_lm("qwen2")
    b = tiny_lm("qwen2", seed=1, hidden=48, layers=3, heads=6)
    adapters = []
    for i in range(3):
        adapters.append(_adapter(a, tmp_path / f"task{i}", r=2 + i, seed=10 + i))
    X = {
        k: torch.cat([t[k] for t in token_batches(3)])
        for k in ("input_ids", "attention_mask", "labels")
    }
    t = Transfer(a, None, b, scales=(1.0,))
    records = t.move_adapters(adapters, X, out=tmp_path / "moved", map_cache=False)
    assert [r["moved_to"] for r in records] == [
        str(tmp_path / "moved" / f"task{i}") for i in range(3)
    ]
    manifest = json.loads((tmp_path / "moved" / "tasklift_run.json").read_text())
    assert manifest["kind"] == "moved adapters" and len(manifest["adapters"]) == 3
    from tasklift.lora import read_adapter

    for i, folder in enumerate(adapters):
        alone = Transfer(a, folder, b, scales=(1.0,)).fit(X)
        many, _ = read_adapter(tmp_path / "moved" / f"task{i}")
        for k, v in alone.task_vector_.deltas.items():
            torch.testing.assert_close(many.deltas[k].dense(), v.dense(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="raw text prompts"):
        t.move_adapters(adapters, {k: X[k] for k in ("input_ids", "attention_mask")},
                        out=tmp_path / "again")  # fmt: skip


def test_a_recipe_with_a_tuple_of_modules_is_reused(tmp_path, monkeypatch):
    import tasklift.loading

    monkeypatch.setattr(tasklift.loading, "load_model", lambda src, **k: (tiny_lm("qwen2"), _Tok()))
    kw = dict(r=2, epochs=1, batch_size=8, max_length=32, modules=("q_proj", "v_proj"))
    assert not lora_finetune_cached("tiny", PROMPTS, TARGETS, tmp_path / "a", **kw)["reused"]
    assert lora_finetune_cached("tiny", PROMPTS, TARGETS, tmp_path / "a", **kw)["reused"]


def test_check_takes_a_classifier_adapter_with_its_classifier(tmp_path, capsys):
    """`tasklift check A B CLS_ADAPTER`: A as the SEQ_CLS classifier the adapter fits (not a
    causal LM); an adapter of another width is refused in one line."""
    from tasklift.cli import main

    a, b = _bert(), _bert(hidden=48, layers=3, seed=1)
    a.save_pretrained(tmp_path / "a")
    b.bert.save_pretrained(tmp_path / "b")  # B as a bare backbone, as users hold it
    _adapter(a, tmp_path / "adapter", task_type="SEQ_CLS", targets=["query", "value"])
    args = ["check", str(tmp_path / "a"), str(tmp_path / "b")]
    assert main([*args, str(tmp_path / "adapter")]) == 0
    out = capsys.readouterr().out
    assert "recommendation: bico" in out and "{0: 0, 1: 0, 2: 1}" in out, out
    _adapter(_bert(hidden=48), tmp_path / "wrong", task_type="SEQ_CLS", targets=["query"])
    assert main([*args, str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert "adapter" in err and err.count("\n") == 1, err
