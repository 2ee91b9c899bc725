"""The layer catalog, Paddle side: the paddle.nn counterparts of ``layers_torch.py``'s layers,
with the arguments that make them compute the same (where a default differs, the torch
value is passed: see docs/layers.md)."""

from __future__ import annotations

import functools

import paddle
from paddle import nn

import lossgraph as lg

FEATURES = 6
X = lg.Input([4, FEATURES], low=-3.0, high=3.0)

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
    "gelu_tanh": lambda: nn.GELU(approximate=True),
    "silu": lambda: nn.Silu(),
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
    "threshold": lambda: nn.ThresholdedReLU(0.2),
    "softmax": lambda: nn.Softmax(axis=-1),
    "log_softmax": lambda: nn.LogSoftmax(axis=-1),
    "glu": lambda: nn.GLU(axis=-1),
}


class Block(nn.Layer):
    def __init__(self, layer: nn.Layer) -> None:
        super().__init__()
        self.fc = nn.Linear(FEATURES, FEATURES)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.fc(x))


def _spec(name: str) -> lg.Spec:
    paddle.seed(0)
    model = Block(LAYERS[name]())
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": X},
                   optimizers={"adam": paddle.optimizer.Adam(parameters=model.parameters(),
                                                             learning_rate=1e-2)})


for _name in LAYERS:
    globals()[_name] = functools.partial(_spec, _name)
