"""The memory model (`tasklift.memory`) against measured peak RSS, and projected to big pairs
(issue 21.3).

Measured here, each transfer in a process of its own: (a) a tiny config-built Qwen2 pair
(A 4x384 -> B 6x512, a LoRA r8 on every linear layer, pre-encoded tokens), in one pass with
float64 statistics and in passes of at most 0.1 GB of float32 statistics; (b) MiniLM-L6 -> L3,
a classifier transfer of every module on 64 BBC News texts. A process that imports and reads
everything the transfer does but does not fit gives the baseline (interpreter, torch, data),
subtracted from the transfer's peak. (c) Qwen2.5-Coder-0.5B -> 1.5B is not run: its peak RSS
is read from reports/llm/run_llm.py's records (runs/llm/bbc/transfer_q05_q15_*_0.json) when
they exist, and compared with the prediction plus the LM baseline ('record': run in this
checkout, or restored from the committed reports/llm/results.json, an earlier run). MiniLM's
A_ft is L6 with a new 5-class head and weights nudged off A's (memory does not depend on how it
was trained).

The projection: Qwen2.5-7B -> Llama-3.1-8B, Llama-3.1-8B -> 70B and 70B -> 70B (Llama-3.3-70B
has 3.1's shapes) from their published config numbers, bf16 models, float32 statistics in
passes of at most 64 GB of host memory, 4 x 256 tokens per batch, LoRA r16 adapters on
attention or on every linear layer; what one 80 GB GPU holds. GB = 2^30 bytes.

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from _common import RESULTS, machine

from tasklift.io import write_text
from tasklift.memory import transfer_memory
from tasklift.report import markdown_table
from tasklift.transfer.methods import PREVIOUS_DEFAULTS

GB = 2**30
ROOT = Path(__file__).resolve().parents[1]
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
LINEAR = (*ATTN, "gate_proj", "up_proj", "down_proj")
_QWEN = dict(vocab_size=4096, num_key_value_heads=2, tie_word_embeddings=False)
TINY = {
    "a": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6),
    "b": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8),
}
TOKENS, N_CAL, N_VAL = 64, 16, 8  # the tiny pair's inputs
#: measured cases: Transfer settings and what the memory model is told
CASES = {
    "tiny": dict(
        fit=dict(batch_size=8, scales=(1.0,), stats_dtype="float64"),
        model=dict(stats_dtype="float64"),
    ),  # fmt: skip
    "tiny, passes": dict(
        fit=dict(batch_size=8, scales=(1.0,), stats_dtype="float32", max_stats_gb=0.1),
        model=dict(stats_dtype="float32", max_stats_gb=0.1),
    ),
    "minilm": dict(
        fit=dict(batch_size=16, max_length=128, scales=(0.5, 1.0), **PREVIOUS_DEFAULTS),
        model=dict(stats_dtype=PREVIOUS_DEFAULTS["stats_dtype"]),
    ),  # fmt: skip
}
#: the second run of each case: glibc with a fixed mmap threshold (blocks of 128 kB or more are
#: mapped and go back to the system when freed, not kept in the heap for reuse)
MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}
LLM = dict(tokens=96, batch_size=4, adapted=ATTN, rank=8, stats_dtype="float32", max_stats_gb=9)


def _tiny_config(side: str) -> tf.Qwen2Config:
    return tf.Qwen2Config(**_QWEN, **TINY[side])


def prepare(folder: Path) -> None:
    """The checkpoints the measured processes load: the tiny pair and A's LoRA, MiniLM's A_ft."""
    from peft import LoraConfig, get_peft_model

    from tasklift.assets import prepare as prepare_asset
    from tasklift.loading import load_model

    torch.manual_seed(0)
    for side in ("a", "b"):
        tf.AutoModelForCausalLM.from_config(_tiny_config(side)).save_pretrained(folder / side)
    lora = get_peft_model(
        tf.AutoModelForCausalLM.from_pretrained(folder / "a"),
        LoraConfig(r=8, lora_alpha=16, target_modules=list(LINEAR), task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # PEFT starts B at zero: make τ_A non-zero
    lora.save_pretrained(folder / "adapter")
    prepare_asset("minilm-l3")  # converted from ONNX on first use: not inside a measurement
    a_ft, tok = load_model("minilm-l6", head=True, num_labels=5, device="cpu")
    with torch.no_grad():
        for p in a_ft.parameters():
            p.add_(0.01 * torch.randn_like(p))
    a_ft.save_pretrained(folder / "minilm_ft")
    tok.save_pretrained(folder / "minilm_ft")


def _inputs(case: str, folder: Path) -> tuple[dict, tuple]:
    """Transfer's models and (X, y, X_val, y_val) for `case`."""
    if case.startswith("tiny"):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, _QWEN["vocab_size"], (N_CAL + N_VAL, TOKENS), generator=g)
        rows = [dict(input_ids=i, attention_mask=torch.ones_like(i), labels=i.clone())
                for i in (ids[:N_CAL], ids[N_CAL:])]  # fmt: skip
        models = dict(source=str(folder / "a"), finetuned=str(folder / "adapter"))
        return {**models, "target": str(folder / "b")}, (rows[0], None, rows[1], None)
    from tasklift.data import load_dataset

    data = load_dataset("bbc_news")
    idx = np.random.default_rng(0).permutation(len(data.y))
    cal, val = idx[:64], idx[64:96]
    X = [data.X[i] for i in cal], data.y[cal], [data.X[i] for i in val], data.y[val]
    return dict(source="minilm-l6", finetuned=str(folder / "minilm_ft"), target="minilm-l3"), X


