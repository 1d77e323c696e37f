"""The reports/run_real.sh MiniLM-L6 bbc_news fine-tune (finetune_cached's recipe: 1,000 rows,
seed 0, lr 1e-4, 1 epoch, batch 16, 64 tokens), with the new head drawn after seeding torch
with HEAD_SEED instead of 0 -- as before 762843c, when the head came from an unseeded generator
and everything after it was seeded 0. Usage: ft_heads.py H OUT"""
import json, sys, time
from pathlib import Path
from tasklift._torch import seed_everything
from tasklift.data import load_dataset, split, subsample
from tasklift.finetune import _fingerprint, finetune
from tasklift.loading import load_model
from tasklift.probe import FineTuned

h, out = int(sys.argv[1]), Path(sys.argv[2])
ds = load_dataset("bbc_news")
train, test = split(ds, test_size=0.2, seed=0)
train = subsample(train, fraction=1000 / len(train), seed=0)
print("data sha", _fingerprint(train), flush=True)
t0 = time.time()
seed_everything(h)
model, tok = load_model("minilm-l6", head=True, num_labels=len(train.classes), device="cpu", dtype="fp32")
model.config.id2label = dict(enumerate(train.classes))
model.config.label2id = {c: i for i, c in enumerate(train.classes)}
losses = finetune(model, train.X, train.y, tok, lr=1e-4, epochs=1.0, batch_size=16, max_length=64, seed=0)
model.save_pretrained(out)
tok.save_pretrained(out)
acc = FineTuned(str(out), device="cpu").fit().score(test.X, test.y)
print(json.dumps({"head_seed": h, "seconds": round(time.time() - t0, 1), "acc": acc}), flush=True)
