"""End-to-end layer sweep: tasklift vs the task-matrix authors' way of doing it (issue 13.3).

The authors' notebooks (written here plainly, our own code): batches in the given order padded to
their longest, `output_hidden_states=True`, every layer's [CLS] kept in float32 in memory, one
`numpy.linalg.lstsq` (float32, no bias) per layer, then every layer scored with its own full
forward pass over the test set. tasklift: `TaskMatrix(layer="auto").fit(train)` (one streamed,
length-sorted pass of each model, statistics of all layers at once, layer chosen by CV) and
`score_layers(test)` (one base pass for every layer).

Each (pipeline, N) runs in a fresh process, so peak memory (ru_maxrss) is its own; the table
gives it in full and above the process's size once the models are loaded.

    python benchmarks/bench_end_to_end.py [--sizes 2000,20000] [--test 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import write

from tasklift.data import align_labels, load_dataset, split
from tasklift.loading import label_names, load_model
from tasklift.taskmatrix import TaskMatrix


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def data(name: str, finetuned: str, n: int, n_test: int, seed: int = 0):
    """n training texts and n_test test (texts, labels), labels matched to the head by name."""
    ds = align_labels(load_dataset(name), label_names(finetuned), model=finetuned)
    train, test = split(ds, test_size=n_test, seed=seed)
    if n > len(train.X):
        raise SystemExit(f"{name} has only {len(train.X)} training rows; asked for {n}")
    return train.X[:n], test.X, np.asarray(test.y)


class Counting:
    """A tokenizer that counts the tokens it hands out: (computed incl. padding, real)."""

    def __init__(self, tok) -> None:
        self.tok, self.computed, self.real = tok, 0, 0

    def __call__(self, *args, **kwargs):
        enc = self.tok(*args, **kwargs)
        if kwargs.get("padding"):
            self.computed += enc["input_ids"].numel()
            self.real += int(enc["attention_mask"].sum())
        return enc

    def __getattr__(self, name):
        return getattr(self.tok, name)


def cls_all_layers(model, tok, texts, batch_size, max_length) -> np.ndarray:
    """Every hidden state's [CLS] as float32 (L+1, N, d), batches in the given order."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            enc = tok(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hs = model(**enc, output_hidden_states=True).hidden_states
            out.append(torch.stack([h[:, 0] for h in hs]).float().numpy())
    return np.concatenate(out, axis=1)


def models(args):
    """(base, counting tokenizer, fine-tuned classifier, peak MB once they are loaded)."""
    base, tok = load_model(args.base, device="cpu")
    ft, _ = load_model(args.finetuned, head=True, device="cpu")
    return base, Counting(tok), ft, rss_mb()


def authors(args, train, test, y_test) -> dict:
    """Their pipeline: in-memory float32 [CLS], lstsq per layer, one test forward per layer."""
    base, tok, ft, loaded = models(args)
    kw = dict(batch_size=args.batch_size, max_length=args.max_length)
    t0 = time.perf_counter()
    X = cls_all_layers(base, tok, train, **kw)
    Y = cls_all_layers(ft, tok, train, **kw)[-1]
    fit_tokens = (tok.computed, tok.real)
    t1 = time.perf_counter()
    Ws = [np.linalg.lstsq(X[i], Y, rcond=None)[0] for i in range(len(X))]
    t2 = time.perf_counter()
    acc = {}
    with torch.inference_mode():
        for i, W in enumerate(Ws):  # their scoring: a full forward over the test set per layer
            Xi = cls_all_layers(base, tok, test, **kw)[i]
            z = torch.from_numpy(Xi @ W)
            logits = ft.classifier(ft.bert.pooler(z[:, None, :]))
            acc[i] = float((logits.argmax(-1).numpy() == y_test).mean())
    t3 = time.perf_counter()
    times = {"extract": t1 - t0, "solve": t2 - t1, "score": t3 - t2}
    return {**times, "accuracy": acc, "fit tokens": fit_tokens, "loaded MB": loaded}