def _status(key: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    return int(Path("/proc/self/status").read_text().split(f"{key}:")[1].split()[0]) * 1024


def child(case: str, mode: str, folder: Path) -> None:
    """One measured process: what the transfer imports and reads, then (mode "transfer") the
    fit; prints its peak RSS and its RSS before the fit, in bytes. The peak is VmHWM, reset
    at the start: getrusage's ru_maxrss keeps the parent's peak across fork and exec."""
    Path("/proc/self/clear_refs").write_text("5")
    import peft  # noqa: F401  (the transfer imports it: part of the baseline)

    from tasklift.transfer import Transfer

    models, (X, y, X_val, y_val) = _inputs(case, folder)
    before = _status("VmRSS")
    if mode == "transfer":
        Transfer(**models, device="cpu", **CASES[case]["fit"]).fit(X, y, X_val=X_val, y_val=y_val)
    print(json.dumps({"peak": _status("VmHWM"), "before": before}))


def measure(case: str, mode: str, folder: Path, **env: str) -> dict:
    """Peak RSS and RSS before the fit (bytes) of `child` in a fresh process."""
    cmd = [sys.executable, __file__, "child", case, mode, str(folder)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **env})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def predict(case: str) -> dict:
    """The memory model's prediction for a measured case (float32 safetensors on CPU: lazy)."""
    if case.startswith("tiny"):
        kw = dict(tokens=TOKENS, batch_size=8, adapted=LINEAR, rank=8, **CASES[case]["model"])
        return transfer_memory(_tiny_config("a"), _tiny_config("b"), lazy=True, **kw)
    from tasklift.assets import model_path

    a, b = (tf.AutoConfig.from_pretrained(model_path(n)) for n in ("minilm-l6", "minilm-l3"))
    kw = CASES[case]["model"]  # the settings the measured fit used
    return transfer_memory(a, b, tokens=128, batch_size=16, inputs=64, num_labels=5, lazy=True,
                           **kw)  # fmt: skip


def _gb(x: float) -> float:
    return round(x / GB, 3)


def _row(case: str, pred: dict, measured: float, **extra) -> dict:
    comp = {k: _gb(v) for k, v in pred["components"].items() if v}
    return {"case": case, "predicted_gb": _gb(pred["peak"]), "phase": pred["peak_phase"],
            "measured_gb": _gb(measured), "ratio": round(pred["peak"] / measured, 2),
            "passes": pred["passes"], **extra, "components_gb": comp}  # fmt: skip


