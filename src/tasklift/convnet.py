"""EfficientNet-Lite as a Hugging Face model: the convolutional network of the task-matrix tests.

The modules and state-dict names are timm's `tf_efficientnet_lite*` (conv_stem, bn1, blocks.s.b.*,
conv_head, bn2, classifier), so timm weights load by name. It lives here rather than behind timm
because timm needs torchvision, and no PyPI torchvision loads beside the CPU build of torch this
project pins. As a `PreTrainedModel` it gets save/load, fine-tuning and every tasklift command.

Task-matrix layers of a CNN: layer 0 is the stem's output, layer s the output of stage s, and the
last layer the 1×1 head conv (the pre-classifier features); each is pooled by global averaging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

__all__ = [
    "ConvNetConfig",
    "ConvNetModel",
    "ConvNetForImageClassification",
    "LITE0_STAGES",
    "register",
]

# (kind, repeats, kernel, stride, expansion, channels) per stage: EfficientNet-Lite0's.
LITE0_STAGES = [
    ["ds", 1, 3, 1, 1, 16],
    ["ir", 2, 3, 2, 6, 24],
    ["ir", 2, 5, 2, 6, 40],
    ["ir", 3, 3, 2, 6, 80],
    ["ir", 3, 5, 1, 6, 112],
    ["ir", 4, 5, 2, 6, 192],
    ["ir", 1, 3, 1, 6, 320],
]


class ConvNetConfig(PretrainedConfig):
    """EfficientNet-Lite shape: stem width, stages, pre-classifier features, image size."""

    model_type = "tasklift-efficientnet"

    def __init__(
        self,
        stages: list | None = None,
        stem_size: int = 32,
        num_features: int = 1280,
        image_size: int = 224,
        num_channels: int = 3,
        bn_eps: float = 1e-3,
        dropout: float = 0.2,
        **kwargs,
    ) -> None:
        self.stages = [list(s) for s in (stages or LITE0_STAGES)]
        self.stem_size, self.num_features = stem_size, num_features
        self.image_size, self.num_channels = image_size, num_channels
        self.bn_eps, self.dropout = bn_eps, dropout
        self.hidden_size = num_features  # the width of the last layer, as for transformers
        self.num_hidden_layers = len(self.stages) + 1  # the stages, then the head conv
        super().__init__(**kwargs)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (one more row/column after than before at stride
    2 on even sizes), which the TF-trained Lite weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        sizes = zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True)
        for size, k, s in sizes:  # (W, H) order, as F.pad wants
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pad += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pad))


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then ReLU6 (timm's BatchNormAct2d: same parameter names as BatchNorm2d)."""

    def __init__(self, channels: int, eps: float, act: bool = True) -> None:
        super().__init__(channels, eps=eps)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> SameConv2d:
    return SameConv2d(cin, cout, k, stride, padding=0, groups=groups, bias=False)


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k conv, then a linear 1×1 projection; residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, eps: float) -> None:
        super().__init__()
        self.conv_dw = _conv(cin, cin, k, stride, groups=cin)
        self.bn1 = BatchNormAct2d(cin, eps)
        self.conv_pw = _conv(cin, cout)
        self.bn2 = BatchNormAct2d(cout, eps, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.skip else out


class InvertedResidual(nn.Module):
    """1×1 expansion, depthwise k×k, linear 1×1 projection (MobileNetV2's block, no SE)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, eps: float) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw = _conv(cin, mid)
        self.bn1 = BatchNormAct2d(mid, eps)
        self.conv_dw = _conv(mid, mid, k, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid, eps)
        self.conv_pwl = _conv(mid, cout)
        self.bn3 = BatchNormAct2d(cout, eps, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return out + x if self.skip else out


class _PreTrained(PreTrainedModel):
    config_class = ConvNetConfig
    base_model_prefix = "convnet"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        with torch.no_grad():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)


class ConvNetModel(_PreTrained):
    """The EfficientNet-Lite backbone: (B, C, H, W) pixels -> pooled pre-classifier features."""

    def __init__(self, config: ConvNetConfig) -> None:
        super().__init__(config)
        eps, cin = config.bn_eps, config.stem_size
        self.conv_stem = _conv(config.num_channels, cin, 3, 2)
        self.bn1 = BatchNormAct2d(cin, eps)
        stages = []
        for kind, repeats, k, stride, expand, cout in config.stages:
            layers = []
            for r in range(repeats):
                s = stride if r == 0 else 1
                if kind == "ds":
                    layers.append(DepthwiseSeparable(cin, cout, k, s, eps))
                else:
                    layers.append(InvertedResidual(cin, cout, k, s, expand, eps))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(cin, config.num_features)
        self.bn2 = BatchNormAct2d(config.num_features, eps)
        self.post_init()

    def layer_modules(self) -> list[nn.Module]:
        """The modules whose outputs are layers 1..L: each stage, then the head conv's norm."""
        return [*self.blocks, self.bn2]

    def layer_widths(self) -> list[int]:
        """Channels of layers 0..L (stem, each stage, the head conv)."""
        return [
            self.config.stem_size,
            *(s[5] for s in self.config.stages),
            self.config.num_features,
        ]

    def forward(self, pixel_values: torch.Tensor, **_) -> BaseModelOutputWithPooling:
        h = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(pixel_values)))))
        return BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=h.mean((2, 3)))


class ConvNetForImageClassification(_PreTrained):
    """Backbone, dropout, linear classifier on the pooled features."""

    def __init__(self, config: ConvNetConfig) -> None:
        super().__init__(config)
        self.convnet = ConvNetModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.num_features, config.num_labels)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_
    ) -> ImageClassifierOutput:
        logits = self.classifier(self.dropout(self.convnet(pixel_values).pooler_output))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def register() -> None:
    """Make AutoConfig / AutoModel / AutoModelForImageClassification know this model type."""
    import transformers as tf

    if ConvNetConfig.model_type in tf.CONFIG_MAPPING:
        return
    tf.AutoConfig.register(ConvNetConfig.model_type, ConvNetConfig)
    tf.AutoModel.register(ConvNetConfig, ConvNetModel)
    tf.AutoModelForImageClassification.register(ConvNetConfig, ConvNetForImageClassification)
