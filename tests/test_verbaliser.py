"""Task matrices on decoders answering in words (issue 19, item 3): the verbaliser head is the LM
head's rows for the label words' first tokens, so through the task-matrix path its logits are the
LM's own next-token logits on those tokens (left or right padding); at the last layer of the
fine-tuned LM itself a task matrix predicts what `verbalise` predicts; W is numpy's lstsq on
last-token embeddings; a saved matrix predicts without the fine-tuned model. The layer sweep
(`compare`, `tasklift eval --choices`) scores the fine-tuned LM as `verbalise` does."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import WORDS, nudged, tiny_classifier, tiny_tokenizer
from tasklift.cli import main
from tasklift.data import Dataset, split
from tasklift.experiments import compare
from tasklift.inference import TaskMatrixModel
from tasklift.loading import load_model
from tasklift.models import final_norm, num_layers
from tasklift.taskmatrix import TaskMatrix
from tasklift.transfer.lm import verbalise
from tasklift.verbaliser import Verbaliser
from test_lm import tiny_lm
from test_taskmatrix import last_token_states

CHOICES = [" alpha", " beta", " gamma", " w7"]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 9))) for _ in range(n)]


def _last(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token, whichever side pads."""
    return mask.shape[1] - 1 - mask.flip(1).argmax(1)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["qwen2", "llama", "gemma3"])
