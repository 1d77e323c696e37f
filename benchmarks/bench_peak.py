"""All-layer extraction against this machine's practical peak (issue 13.2).

The peak: FLOP/s of plain dense matmuls with one encoder block's shapes (q, k, v, o, FFN in, FFN
out on batch x tokens rows), timed in the same run. Extraction: `tasklift.extract.embed` of every
layer's [CLS] on raw texts; its FLOPs are counted with torch's FlopCounterMode on the batches it
actually ran ("computed", padding included) and on each text alone ("useful"). Variants tried,
each kept only if it helps and leaves every embedding equal to the reference to 1e-5: the
batching order (given, by characters, by tokens), attention kernel (eager vs SDPA), threads,
torch.compile, bfloat16.

    python benchmarks/bench_peak.py [--n 512] [--batch-size 32] [--max-length 128]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from _common import write
from torch.utils.flop_counter import FlopCounterMode

from tasklift.data import load_dataset
from tasklift.extract import embed
from tasklift.loading import load_model
from tasklift.models import blocks, encode


def matmul_peak(d: int, ffn: int, rows: int, repeat: int = 20) -> float:
    """FLOP/s of one block's dense matmuls (rows x d @ d x d four times, d x ffn, ffn x d)."""
    shapes = [(d, d)] * 4 + [(d, ffn), (ffn, d)]
    xs = {k: torch.randn(rows, k) for k in {d, ffn}}
    ws = [torch.randn(k, n) for k, n in shapes]
    flops = sum(2 * rows * k * n for k, n in shapes)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for (k, _), w in zip(shapes, ws, strict=True):
            xs[k] @ w
        best = min(best, time.perf_counter() - t0)
    return flops / best


def count_flops(fn) -> int:
    """FLOPs torch counts while fn() runs."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def in_order(model, tok, texts, order, args) -> dict[int, torch.Tensor]:
    """Every layer's [CLS] with batches taken in `order`, gathered back in input order."""
    out = {}
    for s in range(0, len(texts), args.batch_size):
        idx = order[s : s + args.batch_size]
        batch = encode([texts[i] for i in idx], tok, max_length=args.max_length)
        for i, v in embed(model, batch, layers="all", batch_size=len(idx)).items():
            out.setdefault(i, torch.empty(len(texts), v.shape[1]))[torch.from_numpy(idx)] = v
    return out


