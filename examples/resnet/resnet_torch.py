"""ResNet-18 and ResNet-50 (He et al., 2016) in PyTorch without torchvision, with a
cross-entropy loss: the larger models for benchmarks and localization at scale.

    lossgraph export examples/resnet/resnet_torch.py:resnet18 -o resnet18.onnx
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lossgraph as lg

CLASSES = 10


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, classes: int = CLASSES) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._layer(block, 64, layers[0], 1)
        self.layer2 = self._layer(block, 128, layers[1], 2)
        self.layer3 = self._layer(block, 256, layers[2], 2)
        self.layer4 = self._layer(block, 512, layers[3], 2)
        self.fc = nn.Linear(512 * block.expansion, classes)

    def _layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def classification_loss(model, image, label):
    return F.cross_entropy(model(image), label)


def make_spec(model: ResNet, batch: int, size: int) -> lg.Spec:
    return lg.Spec(
        model=model,
        loss=classification_loss,
        inputs={"image": lg.Input([batch, 3, size, size]),
                "label": lg.Input([batch], dtype="int64", high=CLASSES)},
    )


def resnet18(batch: int = 8, size: int = 224) -> lg.Spec:
    torch.manual_seed(0)
    return make_spec(ResNet(BasicBlock, [2, 2, 2, 2]), batch, size)


def resnet50(batch: int = 2, size: int = 128) -> lg.Spec:
    torch.manual_seed(0)
    return make_spec(ResNet(Bottleneck, [3, 4, 6, 3]), batch, size)


def resnet50_planted(batch: int = 2, size: int = 128) -> lg.Spec:
    """ResNet-50 with one porting bug deep inside: the first block of layer3 strides in its 1x1
    conv1 (the original ResNet, "v1") where the reference strides in the 3x3 conv2 (torchvision's
    "v1.5"). The shapes stay the same; the numbers do not."""
    spec = resnet50(batch, size)
    block = spec.model.layer3[0]
    block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return spec
