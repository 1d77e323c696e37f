"""`tasklift transfer A B ADAPTER [ADAPTER ...] DATA`: PEFT LoRA adapters of A moved to B with
one calibration (`Transfer.move_adapters`), one folder each and a manifest."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_move_adapters(args) -> None:
    """`transfer A B ADAPTER [ADAPTER ...] DATA`: one calibration on --calib of DATA's texts
    (chat data: its prompts and responses; else the LM loss on the whole text) for them all."""
    import numpy as np

    from ..data import load_dataset
    from ..transfer import Transfer
    from .commands import _runtime

    if args.target_finetuned is not None or args.probe:
        raise ValueError("--target-finetuned and --probe compare whole transfers; moving "
                         "adapters takes neither: drop them, or pass A A_FT B DATA")  # fmt: skip
    methods = args.methods or ["bico"]
    if len(methods) > 1:
        raise ValueError(f"moving adapters takes one method, not {methods}; pass --methods bico")
    ds = load_dataset(args.data, text_key=args.text_key, image_size=args.image_size,
                      encoding=args.encoding, labels=False)  # fmt: skip
    rows = np.sort(np.random.default_rng(args.seed).permutation(len(ds))[: args.calib])
    calib = ds.subset(rows)
    X, y = (calib.X, calib.targets) if calib.targets else ([""] * len(calib), calib.X)
    cache = {None: True, "off": False}.get(args.map_cache, args.map_cache)
    t = Transfer(args.source, None, args.target, method=methods[0], token=args.token,
                 center=args.center, **_runtime(args))  # fmt: skip
    for r in t.move_adapters(args.adapters, X, y, out=args.output, overwrite=args.overwrite,
                             map_cache=cache):  # fmt: skip
        print(f"{r['adapter']} -> {r['moved_to']} ({r['moved']} modules)")
    info = json.loads((Path(args.output) / "tasklift_run.json").read_text())
    found, how = info["map_cache"], f"one set for {len(args.adapters)} adapter(s)"
    if info["maps"] == "per adapter":
        how = f"per adapter ({info['why']})"
    elif found is not None and found["hit"]:
        how += f", read from {found['folder']} (no calibration)"
    elif found is not None:
        how += f", calibrated on {len(calib)} texts and cached in {found['folder']}"
    print(f"maps: {how}\nwrote {args.output}/tasklift_run.json")
