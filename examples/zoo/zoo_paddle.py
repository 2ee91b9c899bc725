"""The vision zoo, PaddlePaddle side: ``paddle.vision.models`` (as shipped with paddlepaddle) as
ports of the torchvision architectures in ``zoo_torch.py`` (same function names, inputs, loss).

    lossgraph export examples/zoo/zoo_paddle.py:resnet18 -o resnet18_p.onnx
    lossgraph verify resnet18_t.onnx resnet18_p.onnx --grads --steps 3 --tol 1e-6

Six of the eight models are torchvision's architecture as shipped. Two are not, and are
adjusted here so that the pair is a correct port (``<model>_stock`` is the model as shipped):

- ``squeezenet1_1``: Paddle's stem conv has ``padding=1`` (torchvision: 0), its max-pools floor
  (torchvision: ``ceil_mode=True``), and its dropout is ``mode='downscale_in_infer'`` (scales by
  0.5 at inference instead of by 2 in training).
- ``inception_v3``: Paddle's BatchNorms keep the default ``epsilon=1e-5`` (torchvision's
  ``BasicConv2d`` uses ``eps=0.001``), and its dropout is ``p=0.2, mode='downscale_in_infer'``
  (torchvision: ``p=0.5``, upscale in training).

Everything else (parameter names, ConvNormActivation's Sequential indices, BatchNorm's
``_mean``/``_variance``, Linear's [in, out] weights) is left to lossgraph's parameter map.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.vision import models

import lossgraph as lg

CLASSES = 10
BATCH = 2
SIZES = {"resnet18": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "densenet121": 64,
         "shufflenet_v2_x0_5": 64, "squeezenet1_1": 64, "vgg11": 64, "inception_v3": 75}


def torchvision_squeezenet(model: nn.Layer) -> nn.Layer:
    """Make Paddle's SqueezeNet 1.1 torchvision's: unpadded stem conv, ceil-mode pools, dropout
    that scales in training."""
    model._conv = nn.Conv2D(3, 64, 3, stride=2, padding=0)
    model._pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    model._drop = nn.Dropout(p=0.5)
    return model


def torchvision_inception(model: nn.Layer) -> nn.Layer:
    """Make Paddle's Inception v3 torchvision's: BatchNorm epsilon 1e-3, dropout p=0.5 that
    scales in training."""
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            layer._epsilon = 1e-3
    model.dropout = nn.Dropout(p=0.5)
    return model


class ExactHardsigmoid(nn.Layer):
    """torchvision's gate: ``relu6(x + 3) / 6``. Paddle's ``nn.Hardsigmoid`` multiplies by the
    decimal ``slope=0.1666667`` (2e-7 relative), which training-mode BatchNorm over 8 values
    per channel amplifies past 1e-6, also in float64 (see README.md)."""

    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


def torchvision_mobilenet_v3(model: nn.Layer) -> nn.Layer:
    """Make Paddle's MobileNetV3 squeeze-excitation gates torchvision's exact x / 6 + 1/2."""
    from paddle.vision.models.mobilenetv3 import SqueezeExcitation

    for layer in model.sublayers():
        if isinstance(layer, SqueezeExcitation) and isinstance(layer.scale_activation, nn.Hardsigmoid):
            layer.scale_activation = ExactHardsigmoid()
    return model


def _stock(name: str) -> nn.Layer:
    paddle.seed(0)
    if name == "shufflenet_v2_x0_5":
        return models.shufflenet_v2_x0_5(num_classes=CLASSES)
    return getattr(models, name)(num_classes=CLASSES)


def torchvision_init(name: str, model: nn.Layer) -> nn.Layer:
    """The initialization torchvision's constructors apply (``zoo_torch.torchvision_init``), in
    Paddle. Paddle's own initialization gives ResNet-18 logits of several hundred, where Paddle's
    eager ``cross_entropy`` clips each -log(p) at 64 and ONNX Runtime does not, so its export
    fails the eager check (see README.md). ``verify`` replaces these values by the reference's.
    """
    from paddle.nn import initializer as I

    if name == "shufflenet_v2_x0_5":  # torchvision applies none
        return model
    for m in model.sublayers():
        if isinstance(m, nn.Conv2D):
            fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            fan_out = m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3] // m._groups
            if name in ("resnet18", "vgg11", "mobilenet_v2", "mobilenet_v3_small"):
                I.Normal(0.0, (2.0 / fan_out) ** 0.5)(m.weight)
            elif name == "densenet121":
                I.Normal(0.0, (2.0 / fan_in) ** 0.5)(m.weight)
            elif name == "squeezenet1_1":
                if m is model._conv9:
                    I.Normal(0.0, 0.01)(m.weight)
                else:
                    bound = (6.0 / fan_in) ** 0.5
                    I.Uniform(-bound, bound)(m.weight)
            elif name == "inception_v3":  # not torchvision's trunc_normal(0.1): see zoo_torch
                I.Normal(0.0, (2.0 / fan_in) ** 0.5)(m.weight)
            if m.bias is not None:
                I.Constant(0.0)(m.bias)
        elif isinstance(m, (nn.BatchNorm2D, nn.BatchNorm)):
            I.Constant(1.0)(m.weight)
            I.Constant(0.0)(m.bias)
        elif isinstance(m, nn.Linear):
            if name in ("vgg11", "mobilenet_v2", "mobilenet_v3_small"):
                I.Normal(0.0, 0.01)(m.weight)
                I.Constant(0.0)(m.bias)
            elif name == "densenet121":
                I.Constant(0.0)(m.bias)
            elif name == "inception_v3":
                I.Normal(0.0, 0.01)(m.weight)
                I.Constant(0.0)(m.bias)
            elif name == "resnet18":  # torch's default Linear init
                bound = 1.0 / m.weight.shape[0] ** 0.5
                I.Uniform(-bound, bound)(m.weight)
                I.Uniform(-bound, bound)(m.bias)
    return model


def build(name: str) -> nn.Layer:
    model = _stock(name)
    if name == "squeezenet1_1":
        model = torchvision_squeezenet(model)
    elif name == "inception_v3":
        model = torchvision_inception(model)
    elif name == "mobilenet_v3_small":
        model = torchvision_mobilenet_v3(model)
    return torchvision_init(name, model)


def classification_loss(model, image, label):
    return F.cross_entropy(model(image), label)


def inputs(name: str, train: bool = False) -> dict:
    # inception_v3 in training mode: 107 x 107, the smallest with 2 x 2 positions in Mixed_7b/c
    # (at 75 x 75 their training-mode BatchNorms normalize 2 values per channel, and the running
    # statistics of the exported graph and the eager run part by 1e-4, in both frameworks)
    size = 107 if (train and name == "inception_v3") else SIZES[name]
    return {"image": lg.Input([BATCH, 3, size, size]),
            "label": lg.Input([BATCH], dtype="int64", high=CLASSES)}


def make_spec(name: str, model: nn.Layer | None = None, train: bool = False) -> lg.Spec:
    return lg.Spec(model=build(name) if model is None else model, loss=classification_loss,
                   inputs=inputs(name, train), train=train)


def resnet18(): return make_spec("resnet18")
def resnet18_train(): return make_spec("resnet18", train=True)
def mobilenet_v2(): return make_spec("mobilenet_v2")
def mobilenet_v2_train(): return make_spec("mobilenet_v2", train=True)
def mobilenet_v3_small(): return make_spec("mobilenet_v3_small")
def mobilenet_v3_small_train(): return make_spec("mobilenet_v3_small", train=True)
def densenet121(): return make_spec("densenet121")
def densenet121_train(): return make_spec("densenet121", train=True)
def shufflenet_v2_x0_5(): return make_spec("shufflenet_v2_x0_5")
def shufflenet_v2_x0_5_train(): return make_spec("shufflenet_v2_x0_5", train=True)
def squeezenet1_1(): return make_spec("squeezenet1_1")
def squeezenet1_1_train(): return make_spec("squeezenet1_1", train=True)
def vgg11(): return make_spec("vgg11")
def vgg11_train(): return make_spec("vgg11", train=True)
def inception_v3(): return make_spec("inception_v3")
def inception_v3_train(): return make_spec("inception_v3", train=True)


# The models exactly as paddle.vision.models ships them: not torchvision's architecture.
def squeezenet1_1_stock(): return make_spec("squeezenet1_1", torchvision_init("squeezenet1_1", _stock("squeezenet1_1")))
def squeezenet1_1_stock_train():
    return make_spec("squeezenet1_1", torchvision_init("squeezenet1_1", _stock("squeezenet1_1")), train=True)
def mobilenet_v3_small_stock_train():
    return make_spec("mobilenet_v3_small", torchvision_init("mobilenet_v3_small", _stock("mobilenet_v3_small")),
                     train=True)
def inception_v3_stock(): return make_spec("inception_v3", torchvision_init("inception_v3", _stock("inception_v3")))
def inception_v3_stock_train():
    return make_spec("inception_v3", torchvision_init("inception_v3", _stock("inception_v3")), train=True)
