"""Vision fallback base for the paper experiments: no pretrained vision encoder ships inside a
PyPI wheel, so this pretrains a small ViT here, on real data: scikit-learn's digits, classes
0-4 only, from the same seeded train split every tasklift command uses. The task it is then
fine-tuned on (all 10 digits) includes 5 classes it never saw labelled.

    python scripts/pretrain_vit_digits.py -o runs/vit_digits_base

The BiCo transfer pairs vary one thing at a time: --seed (same architecture, another
initialisation and data order), --hidden (width) or --layers (depth).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import transformers as tf

from tasklift._torch import seed_everything
from tasklift.data import load_dataset, split
from tasklift.finetune import finetune
from tasklift.io import atomic_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", default="runs/vit_digits_base")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    seed_everything(args.seed)
    train, _ = split(load_dataset("digits", image_size=args.image_size), test_size=0.2, seed=0)
    seen = train.subset(np.flatnonzero(train.y < 5))
    cfg = tf.ViTConfig(
        image_size=args.image_size,
        patch_size=4,
        num_channels=3,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=2 * args.hidden,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = tf.ViTForImageClassification(cfg)
    losses = finetune(
        model, seen.X, seen.y, epochs=args.epochs, lr=1e-3, batch_size=32, seed=args.seed
    )
    with torch.no_grad():
        pred = model(pixel_values=torch.as_tensor(seen.X[:256])).logits.argmax(-1).numpy()
    acc = (pred == seen.y[:256]).mean()
    print(
        f"pretrained on {len(seen)} digits 0-4: final loss {np.mean(losses[-10:]):.3f}, "
        f"train accuracy {acc:.3f}"
    )
    with atomic_dir(args.output) as tmp:
        model.vit.save_pretrained(tmp)  # the encoder alone: the 5-class head is discarded


if __name__ == "__main__":
    main()