def checks(folder: Path) -> list[dict]:
    """Predicted vs measured peaks of (a), (b) and, where its records exist, (c)."""
    rows, base = [], {}
    for case in CASES:
        base[case] = measure(case, "baseline", folder)["peak"]
        got = measure(case, "transfer", folder)
        pred, fixed = predict(case), measure(case, "transfer", folder, **MMAP)["peak"] - base[case]
        extra = {"measured_gb, mmap": _gb(fixed), "ratio, mmap": round(pred["peak"] / fixed, 2),
                 "baseline_gb": _gb(base[case]), "before_fit_gb": _gb(got["before"])}  # fmt: skip
        rows.append(_row(case, pred, got["peak"] - base[case], **extra))
    configs = [tf.AutoConfig.from_pretrained(Path.home() / ".cache/tasklift" / f)
               for f in ("qwen2.5-coder-0.5b-0.9.0", "qwen2.5-coder-1.5b-0.2.0")]  # fmt: skip
    for path in sorted((ROOT / "runs/llm/bbc").glob("transfer_q05_q15_*_0.json")):
        record = json.loads(path.read_text())
        pred = transfer_memory(*configs, method=record["method"], lazy=True, **LLM)
        measured = record["peak_rss_gb"] * GB - base["tiny"]  # the LM process's own baseline
        case = f"qwen 0.5b -> 1.5b, {record['method']}"
        extra = dict(baseline_gb=_gb(base["tiny"]), fit_seconds=record["fit_seconds"],
                     record=record.get("restored", "run_llm.py in this checkout"),
                     peak_rss_gb=record["peak_rss_gb"], accuracy=record["accuracy"],
                     scale=record["scale"])  # fmt: skip
        rows.append(_row(case, pred, measured, **extra))
    return rows


def gpu_verdict(memory: dict, gpu_bytes: float = 80 * GB) -> str:
    """What a transfer of this prediction needs on GPUs of `gpu_bytes`: "fits", A_ft merged on
    the host, A offloaded, or A and B sharded over n GPUs."""
    c = memory["components"]
    if max(memory["device"].values()) <= gpu_bytes:
        return "fits"
    if c["source"] + c["target"] + c["activations"] <= gpu_bytes:
        return "fits once A_ft is merged on the host, not loaded beside A and B"
    if c["target"] + c["activations"] <= gpu_bytes:
        return "offload A (its blocks streamed from host memory)"
    n = math.ceil((c["source"] + c["target"] + c["activations"]) / gpu_bytes)
    return f"shard A and B over {n} GPUs (or offload blocks to the host)"


def projection() -> list[dict]:
    """Big pairs from their config numbers, on one 80 GB GPU."""
    rows = []
    for a, b in (("qwen2.5-7b", "llama-3.1-8b"), ("llama-3.1-8b", "llama-3.1-70b"),
                 ("llama-3.1-70b", "llama-3.1-70b")):  # fmt: skip
        for name, adapted in (("attention", ATTN), ("all linear", LINEAR)):
            m = transfer_memory(a, b, tokens=256, batch_size=4,
                                adapted=adapted, rank=16, model_dtype="bfloat16",
                                stats_dtype="float32", max_stats_gb=64)  # fmt: skip
            c = m["components"]
            rows.append({
                "pair": f"{a} -> {b}", "lora r16": name,
                "A, B (GB)": f"{_gb(c['source']):.1f}, {_gb(c['target']):.1f}",
                "GPU load (GB)": round(m["device"]["load"] / GB, 1),
                "GPU calibrate (GB)": round(m["device"]["calibrate"] / GB, 1),
                "activations (GB)": round(c["activations"] / GB, 1),
                "stats total (GB)": round(m["statistics_total"] / GB, 1),
                "passes (64 GB)": m["passes"],
                "host peak (GB)": round(max(m["host"].values()) / GB, 1),
                "one 80 GB GPU": gpu_verdict(m),
            })  # fmt: skip
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp))
        rows = checks(Path(tmp))
    big = projection()
    info = {"machine": machine(), "checks": rows, "projection": big}
    write_text(RESULTS / "memory.json", json.dumps(info, indent=2) + "\n")
    cols = ["case", "predicted_gb", "phase", "measured_gb", "ratio", "measured_gb, mmap",
            "ratio, mmap", "passes", "baseline_gb", "before_fit_gb", "record"]  # fmt: skip
    parts = [
        "# Memory model vs measured peak RSS, and big pairs on one 80 GB GPU\n",
        (__doc__ or "").split("\n\n    ")[0].strip(),
        "\n## Predicted vs measured (above the process baseline)\n",
        markdown_table(rows, cols),
        "\nPredicted components (GB), per case:\n",
        *[f"- {r['case']}: {r['components_gb']}" for r in rows],
        "\n## Projection: bf16 models, float32 statistics, 4 x 256 tokens per batch\n",
        markdown_table(big, list(big[0])),
        f"\nMachine: `{machine()}`\n",
    ]
    write_text(RESULTS / "memory.md", "\n".join(parts) + "\n")
    print("\n".join(parts))


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
    else:
        main()
