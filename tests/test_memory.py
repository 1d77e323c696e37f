"""The memory model (issue 21.3): components add up to the phases, models are the real
parameter counts, statistics scale as d_A·d_B and follow the adapted modules and the per-pass
cap, activations match autograd's saved tensors."""

import pytest
import torch
import transformers as tf

from tasklift.memory import ON_DEVICE, skeleton, transfer_memory
from tasklift.transfer.calibration import _activation_grads_only

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def qwen(width: int = 32, layers: int = 2, tied: bool = False, vocab: int = 64):
    return tf.Qwen2Config(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          tie_word_embeddings=tied)  # fmt: skip


def bert(width: int = 32, layers: int = 2):
    return tf.BertConfig(vocab_size=64, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=4,
                         max_position_embeddings=64)  # fmt: skip


def test_components_add_up_to_phases_and_peak():
    m = transfer_memory(qwen(32), qwen(48, 3), tokens=16, batch_size=4, adapted=ATTN, rank=4)
    comp, phases = m["components"], m["phases"]
    held = "source target task_vector statistics captures kept activations update".split()
    assert phases["calibrate"] == sum(comp[k] for k in held)
    assert phases["load"] == sum(comp[k] for k in ("finetuned", "source", "target", "task_vector"))
    for p in phases:
        assert m["device"][p] + m["host"][p] == phases[p]
    assert m["device"]["solve"] == sum(comp[k] for k in ("source", "target") if k in ON_DEVICE)
    assert m["peak"] == max(phases.values()) == phases[m["peak_phase"]]


@pytest.mark.parametrize("config", [qwen(32), qwen(40, 3, tied=True)])
def test_models_are_the_real_parameter_counts(config):
    real = sum(p.numel() for p in tf.AutoModelForCausalLM.from_config(config).parameters())
    m = transfer_memory(config, config, tokens=8, batch_size=2)
    assert m["params"] == (real, real)
    assert m["components"]["source"] == 4 * real
    half = transfer_memory(config, config, tokens=8, batch_size=2, model_dtype="bfloat16")
    assert half["components"]["target"] == 2 * real


def test_classifier_counts_heads_and_copies():
    config = bert(32, 3)
    config.num_labels = 3
    real = tf.AutoModelForSequenceClassification.from_config(config)
    m = transfer_memory(bert(32, 3), bert(48), tokens=8, batch_size=2, num_labels=3)
    comp = m["components"]
    assert comp["source"] == 4 * sum(p.numel() for p in real.parameters())
    backbones = sum(p.numel() for c in (real.bert, skeleton(bert(48), 3).bert)
                    for p in c.parameters())  # fmt: skip
    assert comp["copies"] == 4 * backbones


def test_kept_gradient_rows_are_what_a_classifier_calibration_keeps(monkeypatch):
    """A classifier's calibration keeps A's gradient rows from its first pass for its second
    (`calibration.HeadStep`): the model's bytes are those calibrate counts (position
    embeddings' counted per input, a tensor two signals share twice: an upper bound), capped."""
    from conftest import nudged
    from tasklift.transfer import Transfer
    from tasklift.transfer import calibration as cal

    configs = [bert(32, 3), bert(48)]
    for c in configs:
        c.num_labels = 3
    a, b = (tf.AutoModelForSequenceClassification.from_config(c).eval() for c in configs)
    counted = []
    real = cal._bytes
    monkeypatch.setattr(cal, "_bytes", lambda got: counted.append(real(got)) or counted[-1])
    X = {"input_ids": torch.randint(1, 60, (12, 8), generator=torch.Generator().manual_seed(0))}
    Transfer(a, nudged(a), b.bert, batch_size=4).fit(X)
    m = transfer_memory(configs[0], configs[1], tokens=8, inputs=12, num_labels=3)
    # a batch's gradient rows of A are among the kept ones: counted once (not when too few
    # inputs are kept for one batch: 2 inputs, batches of 4)
    few = transfer_memory(configs[0], configs[1], tokens=8, inputs=2, batch_size=4, num_labels=3)
    mine = transfer_memory(configs[0], configs[1], tokens=8, inputs=12, batch_size=4, num_labels=3)
    comps = few["components"], mine["components"]
    assert comps[0]["captures"] - comps[1]["captures"] == comps[1]["kept"] * 4 // 12 > 0
    # one gradient row per token of each input, but the position embeddings' (B = 1 for 4),
    # and the token-type embeddings' gradient is the word embeddings' (one tensor, kept once)
    broadcast = 3 * (4 - 1) * 8 * 32 * 4  # batches x inputs a batch shares x tokens x width
    shared = 3 * 4 * 8 * 32 * 4  # batches x inputs x tokens x width
    assert m["components"]["kept"] == sum(counted) + broadcast + shared > broadcast + shared
    capped = transfer_memory(configs[0], configs[1], tokens=2**20, inputs=2**10, num_labels=3)
    assert capped["components"]["kept"] == cal.KEEP_BYTES
    kw = dict(tokens=2**20, inputs=2**10, num_labels=3, max_stats_gb=0.5)
    assert transfer_memory(*configs, **kw)["components"]["kept"] == 2**29  # max_stats_gb caps it
    kw["max_stats_gb"] = 8  # above the default cap: the default holds
    assert transfer_memory(*configs, **kw)["components"]["kept"] == cal.KEEP_BYTES
    assert transfer_memory(qwen(32), qwen(48), tokens=8)["components"]["kept"] == 0  # no head


