"""One default BiCo fit on the real MiniLM-L6 -> L3 BBC pair (draw 0), timed, with the tasklift
source tree given: ab_fit.sh runs it on an earlier commit's tree and on this one, alternated.

    OMP_NUM_THREADS=1 python benchmarks/fit_once.py [--src DIR/src] [--pair minilm-l6:minilm-l3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
ap.add_argument("--pair", default="minilm-l6:minilm-l3")
ap.add_argument("--runs", default="runs/real", help="where the fine-tuned A are")
args = ap.parse_args()
sys.path.insert(0, args.src)  # the tree under test, ahead of the installed one
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from transfer_real import real_split  # noqa: E402

from tasklift.data import calibration_split  # noqa: E402
from tasklift.transfer import Transfer  # noqa: E402

a, b = args.pair.split(":")
a_ft = f"{args.runs}/{a}_bbc_news_ft"
train, _ = real_split("bbc_news", a_ft, "0.2")
calib, val, _ = calibration_split(train, calib=128, val=200, seed=0)
start = time.perf_counter()
t = Transfer(a, a_ft, b, method="bico", max_length=64, device="cpu")
t.fit(calib.X, calib.y, X_val=val.X, y_val=val.y)
fit_s = time.perf_counter() - start
phases = {k: round(v, 2) for k, v in t.timings_.items()}
print("RESULT " + json.dumps({"fit s": round(fit_s, 2), "scale": t.scale_, "phases": phases}))
