"""reports/llm/report.md and results.json from the step results run_llm.py left in runs/llm/:
the table (mean ± sd over calibration draws, share of the A_ft-to-B gap closed, seconds, peak
RSS) and the commands that reproduce it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _load(runs: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


def _gap(acc: float, low: float | None, high: float | None) -> str:
    if low is None or high is None or high == low:
        return ""
    return f"{100 * (acc - low) / (high - low):.0f}%"


def report(runs: Path, out: Path) -> None:
    """Write out/report.md and out/results.json (the step results as they are)."""
    from tasklift.io import write_text

    res = _load(runs)
    acc = {k[5:]: v["accuracy"] for k, v in res.items() if k.startswith("eval_")}
    b, b_ft = acc.get("b"), acc.get("b_ft")
    rows = [
        ("A = Qwen2.5-Coder-0.5B, zero-shot", acc.get("a"), "", "", ""),
        ("A_ft (LoRA r=8 on A's attention, 240 rows)", acc.get("a_ft"), "", "", ""),
        ("B = Qwen2.5-Coder-1.5B + nothing", b, "0%" if b is not None else "", "", ""),
    ]
    for method in ("bico", "activation", "gradient"):
        draws = [v for k, v in res.items() if k.startswith(f"transfer_{method}_")
                 and v.get("modules", "all adapted") == "all adapted"]  # fmt: skip
        if not draws:
            continue
        a = np.array([d["accuracy"] for d in draws])
        cell = f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a[0]:.3f}"
        secs = f"{np.mean([d['fit_seconds'] for d in draws]):.0f}"
        rss = f"{max(d['peak_rss_gb'] for d in draws):.1f}"
        rows.append((f"B + τ_B, {method} ({len(a)} draw{'s' * (len(a) > 1)})", cell,
                     _gap(a.mean(), b, b_ft), secs, rss))  # fmt: skip
    for k, v in res.items():  # diagnostics: a part of the adapter moved alone
        if k.startswith("transfer_") and v.get("modules", "all adapted") != "all adapted":
            rows.append((f"B + τ_B, {v['method']}, only {v['modules']}", v["accuracy"],
                         _gap(v["accuracy"], b, b_ft), f"{v['fit_seconds']:.0f}",
                         f"{v['peak_rss_gb']:.1f}"))  # fmt: skip
    rows.append(("B fine-tuned (LoRA, same recipe)", b_ft, "100%" if b_ft else "", "", ""))
    fmt = lambda v: v if isinstance(v, str) else ("" if v is None else f"{v:.3f}")  # noqa: E731
    table = [
        "| model | test accuracy | gap closed | fit s | peak RSS GB |",
        "|---|---|---|---|---|",
    ]
    table += [f"| {m} | {fmt(v)} | {g} | {s} | {r} |" for m, v, g, s, r in rows]
    ft = {k: v for k, v in res.items() if k.startswith("finetune_")}
    text = (
        "# Decoder LMs: a LoRA skill of Qwen2.5-Coder-0.5B, moved to -1.5B\n\n"
        "BBC News topics answered with code words B cannot guess (business → river, "
        "entertainment → piano, politics → stone, sports → cloud, tech → apple), scored by the "
        "verbaliser: the LM head's logits at the prompt's last token over the five words' "
        "first tokens. 150 test articles (chance 0.2); the scale of τ_B chosen on 48 "
        "validation articles; 32 calibration prompts with their code words per draw.\n\n"
        + "\n".join(table)
        + "\n\nGap closed: (accuracy − B) / (B fine-tuned − B). Fit seconds and peak RSS are "
        "the transfer's own process (models included), on this 2-core CPU.\n\n"
        f"## Fine-tunes\n\n```json\n{json.dumps(ft, indent=1)}\n```\n\n"
        "## Reproduce\n\n```bash\npip install -e '.[llm,real]' peft\n"
        "tasklift assets --prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b\n"
        "python reports/llm/run_llm.py all --draws 3\npython reports/llm/run_llm.py report\n```\n"
    )
    status = out / "status.md"  # what is not measured yet, and why
    text += "\n" + status.read_text() if status.is_file() else ""
    write_text(out / "report.md", text)
    write_text(out / "results.json", json.dumps(res, indent=1) + "\n")
    print(text)
