"""Many adapters, one calibration (issue 20): N LoRA adapters of A moved to B by
`Transfer.move_adapters` (one calibration, maps applied to all N; a fresh map cache) vs the same
N moved again with the maps read from that cache (no calibration) vs N independent transfers
(`Transfer(A, adapter, B).fit` each), side by side in one run, on config-built Qwen2 models
(A: 4 layers x 128, B: 6 layers x 192, 4/2 heads; random weights: the cost, not the accuracy, is
measured here). Writes results/adapters.{json,md} (other --sizes than the default only print).

    python benchmarks/bench_adapters.py [--sizes 1]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf
from _common import markdown_table, write
from peft import LoraConfig, get_peft_model

from tasklift.lora import lora_targets
from tasklift.transfer import Transfer
from tasklift.transfer.methods import PREVIOUS_DEFAULTS


def model(hidden: int, layers: int, seed: int):
    torch.manual_seed(seed)
    cfg = tf.Qwen2Config(vocab_size=512, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)  # fmt: skip
    return tf.Qwen2ForCausalLM(cfg).eval()


def adapter(a, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=lora_targets(a),
                        init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
    get_peft_model(copy.deepcopy(a), config).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4,16", help="numbers of adapters, comma-separated")
    sizes = [int(n) for n in ap.parse_args().sizes.split(",")]
    a, b = model(128, 4, 0), model(192, 6, 1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (64, 32), generator=g)
    X = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = [adapter(a, tmp / f"a{i}", seed=i) for i in range(max(sizes))]
        for n in sizes:
            cache = tmp / f"maps{n}"  # cold for the first run, warm for the second
            seconds = []
            for run in ("cold", "warm"):
                t0 = time.perf_counter()
                Transfer(a, None, b, batch_size=16, **PREVIOUS_DEFAULTS).move_adapters(
                    folders[:n], X, out=tmp / f"m{n}{run}", map_cache=cache
                )
                seconds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for f in folders[:n]:
                Transfer(a, f, b, batch_size=16, scales=(1.0,), **PREVIOUS_DEFAULTS).fit(X)
            alone = time.perf_counter() - t0
            together, warm = seconds
            rows.append({"adapters": n, "one calibration (s)": round(together, 2),
                         "s per adapter": round(together / n, 2),
                         "cached maps (s)": round(warm, 2),
                         "cached: s per adapter": round(warm / n, 3),
                         "independent transfers (s)": round(alone, 2),
                         "saving": f"{alone / together:.1f}x",
                         "saving, cached": f"{alone / warm:.1f}x"})  # fmt: skip
    if sizes != [1, 4, 16]:
        print(markdown_table(rows, list(rows[0])))
        return
    write("adapters", rows, list(rows[0]), title="Many adapters, one calibration",
          notes=__doc__.split("\n\n")[0])  # fmt: skip


if __name__ == "__main__":
    main()
