"""MiniLM-L3 -> L6 on BBC News, draw 0, BiCo raw vs centred at one scale (1.0): do the two
transfers differ where the 3-draw run (summary.md) gave the same test accuracy in every draw at
different chosen scales? Prints both accuracies, how many test predictions differ, and the
module whose τ_B moved most. `python reports/centring/same_scale.py` (same_scale.md: its output).
"""

import sys
from pathlib import Path

import numpy as np

from tasklift.data import calibration_split
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from transfer_real import real_split  # noqa: E402

a_ft = "runs/real/minilm-l3_bbc_news_ft"
train, test = real_split("bbc_news", a_ft, "0.2")
calib, val, _ = calibration_split(train, calib=128, val=200, seed=0)
preds, taus = {}, {}
for c in (False, True):
    t = Transfer("minilm-l3", a_ft, "minilm-l6", center=c, scales=[1.0], max_length=64,
                 device="cpu", **PREVIOUS_DEFAULTS)  # fmt: skip
    t.fit(calib.X, calib.y, X_val=val.X[:20], y_val=val.y[:20])
    preds[c] = t.predict(test.X)
    taus[c] = {k: v.detach().clone() for k, v in t.task_vector_.deltas.items()}
    print(c, "test acc", np.mean(preds[c] == test.y), "val", t.val_scores_, flush=True)
print("predictions differ on", int((preds[False] != preds[True]).sum()), "of", len(test.y))
raw, centred = taus[False], taus[True]
k = max(raw, key=lambda k: float((raw[k] - centred[k]).norm()))  # the largest absolute change
print("largest tau_B change", k, float((raw[k] - centred[k]).norm() / raw[k].norm()))
