"""Decoder LMs (issue 19): tiny config-built Llama, Qwen2 (4 query heads, 2 KV heads), Gemma-3 and
GPT-2. A permuted copy's task vector is recovered exactly by BiCo (embeddings, RoPE attention
under GQA, SwiGLU, RMSNorm, Gemma's extra norms, tied or untied LM heads); wider and deeper
targets and label-free calibration run end to end."""

import numpy as np
import pytest
import torch
import transformers as tf

from conftest import nudged
from tasklift.families import family_of, roles
from tasklift.solvers import NULL_RTOL
from tasklift.taskvector import TaskVector
from tasklift.transfer import Transfer, calibrate, match_modules, solve_maps, transport
from tasklift.transfer.lm import IGNORE, choice_tokens, lm_encode, lm_loss

V = 64


#: every decoder family's config-built kinds (mistral shares Llama's entry, gemma2 Gemma-3's)
KINDS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2"]


def tiny_lm(kind: str, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4):
    """A tiny causal LM of `kind`, weights moved off their initialisation as if trained."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=V, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=2, intermediate_size=2 * hidden,
    )  # fmt: skip
    cfg = {
        "llama": lambda: tf.LlamaConfig(**common, tie_word_embeddings=False),
        "mistral": lambda: tf.MistralConfig(**common, tie_word_embeddings=False),
        "qwen2": lambda: tf.Qwen2Config(**common, tie_word_embeddings=False),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=8, tie_word_embeddings=False),
        "gemma2": lambda: tf.Gemma2Config(**common, head_dim=8, sliding_window=4),
        "gemma3": lambda: tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=4),
        "gpt2": lambda: tf.GPT2Config(vocab_size=V, n_embd=hidden, n_layer=layers, n_head=heads,
                                      n_positions=32, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0),
    }[kind]()  # fmt: skip
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    return nudged(model, seed=seed + 3, scale=0.2)


def _perm(n, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def permuted_lm(model):
    """The same function with the residual stream, the key/value heads (query heads following
    their group, and permuted inside it), and the FFN units permuted. Dimensions inside a head
    stay: RoPE pairs them."""
    cfg = model.config
    d, nq = cfg.hidden_size, cfg.num_attention_heads
    nkv = getattr(cfg, "num_key_value_heads", nq) if cfg.model_type != "gpt2" else nq
    hd = getattr(cfg, "head_dim", None) or d // nq
    r, m = _perm(d, 1), _perm(_ffn(model), 2)
    kv = _perm(nkv, 3)
    group = nq // nkv
    q_heads = torch.cat([kv[g] * group + _perm(group, 10 + g) for g in range(nkv)])
    blocks = lambda heads: (heads[:, None] * hd + torch.arange(hd)).flatten()  # noqa: E731
    index = {"r": r, "m": m, "q": blocks(q_heads), "k": blocks(kv)}
    index["3"] = torch.cat([index["q"], index["q"] + d, index["q"] + 2 * d])  # GPT-2's c_attn
    rules = {  # role -> axes of weight (Linear: out, in; GPT-2 Conv1D: in, out) and bias
        "tokens": (".r", None), "lm_head": (".r", None), "final_norm": ("r", "r"),
        "pre_attn_norm": ("r", "r"), "pre_ffn_norm": ("r", "r"), "post_attn_norm": ("r", "r"),
        "post_ffn_norm": ("r", "r"), "q": ("qr", "q"), "k": ("kr", "k"), "v": ("kr", "k"),
        "o": ("rq", "r"), "ffn_gate": ("mr", "m"), "ffn_in": ("mr", "m"), "ffn_out": ("rm", "r"),
        "qkv": ("r3", "3"),
    }  # fmt: skip
    conv = {"qkv": "r3", "o": "qr", "ffn_in": "rm", "ffn_out": "mr"}  # GPT-2 Conv1D: (in, out)
    state = model.state_dict()
    by_role = roles(model)
    for key in state:
        module, param = key.rsplit(".", 1)
        role = by_role.get(module, (None,))[0]
        if role is None and module.endswith("wpe"):
            role = "positions"
        axes = {"positions": (".r", None), "q_norm": ("", ""), "k_norm": ("", "")}.get(role)
        axes = axes or rules.get(role, ("", ""))
        ax = axes[0] if param == "weight" else axes[1]
        if cfg.model_type == "gpt2" and param == "weight" and role in conv:
            ax = conv[role]
        t = state[key]
        for dim, a in enumerate(ax or ""):
            if a != ".":
                t = t.index_select(dim, index[a])
        state[key] = t
    out = type(model)(cfg).eval()
    out.load_state_dict(state)
    return out


def _ffn(model):
    cfg = model.config
    return getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size


def token_batches(n_batches=6, size=12, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        ids = torch.randint(0, V, (size, length), generator=g)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.mark.parametrize("kind", KINDS)
def test_permuted_lm_computes_the_same_function(kind):
    a = tiny_lm(kind)
    ids = next(token_batches())["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(permuted_lm(a)(input_ids=ids).logits, a(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_bico_recovers_a_permuted_lm_task_vector(kind):
    """τ_B = P(τ_A) to 1e-4 for every parameter (LM head included: its vocabulary side maps by
    identity, never calibrated), and B + τ_B computes A_ft's logits."""
    a = tiny_lm(kind)
    a_ft = nudged(a)
    b, b_ft = permuted_lm(a), permuted_lm(a_ft)
    pairs = match_modules(a, b)
    cov = calibrate(
        a, b, pairs, token_batches(), lm_loss, signals=("input", "grad_output", "output")
    )
    assert not [k for k in cov if k[0] == "lm_head" and k[1].endswith("output")]  # vocab side
    tv = TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict())
    maps = solve_maps(a, b, pairs, cov, "bico", tie_break=NULL_RTOL)  # every direction a twin has
    tv_b = transport(tv, a, b, pairs, maps)
    expected = TaskVector.from_state_dicts(b.state_dict(), b_ft.state_dict())
    assert tv_b.deltas.keys() == expected.deltas.keys()
    for k, v in expected.deltas.items():
        torch.testing.assert_close(tv_b.deltas[k], v, atol=1e-4, rtol=0, msg=k)
    ids = next(token_batches(seed=5))["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(tv_b.apply_to(b)(input_ids=ids).logits,
                                   a_ft(input_ids=ids).logits, atol=1e-4, rtol=0)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_permutation_naive_and_gradfix_run_on_causal_lms(kind):
    """The other baselines on causal LMs, onto a permuted copy: re-basin (permutation) recovers
    τ_B = P(τ_A) exactly; naive re-applies τ_A as it is; GradFix keeps each entry of τ_A or
    zeroes it (a sign mask from B's gradients), some kept and some not."""
    a = tiny_lm(kind)
    a_ft = nudged(a)
    b = permuted_lm(a)
    X = {k: torch.cat([t[k] for t in token_batches(4)]) for k in ("input_ids", "attention_mask",
                                                                   "labels")}  # fmt: skip
    tv_a = TaskVector.from_state_dicts(a.state_dict(), a_ft.state_dict()).deltas
    want = TaskVector.from_state_dicts(b.state_dict(), permuted_lm(a_ft).state_dict()).deltas
    got = {m: Transfer(a, a_ft, b, method=m, scales=(1.0,), tie_break=1e-9).fit(X).task_vector_
           for m in ("permutation", "naive", "gradfix")}  # fmt: skip
    for k, v in want.items():
        torch.testing.assert_close(got["permutation"].deltas[k], v, atol=1e-6, rtol=0, msg=k)
        torch.testing.assert_close(got["naive"].deltas[k], tv_a[k], atol=0, rtol=0, msg=k)
        g = got["gradfix"].deltas[k]
        assert ((g == tv_a[k]) | (g == 0)).all(), k
    kept = [float((got["gradfix"].deltas[k] != 0).float().mean()) for k in want]
    assert 0 < np.mean(kept) < 1