def tasklift(args, train, test, y_test) -> dict:
    """tasklift: one streamed fit of every layer, one base pass to score them all."""
    base, tok, ft, loaded = models(args)
    tm = TaskMatrix(
        base,
        ft,
        layer="auto",
        processor=tok,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device="cpu",
    )
    t0 = time.perf_counter()
    tm.fit(train)
    t1 = time.perf_counter()
    fit_tokens = (tok.computed, tok.real)
    acc = tm.score_layers(test, y_test)
    t2 = time.perf_counter()
    times = {"extract": t1 - t0, "solve": 0.0, "score": t2 - t1}  # the solve is inside fit
    return {
        **times,
        "accuracy": acc,
        "fit tokens": fit_tokens,
        "loaded MB": loaded,
        "chosen layer": tm.layer_,
    }


def one(args) -> None:
    """Run one pipeline at one size in this process; print its result as JSON."""
    train, test, y_test = data(args.data, args.finetuned, args.n, args.test)
    out = {"authors": authors, "tasklift": tasklift}[args.one](args, train, test, y_test)
    out["peak MB"] = rss_mb()
    print("RESULT " + json.dumps(out))


def total(r: dict) -> float:
    """Seconds from raw texts to every layer's test accuracy."""
    return r["extract"] + r["solve"] + r["score"]


def row(n: int, name: str, r: dict) -> dict:
    """One table row of a pipeline's run."""
    return {
        "N": n,
        "pipeline": name,
        "extract s": round(r["extract"], 1),
        "solve s": round(r["solve"], 2),
        "score all layers s": round(r["score"], 1),
        "total s": round(total(r), 1),
        "peak MB": round(r["peak MB"]),
        "peak above models MB": round(r["peak MB"] - r["loaded MB"]),
        "fit tokens computed / real": round(r["fit tokens"][0] / r["fit tokens"][1], 3),
    }


def summary(n: int, a: dict, t: dict) -> str:
    """The ratios at one N, authors' over tasklift's, and the accuracies side by side."""
    acc_a = {int(k): v for k, v in a["accuracy"].items()}
    acc_t = {int(k): v for k, v in t["accuracy"].items()}
    diff = max(abs(acc_a[i] - acc_t[i]) for i in acc_a)
    mem = (a["peak MB"] - a["loaded MB"]) / max(t["peak MB"] - t["loaded MB"], 1)
    show = lambda acc: ", ".join(f"{i}: {v:.3f}" for i, v in sorted(acc.items()))  # noqa: E731
    return (
        f"- N = {n}: tasklift **{total(a) / total(t):.2f}x** as fast end to end (extraction + "
        f"solve {(a['extract'] + a['solve']) / t['extract']:.2f}x, scoring every layer "
        f"{a['score'] / t['score']:.2f}x); the authors' peak memory above the loaded models "
        f"is {mem:.2f}x tasklift's; per-layer test accuracies differ by at most "
        f"{100 * diff:.1f} points "
        f"(authors {show(acc_a)}; tasklift {show(acc_t)}; tasklift's CV picked layer "
        f"{t['chosen layer']})."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="minilm-l6")
    ap.add_argument("--finetuned", default="runs/real/minilm-l6_tweets_ft")
    ap.add_argument("--data", default="tweets")
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--one", choices=["authors", "tasklift"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not Path(args.finetuned).is_dir():
        raise SystemExit(f"no fine-tuned model at {args.finetuned}: run reports/run_real.sh")
    if args.one:
        return one(args)
    rows, res = [], {}
    for n in (int(s) for s in args.sizes.split(",")):
        for name in ("authors", "tasklift"):
            cmd = [sys.executable, __file__, "--one", name, "--n", str(n)]
            cmd += [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k not in ("one", "n", "sizes") and v is not None
            ]
            print(f"N = {n}: {name} ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            res[n, name] = r = json.loads(line[7:])
            rows.append(row(n, name, r))
            print(rows[-1], flush=True)
    lines = [summary(n, res[n, "authors"], res[n, "tasklift"]) for n in sorted({k[0] for k in res})]
    notes = (
        f"{args.base} base, fine-tuned {args.finetuned}, {args.data}: N training texts, "
        f"{args.test} test texts, batch {args.batch_size}, max length {args.max_length}, CPU "
        f"float32, {torch.get_num_threads()} threads; each run in its own process, one at a "
        "time.\n\n" + "\n".join(lines)
    )
    write(
        "end_to_end",
        rows,
        list(rows[0]),
        title="End-to-end sweep vs the authors' pipeline",
        notes=notes,
    )
    print(notes)


if __name__ == "__main__":
    main()