def _stats(m: dict) -> int:
    return m["components"]["statistics"]


def test_statistics_are_d_a_times_d_b_per_signal():
    # o_proj alone: its input (d_A × d_B) and output (d_A × d_B, two BiCo signals) per block
    one = dict(tokens=8, batch_size=2, adapted=("o_proj",), rank=4)
    f64 = dict(stats_dtype="float64", **one)
    for da, db in ((32, 32), (32, 64), (64, 96)):
        m = transfer_memory(qwen(da), qwen(db), **f64)
        assert _stats(m) == 2 * 3 * (da * db * 8 + (da + db) * 8)  # 2 blocks, 3 signals
    small, big = (_stats(transfer_memory(qwen(w), qwen(w), **f64)) for w in (64, 128))
    assert 3.9 < big / small <= 4  # quadratic in width (the float64 sums are linear)
    f32 = transfer_memory(qwen(64), qwen(96), **one)  # the default
    assert _stats(f32) == 2 * 3 * (64 * 96 * 4 + (64 + 96) * 8)


def test_centred_statistics_are_float64_and_linear_outputs_are_not_captured():
    one = dict(tokens=8, batch_size=2, adapted=("o_proj",), rank=4)
    centred = transfer_memory(qwen(64), qwen(96), center=True, **one)
    f64 = transfer_memory(qwen(64), qwen(96), stats_dtype="float64", **one)
    assert _stats(centred) == _stats(f64) == 2 * 3 * (64 * 96 * 8 + (64 + 96) * 8)
    # per block o_proj's input and output gradient are captured (16 tokens); its output's
    # statistics are mapped from the input's
    assert centred["components"]["captures"] == 2 * 2 * 16 * (64 + 96) * 4


def test_adapted_modules_shrink_statistics_and_tokens_scale_captures():
    kw = dict(tokens=8, batch_size=2)
    every = transfer_memory(qwen(32), qwen(48), **kw)
    attention = transfer_memory(qwen(32), qwen(48), adapted=ATTN, rank=8, **kw)
    assert _stats(attention) < _stats(every)
    assert attention["components"]["task_vector"] < every["components"]["task_vector"]
    longer = transfer_memory(qwen(32), qwen(48), adapted=ATTN, rank=8, tokens=32, batch_size=2)
    assert _stats(longer) == _stats(attention)
    for k in ("captures", "activations"):
        assert longer["components"][k] == 4 * attention["components"][k]


def test_max_stats_gb_caps_one_pass():
    whole = transfer_memory(qwen(64, 4), qwen(96, 6), tokens=8, batch_size=2)
    cap = _stats(whole) / 3 / 2**30
    capped = transfer_memory(qwen(64, 4), qwen(96, 6), tokens=8, batch_size=2, max_stats_gb=cap)
    assert whole["passes"] == 1 and capped["passes"] >= 3
    assert _stats(capped) <= cap * 2**30 < _stats(whole)
    assert capped["statistics_total"] == whole["statistics_total"] == _stats(whole)


def test_lazy_adapter_holds_only_merged_modules_and_none_with_targets_given():
    kw = dict(tokens=8, batch_size=2, adapted=ATTN, rank=4, label_free=True)
    eager = transfer_memory(qwen(32), qwen(48), **kw)
    lazy = transfer_memory(qwen(32), qwen(48), lazy=True, **kw)
    a = skeleton(qwen(32))
    merged = sum(p.numel() for n, p in a.named_parameters() if n.split(".")[-2] in ATTN)
    assert lazy["components"]["finetuned"] == 4 * merged
    assert lazy["phases"]["load"] < eager["phases"]["load"]
    given = transfer_memory(qwen(32), qwen(48), **{**kw, "label_free": False})
    assert given["components"]["finetuned"] == 0  # A_ft is never merged (Transfer.fit)


def test_activations_match_autograds_saved_tensors():
    """Two more blocks add what `_SAVED_D` / `_SAVED_F` predict, within 5% (a padded batch,
    as calibration batches are: SDPA then gets k and v at the query width)."""

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(qwen(128, layers, vocab=32)).eval()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 32, (2, 24))
        mask = torch.ones_like(ids)
        mask[1, 20:] = 0
        with (
            _activation_grads_only(model, True),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        return sum(seen.values())

    kw = dict(tokens=24, batch_size=2)
    predicted = [transfer_memory(qwen(128, n, vocab=32), qwen(128, n, vocab=32), **kw)
                 for n in (1, 3)]  # fmt: skip
    want = predicted[1]["components"]["activations"] - predicted[0]["components"]["activations"]
    assert saved(3) - saved(1) == pytest.approx(want, rel=0.05)


@pytest.mark.parametrize("name, params", [("llama-3.1-8b", 8_030_261_248),
                                          ("qwen2.5-7b", 7_615_616_512)])  # fmt: skip
def test_big_shapes_have_their_published_sizes(name, params):
    assert sum(p.numel() for p in skeleton(name).parameters()) == params