def test_tied_embeddings_count_once_in_a_task_vector():
    a = tiny_lm("gemma3")
    assert a.config.tie_word_embeddings
    tv = TaskVector.from_state_dicts(a.state_dict(), nudged(a).state_dict())
    assert "model.embed_tokens.weight" in tv.deltas and "lm_head.weight" not in tv.deltas
    moved = tv.apply_to(a)
    torch.testing.assert_close(moved.lm_head.weight, nudged(a).lm_head.weight)  # added once


@pytest.mark.parametrize("kind", KINDS)
def test_wider_and_deeper_target_runs_end_to_end(kind):
    """A (2 layers × 32) -> B (3 layers × 48, 6 query heads): every method with a solver moves
    τ; B + τ_B keeps B's vocabulary and shapes, and its loss on A_ft's data is finite."""
    a = tiny_lm(kind)
    a_ft = nudged(a)
    b = tiny_lm(kind, seed=1, hidden=48, layers=3, heads=6)
    X = {
        k: torch.cat([bt[k] for bt in token_batches(3)])
        for k in ("input_ids", "attention_mask", "labels")
    }
    for method in ("bico", "activation", "gradient"):
        t = Transfer(a, a_ft, b, method=method, scales=(0.0, 1.0)).fit(X, X_val=X)
        assert t.lm_ and t.moved_params_ > 0.8 * t.source_params_, method
        assert set(t.val_scores_) == {0.0, 1.0} and np.isfinite(list(t.val_scores_.values())).all()
        assert (
            t.model_.get_output_embeddings().weight.shape == b.get_output_embeddings().weight.shape
        )


