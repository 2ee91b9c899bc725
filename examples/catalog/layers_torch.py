"""The layer catalog, torch side: one small model per torch.nn layer -- a Linear, the layer, a
square-mean loss, Adam -- against its paddle.nn counterpart in ``layers_paddle.py`` (same
names). ``LAYERS`` (after a Linear) and ``SPATIAL`` (on feature maps, after a Conv2d) list
them; each is a function of this module.

    lossgraph export examples/catalog/layers_torch.py:prelu -o t.onnx
    lossgraph export examples/catalog/layers_paddle.py:prelu -o p.onnx
    lossgraph verify t.onnx p.onnx --grads --steps 2
"""

from __future__ import annotations

import functools

import torch
from torch import nn

import lossgraph as lg

FEATURES = 6
X = lg.Input([4, FEATURES], low=-3.0, high=3.0)

#: name -> the torch layer (built after the seed, so a layer with parameters draws them alike)
LAYERS = {
    "relu": lambda: nn.ReLU(),
    "relu6": lambda: nn.ReLU6(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(),
    "prelu_channels": lambda: nn.PReLU(FEATURES, init=0.2),
    "elu": lambda: nn.ELU(0.8),
    "celu": lambda: nn.CELU(0.7),
    "selu": lambda: nn.SELU(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "mish": lambda: nn.Mish(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "hardtanh": lambda: nn.Hardtanh(-0.5, 0.5),
    "hardsigmoid": lambda: nn.Hardsigmoid(),
    "hardswish": lambda: nn.Hardswish(),
    "hardshrink": lambda: nn.Hardshrink(0.3),
    "softshrink": lambda: nn.Softshrink(0.3),
    "tanhshrink": lambda: nn.Tanhshrink(),
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=10.0),
    "softsign": lambda: nn.Softsign(),
    "logsigmoid": lambda: nn.LogSigmoid(),
    "threshold": lambda: nn.Threshold(0.2, 0.0),
    "softmax": lambda: nn.Softmax(dim=-1),
    "log_softmax": lambda: nn.LogSoftmax(dim=-1),
    "glu": lambda: nn.GLU(dim=-1),
}


#: name -> the torch layer, on feature maps: after a Conv2d, input [2, 2, 5, 6]
SPATIAL = {
    "upsample_nearest": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample_bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
    "upsample_bilinear_corners": lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    "upsample_bicubic": lambda: nn.Upsample(scale_factor=2, mode="bicubic"),
    "upsample_size": lambda: nn.Upsample(size=(7, 9), mode="bilinear"),
    "pixel_shuffle": lambda: nn.PixelShuffle(2),
    "pixel_unshuffle": lambda: nn.Sequential(nn.ZeroPad2d((0, 0, 0, 1)), nn.PixelUnshuffle(2)),
    "zero_pad": lambda: nn.ZeroPad2d((1, 2, 0, 1)),
    "reflection_pad": lambda: nn.ReflectionPad2d((1, 2, 0, 1)),
    "replication_pad": lambda: nn.ReplicationPad2d((1, 2, 0, 1)),
    "max_pool": lambda: nn.MaxPool2d(2),
    "max_pool_ceil": lambda: nn.MaxPool2d(2, ceil_mode=True),
    "avg_pool": lambda: nn.AvgPool2d(3, stride=2, padding=1),
    "avg_pool_exclusive": lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    "adaptive_avg_pool": lambda: nn.AdaptiveAvgPool2d((2, 3)),
    "batch_norm": lambda: nn.BatchNorm2d(CHANNELS),
    "group_norm": lambda: nn.GroupNorm(2, CHANNELS),
    "instance_norm": lambda: nn.InstanceNorm2d(CHANNELS),
    "instance_norm_affine": lambda: nn.InstanceNorm2d(CHANNELS, affine=True),
    "layer_norm": lambda: nn.LayerNorm([5, 6]),
    "local_response_norm": lambda: nn.LocalResponseNorm(3),
    "unfold": lambda: nn.Unfold(kernel_size=2, stride=1),
}
CHANNELS = 4
MAPS = lg.Input([2, 2, 5, 6])


class Block(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(FEATURES, FEATURES)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.fc(x))


class ConvBlock(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, CHANNELS, 3, padding=1)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.conv(x))


def spec_of(make_layer, spatial: bool) -> lg.Spec:
    """The catalog's spec around one layer (``make_layer()``), on feature maps or vectors."""
    torch.manual_seed(0)
    model = ConvBlock(make_layer()) if spatial else Block(make_layer())
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": MAPS if spatial else X},
                   optimizers={"adam": torch.optim.Adam(model.parameters(), lr=1e-2)})


for _name, _make in LAYERS.items():
    globals()[_name] = functools.partial(spec_of, _make, False)
for _name, _make in SPATIAL.items():
    globals()[_name] = functools.partial(spec_of, _make, True)
