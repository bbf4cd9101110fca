"""ResNet-50 (He et al. 2016, bottleneck blocks, stride on the 3x3 convolution as in torchvision's
"v1.5") truncated after its third stage: the tile encoder of CLAM (Lu et al. 2021), 1024 features
average-pooled from ``layer3``.

Parameter names are torchvision's ``resnet50`` names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...
``layer3.5.bn3``, ``layerN.0.downsample.0/1``), so an ImageNet (or pathology) checkpoint saved from
torchvision loads as it is; its ``layer4.*`` and ``fc.*`` entries are not part of this network
(:attr:`ResNet50Trunc.checkpoint_ignore`).

>>> import torch
>>> ResNet50Trunc()(torch.zeros(1, 3, 64, 64)).shape
torch.Size([1, 1024])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNet50Trunc"]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand by 4, each with batch norm; projection shortcut
    (``downsample``) when the shape changes."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Trunc(nn.Module):
    """Stem + ``layer1``-``layer3`` of ResNet-50 (3, 4, 6 bottlenecks), global average pooling."""

    feature_dim = 1024
    input_size = 224  # CLAM: 256-px tiles at 20x (about 0.5 um/px), resized to 224 for ImageNet weights
    mpp = 0.5
    checkpoint_ignore = ("layer4.", "fc.")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, width) in enumerate([(3, 64), (4, 128), (6, 256)]):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.layer1: nn.Sequential
        self.layer2: nn.Sequential
        self.layer3: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``layer3`` feature maps ``(B, 1024, H/16, W/16)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean((2, 3))