def test_gqa_layout_is_read_from_the_family():
    from tasklift.families import attention_blocks, head_counts

    a = tiny_lm("qwen2")
    assert family_of(a).name == "llama" and head_counts(a) == (4, 2)
    q, k, o = (f"model.layers.0.self_attn.{p}_proj" for p in "qko")
    assert attention_blocks(a, q, "q") == {"out": (1, 4, "q")}
    assert attention_blocks(a, k, "k") == {"out": (1, 2, "kv")}
    assert attention_blocks(a, o, "o") == {"in": (1, 4, "q")}
    g = tiny_lm("gemma3")
    assert roles(g)["model.layers.1.post_attention_layernorm"] == ("post_attn_norm", 1)
    assert roles(a)["model.layers.1.post_attention_layernorm"] == ("pre_ffn_norm", 1)  # Llama's


class WordTokenizer:
    """Just enough of a fast tokenizer: one token per character (offsets included)."""

    pad_token_id, eos_token_id, padding_side = 0, 1, "right"

    def get_vocab(self):
        return {chr(c): 2 + c % (V - 2) for c in range(32, 127)}

    def __call__(self, texts, padding=True, truncation=True, max_length=64,
                 return_offsets_mapping=False, return_tensors=None, **kw):  # fmt: skip
        ids = [[2 + (ord(c) % (V - 2)) for c in t][:max_length] for t in texts]
        width = max(map(len, ids))
        out = {
            "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
        }
        if return_offsets_mapping:
            out["offset_mapping"] = torch.tensor(
                [[(j, j + 1) for j in range(len(i))] + [(0, 0)] * (width - len(i)) for i in ids]
            )
        return out


def test_lm_encode_counts_the_loss_on_target_tokens_only():
    enc = lm_encode(["ab", "abcd"], ["XY", "Z"], WordTokenizer(), max_length=16)
    assert enc["input_ids"].shape == (2, 5)
    assert enc["labels"][0].tolist() == [IGNORE, IGNORE, enc["input_ids"][0, 2].item(),
                                         enc["input_ids"][0, 3].item(), IGNORE]  # fmt: skip
    assert (enc["labels"][1, :4] == IGNORE).all() and enc["labels"][1, 4] != IGNORE


