"""`tasklift transfer A B ADAPTER [ADAPTER ...] DATA`: PEFT LoRA adapters of A moved to B with
one calibration (`Transfer.move_adapters`), one folder each and a manifest; and what each of
transfer's two forms refuses of the other's flags (a flag silently ignored is a defect)."""

from __future__ import annotations

import json
from pathlib import Path

#: validation inputs a transfer's scale is chosen on (`transfer --val`)
VAL = 200

#: flags of A A_FT B DATA (a compared, reported transfer on a train/test split) and whether
#: each was given: moving adapters takes none of them
_TABLE_FLAGS = {
    "--target-finetuned": lambda args: args.target_finetuned is not None,
    "--probe": lambda args: args.probe,
    "--title": lambda args: args.title is not None,
    "--train-limit": lambda args: args.train_limit is not None,
    "--test-size": lambda args: args.test_size is not None,
    "--label-key": lambda args: args.label_key is not None,
}


def _texts(ds, classifier: bool) -> tuple:
    """(X, y) of DATA's rows: chat data's prompts and responses; else the whole text as the LM
    target (no prompt), or for classifiers' adapters the texts with no labels (A_ft's own)."""
    if classifier:
        return ds.X, None
    return (ds.X, ds.targets) if ds.targets else ([""] * len(ds), ds.X)


def table_form(args):
    """A A_FT B DATA: refuse the adapter form's --map-cache and a causal LM's adapter as A_FT,
    fill in --val, --scales, --label-key and --test-size (None when not given, so the adapter
    form can tell), and return A_FT as a model for its class names: a classifier's adapter
    merged into A + adapter, else its path (the methods take the adapter itself).

    Raises:
        ValueError: naming the flag or path and the form that takes it.
    """
    from ..adapter_io import adapter_config, is_adapter, is_classifier
    from ..lora import merged
    from ..transfer import SCALES
    from .flags import SPLIT_DEFAULTS

    if args.map_cache is not None:
        raise ValueError("--map-cache is for moving adapters (A B ADAPTER [ADAPTER ...] DATA); "
                         "A A_FT B DATA calibrates every method anew: drop it")  # fmt: skip
    finetuned = args.finetuned
    if is_adapter(finetuned):
        if not is_classifier(adapter_config(finetuned)):
            raise ValueError(
                f"{finetuned} is a causal LM's PEFT adapter; A A_FT B DATA scores classifiers: "
                "move it with tasklift transfer A B ADAPTER DATA"
            )
        finetuned = merged(args.source, finetuned, device=args.device, dtype=args.dtype)
    for key, default in SPLIT_DEFAULTS.items():
        setattr(args, key, default if getattr(args, key) is None else getattr(args, key))
    args.val = VAL if args.val is None else args.val
    args.scales = list(SCALES) if args.scales is None else args.scales
    return finetuned


def cmd_move_adapters(args) -> None:
    """`transfer A B ADAPTER [ADAPTER ...] DATA`: one calibration on --calib of DATA's texts
    (chat data: its prompts and responses; else the LM loss on the whole text) for them all;
    with --val or --scales, each adapter's scale chosen on --val further rows."""
    import numpy as np

    from ..adapter_io import adapter_config, is_classifier
    from ..data import load_dataset
    from ..distributed import is_main
    from ..transfer import SCALES, Transfer
    from .commands import _runtime, _transfer_options

    given = [flag for flag, set_ in _TABLE_FLAGS.items() if set_(args)]
    if given:
        raise ValueError(f"{', '.join(given)}: only A A_FT B DATA takes it (a compared, "
                         "reported transfer); moving adapters does not: drop it")  # fmt: skip
    methods = args.methods or ["bico"]
    if len(methods) > 1:
        raise ValueError(f"moving adapters takes one method, not {methods}; pass --methods bico")
    kinds = {is_classifier(adapter_config(p)) for p in args.adapters}
    if len(kinds) > 1:  # a classifier's calibrates on A_ft's predictions, an LM's on DATA's text
        raise ValueError(
            "the adapters mix classifier (SEQ_CLS) and causal-LM ones, which calibrate on "
            "different targets: move each kind in its own run"
        )
    classifier = kinds == {True}
    choose = args.val is not None or args.scales is not None
    if args.scale_search is not None and not choose:
        raise ValueError("--scale-search searches the scales on --val rows, and moving "
                         "adapters writes scale 1 without --val or --scales: add them, or "
                         "drop it")  # fmt: skip
    if choose and classifier:
        raise ValueError("--val and --scales score against labels in A_ft's class order, which "
                         "a classifier's PEFT adapter does not name: drop them (scale 1), or "
                         "choose the scale in Python: Transfer(A, ADAPTER, B).fit(X, y, "
                         "X_val=..., y_val=...)")  # fmt: skip
    ds = load_dataset(args.data, text_key=args.text_key, image_size=args.image_size,
                      encoding=args.encoding, labels=False)  # fmt: skip
    n_val = (VAL if args.val is None else args.val) if choose else 0
    if args.calib + n_val > len(ds):
        raise ValueError(f"--calib {args.calib} and --val {n_val} rows are more than the "
                         f"{len(ds)} of {args.data}: lower them")  # fmt: skip
    order = np.random.default_rng(args.seed).permutation(len(ds))
    calib = ds.subset(np.sort(order[: args.calib]))
    X, y = _texts(calib, classifier)
    val = {}
    if choose:  # the next --val rows, none of them calibrated on
        X_val, y_val = _texts(ds.subset(np.sort(order[args.calib : args.calib + n_val])), False)
        val = {"X_val": X_val, "y_val": y_val}
    cache = {None: True, "off": False}.get(args.map_cache, args.map_cache)
    options = {**_transfer_options(args), **_runtime(args)}
    t = Transfer(args.source, None, args.target, method=methods[0], token=args.token,
                 scales=args.scales or SCALES, **options)  # fmt: skip
    records = t.move_adapters(args.adapters, X, y, out=args.output, overwrite=args.overwrite,
                              map_cache=cache, **val)  # fmt: skip
    if not is_main():
        return  # every process calibrated its share; rank 0 wrote the folders
    for r in records:
        chosen = f", scale {r['scale']:g} chosen on {n_val} rows" if choose else ""
        print(f"{r['adapter']} -> {r['moved_to']} ({r['moved']} modules{chosen})")
    info = json.loads((Path(args.output) / "tasklift_run.json").read_text())
    found, how = info["map_cache"], f"one set for {len(args.adapters)} adapter(s)"
    if info["maps"] == "per adapter":
        how = f"per adapter ({info['why']})"
    elif found is not None and found["hit"]:
        how += f", read from {found['folder']} (no calibration)"
    elif found is not None:
        how += f", calibrated on {len(calib)} texts and cached in {found['folder']}"
    print(f"maps: {how}\nwrote {args.output}/tasklift_run.json")
