"""Issue 21.6: BiCo plain vs centred covariances, draw by draw, from the runs of run.sh.

python reports/centring/summary.py RUNS OUT [COMMAND]   (COMMAND: what made RUNS, for the header)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def bico(path: Path) -> dict[int, dict]:
    """{draw: {accuracy, scale, B + carried head}} of one transfer_real.py output file."""
    out = {}
    for d in json.loads(path.read_text())["draws"]:
        rows = {r["method"].split(" [")[0]: r for r in d["rows"]}
        out[d["draw"]] = {"bico": rows["bico"]["accuracy"], "scale": rows["bico"].get("scale"),
                          "b": rows["B + carried head"]["accuracy"]}  # fmt: skip
    return out


def settings(runs: Path) -> str:
    """The BiCo settings the runs were made with (transfer_real.py --settings; older runs:
    'previous')."""
    names = {json.loads(p.read_text())["settings"].get("settings", "previous")
             for p in runs.glob("*/*.json")}  # fmt: skip
    text = {"previous": "cutoff 1e-6, float64 statistics (before 2026-12-03)",
            "defaults": "today's defaults (cutoff 1e-3, float32 statistics)"}  # fmt: skip
    return " / ".join(text[n] for n in sorted(names))


def main() -> None:
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    command = sys.argv[3] if len(sys.argv) > 3 else "bash reports/centring/run.sh"
    lines = ["# BiCo with centred vs raw covariances (issue 21.6)", "",
             "Real encoder pairs on bbc_news (those below; MPNet's tokens paired by word), 3 "
             "calibration draws each (128 calibration, 200 validation rows, scales 0-2), the "
             "same A_ft and B as reports/transfer_real; BiCo settings: "
             f"{settings(runs)}; `{command}`. Δ = centred − raw, same draw.", "",
             "| pair | draw | B + head | BiCo raw (scale) | BiCo centred (scale) | Δ |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    summary = {}
    for plain in sorted((runs / "plain").glob("*.json")):
        centred = next((runs / "centred").glob(plain.stem + "*.json"), None)
        if centred is None:
            continue
        a, c = bico(plain), bico(centred)
        pair = plain.stem.replace("_to_", " → ").rsplit("_bbc", 1)[0]
        deltas = []
        for k in sorted(set(a) & set(c)):
            deltas.append(c[k]["bico"] - a[k]["bico"])
            raw, cen = (f"{r[k]['bico']:.3f} ({r[k]['scale']})" for r in (a, c))
            lines.append(f"| {pair} | {k} | {a[k]['b']:.3f} | {raw} | {cen} | {deltas[-1]:+.3f} |")
        d = np.array(deltas)
        summary[pair] = {"deltas": deltas, "mean": float(d.mean()),
                         "raw": [a[k]["bico"] for k in sorted(a)],
                         "centred": [c[k]["bico"] for k in sorted(c)]}  # fmt: skip
        lines.append(f"| {pair} | mean | | {np.mean(summary[pair]['raw']):.3f} "
                     f"| {np.mean(summary[pair]['centred']):.3f} | {d.mean():+.3f} |")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