def dummy_prefix_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A SentencePiece-style BPE that prepends "▁" to the text and writes spaces as "▁" (as
    Llama-2's and Mistral's do): " river" alone is "▁" + "▁river", after text "▁river"."""
    from tokenizers import Tokenizer, models, normalizers

    vocab, merges = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate("▁rivepanoAsw:")}}, []
    for word in ("river", "piano"):
        for i, ch in enumerate(word):
            merges.append(("▁" + word[:i], ch))
            vocab["▁" + word[: i + 1]] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return tf.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="</s>")


def test_label_words_are_tokenised_as_they_follow_a_prompt():
    """Alone, every word of a dummy-prefix tokenizer starts with "▁" (a collision that refused
    any choices); after a prompt, as lm_encode tokenises targets, each has its own token."""
    tok = dummy_prefix_tokenizer()
    assert tok.convert_ids_to_tokens(tok(" river", add_special_tokens=False)["input_ids"]) == [
        "▁",
        "▁river",
    ]
    got = choice_tokens([" river", " piano"], tok)
    assert tok.convert_ids_to_tokens(got) == ["▁river", "▁piano"]
    enc = lm_encode(["Answer:", "Answer:"], [" river", " piano"], tok, max_length=16)
    assert enc["labels"][enc["labels"] != IGNORE].tolist() == got  # the targets' first tokens
    with pytest.raises(ValueError, match=r"both start with token \d+ \('▁river'\) after a prompt"):
        choice_tokens([" river", " riverbank"], tok)


def test_label_free_calibration_uses_the_fine_tuned_models_own_continuations(monkeypatch):
    """Without y, the targets are A_ft's greedy continuations: the same τ_B as passing them."""
    import tasklift.transfer.lm as lm

    a = tiny_lm("llama")
    a_ft, b = nudged(a), permuted_lm(a)
    prompts = ["hello there", "abc", "a longer prompt", "xyz xyz"] * 3
    tok = WordTokenizer()
    made = lm.greedy_targets(a_ft, prompts, _GenTokenizer(), max_new_tokens=4)
    assert len(made) == len(prompts) and all(made)
    monkeypatch.setattr(lm, "greedy_targets", lambda *a, **k: made)
    kw = dict(scales=(1.0,), processor=tok, method="bico")
    free = Transfer(a, a_ft, b, **kw).fit(prompts)
    given = Transfer(a, a_ft, b, **kw).fit(prompts, made)
    for k, v in given.task_vector_.deltas.items():
        torch.testing.assert_close(free.task_vector_.deltas[k], v)


class _GenTokenizer(WordTokenizer):
    """WordTokenizer that also decodes (for generation)."""

    def __call__(self, texts, **kw):
        out = super().__call__(texts, **kw)
        return _Enc(out)

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(97 + int(i) % 26) for i in row) for row in ids]


class _Enc(dict):
    def to(self, device):
        return self


def test_gqa_maps_align_each_key_value_group_only_with_its_counterpart():
    """A (4 query / 2 KV heads of 8) -> B (6 query / 2 KV heads of 8): R_q, R_k and o's R_in are
    zero outside the matched KV groups' blocks, and each block is semi-orthogonal."""
    a = tiny_lm("llama")
    b = tiny_lm("llama", seed=1, hidden=48, layers=2, heads=6)
    pairs = match_modules(a, b)
    cov = calibrate(
        a, b, pairs, token_batches(), lm_loss, signals=("input", "grad_output", "output")
    )
    maps = solve_maps(a, b, pairs, cov, "bico")
    for name, side, (ga, gb) in (
        ("q_proj", 1, (16, 24)),
        ("k_proj", 1, (8, 8)),
        ("o_proj", 0, (16, 24)),
    ):
        r = maps[f"model.layers.0.self_attn.{name}"][side]
        blocks = [
            [r[i * ga : (i + 1) * ga, j * gb : (j + 1) * gb] for j in range(2)] for i in range(2)
        ]
        used = [[bool(blocks[i][j].abs().max() > 0) for j in range(2)] for i in range(2)]
        columns = [sum(col) for col in zip(*used, strict=True)]
        assert [sum(row) for row in used] == [1, 1] and columns == [1, 1], name  # a matching
        for i in range(2):
            for j in range(2):
                if used[i][j]:
                    blk = blocks[i][j]
                    torch.testing.assert_close(blk @ blk.T, torch.eye(ga), atol=1e-5, rtol=0)