def test_verbaliser_logits_are_the_lms_own_next_token_logits_on_the_choices(kind, side):
    lm, tok = tiny_lm(kind, hidden=48), tiny_tokenizer(WORDS)
    if kind == "gemma3":  # Gemma-2-style final logit soft-capping, read from the config
        lm.config.final_logit_softcapping = 2.0
    tok.padding_side = side
    X = dict(tok(_texts(24), padding=True, return_tensors="pt"))
    head = Verbaliser.from_lm(lm, CHOICES, tok)
    assert head.tokens == tok.convert_tokens_to_ids([w.strip() for w in CHOICES])
    assert head.class_names == ["alpha", "beta", "gamma", "w7"]
    d, L = lm.config.hidden_size, num_layers(lm)
    path = TaskMatrixModel(lm, head, layer=L, weight=torch.eye(d), norm=final_norm(lm), pool="last")
    with torch.no_grad():
        want = lm(**X).logits[torch.arange(24), _last(X["attention_mask"])][:, head.tokens]
        torch.testing.assert_close(path(**X), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_a_task_matrix_at_the_last_layer_of_the_lm_itself_predicts_what_verbalise_does(kind):
    lm, tok = tiny_lm(kind), tiny_tokenizer(WORDS)
    texts = _texts(120)
    tm = TaskMatrix(lm, lm, layer=-1, pool="last", choices=CHOICES, processor=tok).fit(texts)
    want = verbalise(lm, texts, CHOICES, tok, max_length=64)
    assert len(set(want)) > 1  # the words compete: not one answer for every text
    np.testing.assert_array_equal(tm.predict(texts), want)
    assert list(tm.classes_) == [0, 1, 2, 3] and tm.class_names_ == ["alpha", "beta", "gamma", "w7"]
    assert tm.score(texts, want) == 1.0


def test_a_verbaliser_task_matrix_is_lstsq_on_last_tokens_and_saved_needs_no_finetuned(tmp_path):
    """Qwen2 base (4 query / 2 KV heads) layer 1 -> the fine-tuned LM's last block at the last
    attended token (left padding; RoPE makes other pad widths equal only to float error):
    numpy lstsq's W. Saved and loaded with the base alone, it
    predicts the same; named classes ({class: word}) travel with the file."""
    ft, base = tiny_lm("qwen2"), tiny_lm("qwen2", seed=5).model
    tok = tiny_tokenizer(WORDS)
    tok.padding_side = "left"
    texts = _texts(80, seed=1)
    choices = dict(zip("abcd", CHOICES, strict=True))
    tm = TaskMatrix(
        base, ft, layer=1, pool="last", choices=choices, processor=tok, batch_size=80
    ).fit(texts)  # one batch: the reference's padding, to the bit
    X = dict(tok(texts, padding=True, return_tensors="pt"))
    x, y = last_token_states(base, ft, X, _last(X["attention_mask"]))
    want = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(tm.maps_[1].coef_.T, want, atol=1e-6)
    tm.save(tmp_path / "tm.safetensors")
    back = TaskMatrix.load(tmp_path / "tm.safetensors", base=base, processor=tok)
    assert back.finetuned_model_ is None and back.class_names_ == list("abcd")
    np.testing.assert_array_equal(back.decision_function(texts), tm.decision_function(texts))
    with pytest.raises(ValueError, match="norm='finetuned' applies the fine-tuned model's"):
        TaskMatrix.load(tmp_path / "tm.safetensors", base=base, processor=tok, norm="finetuned")
    with pytest.raises(ValueError, match="was fitted with choices=.*load it without choices="):
        TaskMatrix.load(tmp_path / "tm.safetensors", base=base, processor=tok, choices=CHOICES)


def test_bad_choices_are_refused_in_one_line_naming_them_and_the_fix():
    lm, tok = tiny_lm("llama"), tiny_tokenizer(WORDS)
    texts = _texts(40)
    fit = lambda **kw: TaskMatrix(lm, lm, layer=-1, processor=tok, **kw).fit(texts)  # noqa: E731
    with pytest.raises(ValueError, match="' alpha' and 'alpha' both start with token 5 .*differ"):
        fit(pool="last", choices=[" alpha", " beta", "alpha"])
    with pytest.raises(ValueError, match="choice '' has no tokens"):
        fit(pool="last", choices=[" alpha", ""])
    with pytest.raises(ValueError, match="pool='last'"):
        fit(choices=CHOICES)
    with pytest.raises(ValueError, match="list of label words"):
        fit(pool="last", choices=" alpha, beta")
    clf = tiny_classifier("bert")
    with pytest.raises(ValueError, match="choices need a causal LM"):
        TaskMatrix(clf.bert, clf, choices=CHOICES, pool="last", processor=tok).fit(texts)


def test_cli_fit_with_choices_then_predict_without_the_finetuned_model(tmp_path, capsys):
    """`fit --choices` on a Llama LM folder (labels a, b, c answered ' alpha', ' beta', ' gamma');
    `predict` from the saved file after the fine-tuned folder is gone."""
    base = tiny_lm("llama")
    for name, model in (("base", base), ("ft", nudged(base, seed=2, scale=0.3))):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(WORDS).save_pretrained(tmp_path / name)
    data = tmp_path / "data.csv"
    rows = [f"{t},{'abc'[i % 3]}" for i, t in enumerate(_texts(90))]
    data.write_text("\n".join(["sentence,label", *rows]) + "\n")
    out = tmp_path / "tm.safetensors"
    argv = ["fit", str(tmp_path / "base"), str(tmp_path / "ft"), str(data), "--text-key",
            "sentence", "--quiet", "--pool", "last", "--layer", "2", "-o", str(out)]  # fmt: skip
    assert main([*argv, "--choices", " alpha, beta"]) == 2
    assert "2 choices [' alpha', ' beta'] for 3 classes ['a', 'b', 'c']" in capsys.readouterr().err
    assert main([*argv, "--choices", " alpha, beta, gamma"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "ft")
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), str(data), "--text-key", "sentence", "--quiet",
                 "-o", str(preds)]) == 0  # fmt: skip
    assert "accuracy" in capsys.readouterr().out
    with preds.open() as f:
        assert {r["prediction"] for r in csv.DictReader(f)} <= {"a", "b", "c"}


