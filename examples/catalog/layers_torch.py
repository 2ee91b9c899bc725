"""The layer catalog, torch side: one small model per torch.nn layer -- a Linear, the layer, a
square-mean loss, Adam -- against its paddle.nn counterpart in ``layers_paddle.py`` (same
names). ``LAYERS`` lists them; each is a function of this module.

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


class Block(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(FEATURES, FEATURES)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.fc(x))


def _spec(name: str) -> lg.Spec:
    torch.manual_seed(0)
    model = Block(LAYERS[name]())
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": X},
                   optimizers={"adam": torch.optim.Adam(model.parameters(), lr=1e-2)})


for _name in LAYERS:
    globals()[_name] = functools.partial(_spec, _name)
