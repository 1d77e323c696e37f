"""Check tasklift's EfficientNet-Lite0 against timm's tf_efficientnet_lite0, weight for weight.

timm cannot be installed beside the CPU torch this project pins (it needs torchvision, whose PyPI
wheels load only with CUDA builds of torch), so the check runs in two environments:

    python scripts/check_timm_equivalence.py export -o /tmp/lite0     # tasklift's venv
    /other/venv/bin/python scripts/check_timm_equivalence.py check -o /tmp/lite0   # timm's venv

`export` writes the prepared asset's weights under timm's names, two real photos (scikit-learn's
sample images) and tasklift's logits and per-stage pooled features; `check` loads the weights into
timm strictly and prints the largest differences.
"""

import argparse
from pathlib import Path

import numpy as np
import torch


def export(out: Path) -> None:
    from safetensors.torch import save_file
    from sklearn.datasets import load_sample_images

    from tasklift.extract import embed
    from tasklift.loading import load_model

    model, _ = load_model("efficientnet-lite0", head=True, device="cpu")
    state = {k.removeprefix("convnet."): v.contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "timm_names.safetensors"))
    x = torch.stack(
        [
            torch.from_numpy(i.copy()).permute(2, 0, 1).float() / 255
            for i in load_sample_images().images
        ]
    )
    x = (
        torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True) - 0.5
    ) / 0.5
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    feats = embed(model, x.numpy(), layers="all")
    np.savez(out / "tasklift.npz", x=x.numpy(), logits=logits.numpy(),
             **{f"layer{i}": f.numpy() for i, f in feats.items()})  # fmt: skip
    print(f"wrote {out}: top-1 classes {logits.argmax(-1).tolist()}")


def check(out: Path) -> None:
    import timm
    from safetensors.torch import load_file

    ref = np.load(out / "tasklift.npz")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(load_file(str(out / "timm_names.safetensors")), strict=True)
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        logits = model(x).numpy()
        h = model.bn1(model.conv_stem(x))
        feats = [h.mean((2, 3))]
        for stage in model.blocks:
            h = stage(h)
            feats.append(h.mean((2, 3)))
        feats.append(model.bn2(model.conv_head(h)).mean((2, 3)))
    print(f"timm {timm.__version__}, torch {torch.__version__}: strict load OK")
    diff = np.abs(logits - ref["logits"]).max()
    print(f"logits: max |timm - tasklift| = {diff:.2e}; top-1 {logits.argmax(-1).tolist()}")
    for i, f in enumerate(feats):
        print(f"layer {i}: max |diff| = {np.abs(f.numpy() - ref[f'layer{i}']).max():.2e}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["export", "check"])
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    export(args.out) if args.mode == "export" else check(args.out)
