"""Tiny seeded HF models built from configs (hidden 32, 2 layers) and toy data; all offline."""

import csv

import numpy as np
import pytest
import torch
import transformers as tf

H, L, V = 32, 2, 50


def tiny_config(kind: str, num_labels: int = 3):
    common = dict(
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if kind == "bert":
        return tf.BertConfig(vocab_size=V, max_position_embeddings=64, **common)
    if kind == "roberta":
        return tf.RobertaConfig(vocab_size=V, max_position_embeddings=70, pad_token_id=1, **common)
    if kind == "vit":
        return tf.ViTConfig(image_size=16, patch_size=8, num_channels=3, **common)
    if kind == "deit":
        return tf.DeiTConfig(image_size=16, patch_size=8, num_channels=3, **common)
    if kind == "dinov2":  # its head reads [CLS] joined to the patch mean, both final-normed
        return tf.Dinov2Config(image_size=16, patch_size=8, num_channels=3, **common)
    if kind == "dinov2_registers":
        return tf.Dinov2WithRegistersConfig(
            image_size=16, patch_size=8, num_channels=3, num_register_tokens=2, **common
        )
    if kind == "clip_vision":
        return tf.CLIPVisionConfig(
            hidden_size=H,
            num_hidden_layers=L,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=16,
            patch_size=8,
        )
    if kind == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=V,
            dim=H,
            n_layers=L,
            n_heads=4,
            hidden_dim=64,
            num_labels=num_labels,
            dropout=0.0,
            attention_dropout=0.0,
        )
    raise KeyError(kind)


def tiny_classifier(kind: str, seed: int = 0, num_labels: int = 3):
    torch.manual_seed(seed)
    cfg = tiny_config(kind, num_labels)
    if kind == "clip_vision":  # CLIP's vision tower has no classification head in HF
        return tf.CLIPVisionModel(cfg).eval()
    if kind == "deit":  # transformers 5.23's Auto*.from_config misses DeiT; from_pretrained works
        return tf.DeiTForImageClassification(cfg).eval()
    vision = kind in ("vit", "deit", "dinov2", "dinov2_registers")
    cls = tf.AutoModelForImageClassification if vision else tf.AutoModelForSequenceClassification
    return cls.from_config(cfg).eval()