def token_order(tok, texts, max_length) -> np.ndarray:
    """Inputs sorted by their token count (one extra tokenisation pass)."""
    ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    return np.argsort([len(x) for x in ids], kind="stable")


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest |a - b| over every layer, relative to that layer's largest |a|."""
    return max(float((a[i] - b[i].float()).abs().max() / a[i].abs().max()) for i in a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default="tweets")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow start)")
    args = ap.parse_args()
    torch.manual_seed(0)
    texts = load_dataset(args.data).X[: args.n]
    model, tok = load_model(args.model, device="cpu")
    eager = load_model(args.model, device="cpu")[0]
    eager.set_attn_implementation("eager")
    bf16 = load_model(args.model, device="cpu", dtype="bfloat16")[0]
    threads = torch.get_num_threads()
    real = sum(len(x) for x in tok(texts, truncation=True, max_length=args.max_length)["input_ids"])
    orders = {
        "given": np.arange(len(texts)),
        "characters": np.argsort([len(t) for t in texts], kind="stable"),
        "tokens": token_order(tok, texts, args.max_length),
    }
    computed, flops = {}, {}
    for name, order in orders.items():
        bs = [
            encode(
                [texts[i] for i in order[s : s + args.batch_size]], tok, max_length=args.max_length
            )
            for s in range(0, len(texts), args.batch_size)
        ]
        computed[name] = sum(b["input_ids"].numel() for b in bs)
        flops[name] = count_flops(lambda bs=bs: [model(**b) for b in bs])
    useful = count_flops(
        lambda: [model(**encode([t], tok, max_length=args.max_length)) for t in texts]
    )
    cfg = model.config
    rows_per_batch = int(args.batch_size * real / len(texts))
    peak = matmul_peak(cfg.hidden_size, cfg.intermediate_size, rows_per_batch)

    def with_threads(n, fn):
        def run():
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(threads)

        return run

    def by_tokens(m):  # what extraction sorted by token count runs (tokenising included)
        return lambda: in_order(m, tok, texts, token_order(tok, texts, args.max_length), args)

    variants = {  # name -> (run, order whose padding it computes)
        "given order": (lambda: in_order(model, tok, texts, orders["given"], args), "given"),
        "sorted by characters (tasklift until now)": (
            lambda: in_order(model, tok, texts, orders["characters"], args),
            "characters",
        ),
        "tasklift: sorted by tokens": (lambda: embed(model, texts, tok, **kw(args)), "tokens"),
        "sorted by tokens, eager attention": (by_tokens(eager), "tokens"),
        "sorted by tokens, 1 thread": (with_threads(1, by_tokens(model)), "tokens"),
        "sorted by tokens, bfloat16": (by_tokens(bf16), "tokens"),
    }
    compile_s = None
    if not args.no_compile:
        compiled = copy.deepcopy(model)
        for block in blocks(compiled):  # compiled inside, so tasklift's hooks stay outside
            block.forward = torch.compile(block.forward, dynamic=True)
        t0 = time.perf_counter()
        in_order(compiled, tok, texts, orders["tokens"], args)  # compiles (once per shape class)
        compile_s = time.perf_counter() - t0
        variants["sorted by tokens, torch.compile"] = (by_tokens(compiled), "tokens")
    reference = in_order(model, tok, texts, orders["given"], args)
    best = dict.fromkeys(variants, float("inf"))
    diffs = {}
    for _ in range(args.repeat):  # interleaved, so drift hits every variant alike
        for name, (run, _) in variants.items():
            t0 = time.perf_counter()
            got = run()
            best[name] = min(best[name], time.perf_counter() - t0)
            diffs[name] = max_rel_diff(reference, got)
    base = best["tasklift: sorted by tokens"]
    rows = []
    for name, (_, order) in variants.items():
        t = best[name]
        rows.append(
            {
                "variant": name,
                "seconds": round(t, 2),
                "texts/s": round(len(texts) / t, 1),
                "speed vs tasklift": round(base / t, 3),
                "tokens computed / real": round(computed[order] / real, 3),
                "computed GFLOP/s": round(flops[order] / t / 1e9, 1),
                "useful GFLOP/s": round(useful / t / 1e9, 1),
                "useful / matmul peak": round(useful / t / peak, 3),
                "max rel. diff": f"{diffs[name]:.1e}",
                "equal to 1e-5": "yes" if diffs[name] <= 1e-5 else "no",
            }
        )
    notes = (
        f"{args.model}, {len(texts)} {args.data} texts ({real} real tokens), batch "
        f"{args.batch_size}, max length {args.max_length}, CPU float32, {threads} threads; best "
        f"of {args.repeat} interleaved runs. Practical peak of this CPU: "
        f"**{peak / 1e9:.1f} GFLOP/s** (one block's dense matmuls, {rows_per_batch} rows). Useful "
        f"FLOPs (each text alone, no padding): {useful / 1e9:.1f} G; computed FLOPs by order: "
        + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in flops.items())
        + (f". torch.compile's first pass (compilation): {compile_s:.1f} s." if compile_s else ".")
    )
    write(
        "peak_cpu",
        rows,
        list(rows[0]),
        title="All-layer extraction vs the CPU's matmul peak",
        notes=notes,
    )
    print(notes)


def kw(args) -> dict:
    """tasklift's extraction settings."""
    return dict(layers="all", batch_size=args.batch_size, max_length=args.max_length)


if __name__ == "__main__":
    main()