def test_calibration_in_passes_under_a_memory_budget_gives_the_same_task_vector():
    """A budget smaller than one block's statistics: one pass per block (and one for the
    embeddings and heads), the same τ_B as a single pass; float32 statistics agree to 1e-4."""
    from tasklift.transfer.calibration import plan_passes

    a = tiny_lm("qwen2")
    a_ft, b = nudged(a), tiny_lm("qwen2", seed=1, hidden=48, layers=3, heads=6)
    X = {
        k: torch.cat([bt[k] for bt in token_batches(2)])
        for k in ("input_ids", "attention_mask", "labels")
    }
    pairs = match_modules(a, b)
    passes = plan_passes(a, b, pairs, ("input", "grad_output", "output"), 1.0)
    assert len(passes) == 4 and sum(map(len, passes)) == len(pairs)  # 3 blocks + the rest
    one = Transfer(a, a_ft, b, scales=(1.0,), stats_dtype="float64").fit(X)
    passes_64 = {"max_stats_gb": 1e-9, "stats_dtype": "float64"}
    for kw, tol in ((passes_64, 1e-6), ({"stats_dtype": "float32"}, 1e-4)):
        other = Transfer(a, a_ft, b, scales=(1.0,), **kw).fit(X)
        for k, v in one.task_vector_.deltas.items():
            torch.testing.assert_close(other.task_vector_.deltas[k], v, atol=tol, rtol=0, msg=k)


def test_a_causal_lm_folder_loads_with_its_head_and_one_without_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from tasklift.loading import load_model

    a = tiny_lm("llama")
    a.save_pretrained(tmp_path / "lm")
    model, _ = load_model(tmp_path / "lm", lm=True, device="cpu")
    ids = next(token_batches())["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, a(input_ids=ids).logits)
    weights = load_file(tmp_path / "lm" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("lm_head")},
              tmp_path / "lm" / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(ValueError, match="no trained LM head"):
        load_model(tmp_path / "lm", lm=True, device="cpu")


def test_lms_with_different_tokenizers_are_paired_by_words(tmp_path):
    """A (Llama, whole-word tokens) -> B (a wider Llama, every word in 2-3 pieces; a Qwen2
    config would make AutoTokenizer load its own class over these files): one-to-one token
    pairing is refused, words pair; the embeddings and LM head (other vocabularies) stay B's."""
    from conftest import WORDS, tiny_tokenizer
    from test_transfer import _piece_tokenizer

    folders = {}
    pairs = (("a", tiny_lm("llama"), tiny_tokenizer([*WORDS, ",", "!"])),
             ("b", tiny_lm("llama", seed=1, hidden=48), _piece_tokenizer()))  # fmt: skip
    for name, model, tok in pairs:
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        folders[name] = tmp_path / name
    nudged(tiny_lm("llama")).save_pretrained(tmp_path / "a_ft")
    tiny_tokenizer([*WORDS, ",", "!"]).save_pretrained(tmp_path / "a_ft")
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(WORDS, 5)) for _ in range(16)]
    targets = [" " + " ".join(rng.choice(WORDS, 2)) for _ in range(16)]
    kw = dict(source=folders["a"], finetuned=tmp_path / "a_ft", target=folders["b"], scales=[1.0])
    with pytest.raises(ValueError, match="'word'"):  # 9 and 16 tokens are no patch grids
        Transfer(**kw).fit(prompts, targets)
    t = Transfer(**kw, token="word").fit(prompts, targets)
    moved = set(t.task_vector_.deltas)
    assert moved and not any("embed_tokens" in k or "lm_head" in k for k in moved)
    assert any("layers.1.mlp.down_proj" in k for k in moved)
    from test_lora import _adapter  # A_ft as A's adapter: words paired with A's own tokenizer

    _adapter(tiny_lm("llama"), tmp_path / "adapter", r=2)
    t = Transfer(**{**kw, "finetuned": tmp_path / "adapter"}, token="word").fit(prompts, targets)
    assert t.task_vector_.deltas and t.save_adapter(tmp_path / "moved") == {}