def tiny_tokenizer(words):
    """A WordPiece tokenizer over `words` (transformers 5 takes the vocab as a dict)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def nudged(model, seed=7, scale=0.05):
    """A 'fine-tuned' copy: every parameter (tied ones once) moved by seeded noise."""
    out = type(model)(model.config).eval()
    out.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def tiny_text_inputs(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (n, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 6:] = 0  # some padded rows, so mean pooling is exercised
    return {"input_ids": ids, "attention_mask": mask}


def _perm(n, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def permuted(model, kind):
    """The same function as `model` with its residual stream, heads and MLP units permuted.

    The rules name, per parameter, which of its axes live in the residual stream ("r"), in the
    head-blocked attention space ("h", heads reordered as blocks), in the MLP units ("m") or in
    the fused q|k|v space ("3"); everything else (vocab, positions, classes) stays.
    """
    d, heads = model.config.hidden_size, model.config.num_attention_heads
    r, m = _perm(d, 1), _perm(4 * d if kind == "gpt2" else model.config.intermediate_size, 2)
    h = (_perm(heads, 3)[:, None] * (d // heads) + torch.arange(d // heads)).flatten()
    index = {"r": r, "h": h, "m": m, "3": torch.cat([h, h + d, h + 2 * d])}
    rules = {  # name suffix -> axes of the weight (Linear: out, in; GPT-2 Conv1D: in, out)
        "bert": {
            "_embeddings.weight": ".r",
            "LayerNorm.weight": "r",
            "LayerNorm.bias": "r",
            "self.query.weight": "hr",
            "self.key.weight": "hr",
            "self.value.weight": "hr",
            "self.query.bias": "h",
            "self.key.bias": "h",
            "self.value.bias": "h",
            "attention.output.dense.weight": "rh",
            "attention.output.dense.bias": "r",
            "intermediate.dense.weight": "mr",
            "intermediate.dense.bias": "m",
            "layer.0.output.dense.weight": "rm",
            "layer.1.output.dense.weight": "rm",
            "output.dense.bias": "r",
            "pooler.dense.weight": "rr",
            "pooler.dense.bias": "r",
            "classifier.weight": ".r",
        },
        "gpt2": {
            "wte.weight": ".r",
            "wpe.weight": ".r",
            "ln_1.weight": "r",
            "ln_1.bias": "r",
            "ln_2.weight": "r",
            "ln_2.bias": "r",
            "ln_f.weight": "r",
            "ln_f.bias": "r",
            "c_attn.weight": "r3",
            "c_attn.bias": "3",
            "attn.c_proj.weight": "hr",
            "attn.c_proj.bias": "r",
            "c_fc.weight": "rm",
            "c_fc.bias": "m",
            "mlp.c_proj.weight": "mr",
            "mlp.c_proj.bias": "r",
            "score.weight": ".r",
        },
    }[kind]
    state = {}
    for key, t in model.state_dict().items():
        axes = next((v for k, v in rules.items() if key.endswith(k)), "")
        for dim, ax in enumerate(axes):
            if ax != ".":
                t = t.index_select(dim, index[ax])
        state[key] = t
    out = type(model)(model.config).eval()
    out.load_state_dict(state)
    return out


def tiny_images(n: int = 12, seed: int = 0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def saved_pair(tmp_path_factory):
    """A tiny BERT base folder and a 'fine-tuned' classifier folder made from it."""
    root = tmp_path_factory.mktemp("models")
    ft = tiny_classifier("bert")
    ft.save_pretrained(root / "ft")
    ft.bert.save_pretrained(root / "base")
    return root / "base", root / "ft"


def token_task(n: int, seed: int):
    """Label = which of the tokens 10/11/12 appears (once, at a random position) in the sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(13, V, (n, 10), generator=g)
    ids[:, 0] = 2  # a [CLS]-like start token
    y = torch.randint(0, 3, (n,), generator=g)
    pos = torch.randint(1, 10, (n,), generator=g)
    ids[torch.arange(n), pos] = 10 + y
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, y.numpy()


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """A random tiny BERT base, a copy fine-tuned on `token_task`, and train/test data, on disk."""
    from tasklift.finetune import finetune

    root = tmp_path_factory.mktemp("task")
    ft = tiny_classifier("bert", seed=1)
    ft.bert.save_pretrained(root / "base")
    Xtr, ytr = token_task(400, seed=1)
    Xte, yte = token_task(300, seed=2)
    finetune(ft, Xtr, ytr, epochs=6, lr=2e-3, batch_size=16)
    ft.save_pretrained(root / "ft")
    return root / "base", root / "ft", (Xtr, ytr), (Xte, yte)


WORDS = ["alpha", "beta", "gamma"] + [f"w{i}" for i in range(40)]


@pytest.fixture(scope="session")
def text_task(tmp_path_factory):
    """A tiny BERT with a real WordPiece tokenizer, fine-tuned on a word task, plus a CSV."""
    from tasklift.finetune import finetune

    root = tmp_path_factory.mktemp("cli")
    tok = tiny_tokenizer(WORDS)
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for _ in range(360):
        words = list(rng.choice(WORDS[3:], size=7))
        label = int(rng.integers(3))
        words.insert(int(rng.integers(8)), WORDS[label])
        texts.append(" ".join(words))
        labels.append(label)
    with (root / "data.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows(zip(texts, ["abc"[y] for y in labels], strict=True))
    ft = tiny_classifier("bert", seed=3)
    ft.bert.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    finetune(ft, texts, labels, tok, epochs=10, lr=5e-3, batch_size=16)
    ft.config.id2label, ft.config.label2id = (
        dict(enumerate("abc")),
        {c: i for i, c in enumerate("abc")},
    )
    ft.save_pretrained(root / "ft")
    tok.save_pretrained(root / "ft")
    return root