def qwen_tokenizer(texts: list[str]):
    """A byte-level BPE Qwen2Tokenizer trained on `texts`: a folder whose config says qwen2
    loads Qwen2Tokenizer whatever its tokenizer_config names (transformers 5), so tiny Qwen2
    folders need a real one."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"], show_progress=False,
    ))  # fmt: skip
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    return tf.Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges)


def qwen_pair(root) -> tuple:
    """A tiny Qwen2 LM (4 query / 2 KV heads, hidden 32, 2 layers) in root/base and its nudged
    copy, the 'fine-tuned' LM, in root/ft, both with a Qwen2 tokenizer: (base, ft, tokenizer)."""
    import transformers as tf

    tok = qwen_tokenizer(_texts(400, seed=9))
    torch.manual_seed(0)
    cfg = tf.Qwen2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=False,
    )  # fmt: skip
    base = nudged(tf.Qwen2ForCausalLM(cfg).eval(), seed=3, scale=0.2)
    ft = nudged(base, seed=2, scale=0.3)
    for name, model in (("base", base), ("ft", ft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return base, ft, tok


def _lm_task(root, n: int = 150) -> tuple[Dataset, Dataset]:
    """`qwen_pair` in root, the fine-tuned LM answering ' alpha' / ' beta' / ' gamma' for
    classes a, b, c; labels are what it answers, but wrong on every 4th text (so no method
    scores 1.0 by construction)."""
    _, ft, tok = qwen_pair(root)
    texts = _texts(n, seed=3)
    said = verbalise(ft, texts, CHOICES[:3], tok, max_length=64)
    assert len(set(said)) == 3  # the words compete
    y = np.where(np.arange(n) % 4 == 0, (said + 1) % 3, said)
    return split(Dataset(texts, y, ["a", "b", "c"], "toy"), seed=0)


def test_the_sweep_scores_a_verbaliser_lm_as_verbalise_does_and_maps_it_onto_itself(tmp_path):
    """The fine-tuned row is `verbalise`'s accuracy; with the fine-tuned LM as its own base the
    last-layer task matrix (W = I by lstsq) and head-only score the same."""
    train, test = _lm_task(tmp_path)
    ft, tok = load_model(tmp_path / "ft", lm=True)
    want = float((verbalise(ft, test.X, CHOICES[:3], tok, max_length=64) == test.y).mean())
    assert 0.5 < want < 1  # right on most, wrong on every 4th
    kw = dict(pool="last", max_length=64, device="cpu", choices=CHOICES[:3])
    rows = compare(tmp_path / "base", tmp_path / "ft", train, test, **kw)
    acc = {(r["method"], r["layer"]): r["accuracy"] for r in rows}
    assert acc[("fine-tuned", 2)] == want
    assert {m for m, _ in acc} == {"majority class", "fine-tuned", "head-only", "linear probe",
                                   "task matrix (lstsq)", "task matrix (ridge-CV)"}  # fmt: skip
    assert [i for m, i in acc if m == "task matrix (lstsq)"] == [0, 1, 2]
    fine = next(r for r in rows if r["method"] == "fine-tuned")
    assert [c["class"] for c in fine["per_class"]] == ["a", "b", "c"]
    itself = compare(tmp_path / "ft", tmp_path / "ft", train, test, alphas=(0.0,), **kw)
    acc = {(r["method"], r["layer"]): r["accuracy"] for r in itself}
    assert acc[("task matrix (lstsq)", 2)] == acc[("head-only", 2)] == want
    with pytest.raises(ValueError, match=r"4 choices \[.*\] for 3 classes \['a', 'b', 'c'\]"):
        compare(tmp_path / "base", tmp_path / "ft", train, test, **{**kw, "choices": CHOICES})


def test_cli_sweep_with_choices_writes_its_report_and_refuses_a_wrong_count(tmp_path, capsys):
    train, test = _lm_task(tmp_path, n=100)
    data = tmp_path / "data.csv"
    rows = [f"{t},{'abc'[y]}" for ds in (train, test) for t, y in zip(ds.X, ds.y, strict=True)]
    data.write_text("\n".join(["sentence,label", *rows]) + "\n")
    out = tmp_path / "sweep"
    paths = [str(tmp_path / "base"), str(tmp_path / "ft"), str(data), "-o", str(out)]
    argv = ["sweep", *paths, "--text-key", "sentence", "--quiet", "--pool", "last"]
    capsys.readouterr()  # the models' saving
    assert main([*argv, "--choices", " alpha, beta"]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 choices [' alpha', ' beta'] for 3 classes ['a', 'b', 'c']" in err
    assert "\n" not in err and not out.exists()
    assert main([*argv, "--choices", " alpha, beta, gamma"]) == 0
    assert "task matrix (lstsq), CV layer" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in results["rows"]}
    assert {"fine-tuned", "head-only", "linear probe", "task matrix (lstsq)"} <= methods
    assert (out / "report.md").is_file() and (out / "layer_sweep.png").is_file()
