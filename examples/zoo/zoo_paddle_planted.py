"""The vision zoo's Paddle candidates with one planted porting bug each; ``lossgraph verify``
against the torchvision port in ``zoo_torch.py`` (the function of the same name without
``_planted``) must exit 1 and should name the scope given in each docstring (torch module paths).

    lossgraph export examples/zoo/zoo_torch.py:resnet18 -o resnet18_t.onnx
    lossgraph export examples/zoo/zoo_paddle_planted.py:resnet18_planted -o resnet18_bad.onnx
    lossgraph verify resnet18_t.onnx resnet18_bad.onnx --grads --steps 3 --tol 1e-6

``squeezenet1_1_train_planted`` and ``mobilenet_v3_small_train_planted`` are training-mode bugs
(compare with ``zoo_torch.py:<model>_train``); the others show in eval mode too.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.vision.models.shufflenetv2 import InvertedResidual
from zoo_paddle import build, make_spec


def resnet18_planted():
    """BatchNorm epsilon 1e-3 instead of 1e-5 in one block (a port that copied Keras' or
    Inception's default). Scope: ``layer3.0.bn1``."""
    model = build("resnet18")
    model.layer3[0].bn1._epsilon = 1e-3
    return make_spec("resnet18", model)


class NoResidual(paddle.vision.models.mobilenetv2.InvertedResidual):
    def forward(self, x):
        return self.conv(x)


def mobilenet_v2_planted():
    """The residual connection of one inverted-residual block dropped (the port checks
    ``stride == 1`` but forgets to add ``x``). Scope: ``features.3`` (24 -> 24 channels, stride 1)."""
    model = build("mobilenet_v2")
    block = model.features[3]
    assert block.use_res_connect
    block.__class__ = NoResidual
    return make_spec("mobilenet_v2", model)


def mobilenet_v3_small_planted():
    """Sigmoid where torchvision's squeeze-excitation gates with Hardsigmoid, in one block.
    Scope: ``features.4.block.2`` (its ``scale_activation``)."""
    model = build("mobilenet_v3_small")
    model.blocks[3].mid_se.scale_activation = nn.Sigmoid()
    return make_spec("mobilenet_v3_small", model)


def mobilenet_v3_small_train_planted():
    """Training mode; BatchNorm momentum 0.01 written in Paddle's convention (Paddle keeps
    ``momentum`` of the old running statistics: torch's 0.01 is Paddle's 0.99), in one block, so
    its running statistics move 99 times too fast. Losses and gradients agree; only the updated
    buffers differ. Scope: ``features.9.block.1.1``."""
    model = build("mobilenet_v3_small")
    model.blocks[8].bottleneck_conv[1]._momentum = 0.01
    return make_spec("mobilenet_v3_small", model, train=True)


def densenet121_planted():
    """The ReLU of one dense layer's second BatchNorm dropped (``BatchNorm(c)`` where the port
    needs ``BatchNorm(c, act='relu')``). Scope: ``features.denseblock2.denselayer5.relu2``
    (Paddle: ``db_conv_3.conv3_5.bn_ac_func2._batch_norm``)."""
    model = build("densenet121")
    layer = model.db_conv_3.conv3_5
    layer.bn_ac_func2._batch_norm._act = None
    return make_spec("densenet121", model)


class NoShuffle(InvertedResidual):
    def forward(self, inputs):
        x1, x2 = paddle.split(inputs, num_or_sections=[inputs.shape[1] // 2,
                                                       inputs.shape[1] // 2], axis=1)
        x2 = self._conv_pw(x2)
        x2 = self._conv_dw(x2)
        x2 = self._conv_linear(x2)
        return paddle.concat([x1, x2], axis=1)


def shufflenet_v2_x0_5_planted():
    """The channel shuffle missing at the end of one stride-1 unit. Scope: ``stage3.1``
    (Paddle's ``3_2``)."""
    model = build("shufflenet_v2_x0_5")
    block = getattr(model, "3_2")
    block.__class__ = NoShuffle
    return make_spec("shufflenet_v2_x0_5", model)


def squeezenet1_1_planted():
    """Paddle's own SqueezeNet 1.1 stem: the first conv padded by 1 and the max-pools flooring
    (torchvision: no padding, ``ceil_mode=True``). On 64 x 64 inputs the shapes still agree
    (32 -> floor pool 15 vs 31 -> ceil pool 15), the numbers do not. Scope: ``features.0``."""
    model = build("squeezenet1_1")
    model._conv = nn.Conv2D(3, 64, 3, stride=2, padding=1)
    model._pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=0)
    return make_spec("squeezenet1_1", model)


def squeezenet1_1_train_planted():
    """Training mode; Paddle's own SqueezeNet dropout, ``mode='downscale_in_infer'``: in training
    it keeps the surviving activations unscaled where torch multiplies them by 1/(1-p) = 2.
    Scope: ``classifier.0``."""
    model = build("squeezenet1_1")
    model._drop = nn.Dropout(p=0.5, mode="downscale_in_infer")
    return make_spec("squeezenet1_1", model, train=True)


def vgg11_planted():
    """A ReLU missing after one conv (the port's layer list skips it). Scope: ``features.9``
    (after ``features.8``, the second 256-channel conv)."""
    model = build("vgg11")
    assert isinstance(model.features[9], nn.ReLU)
    model.features[9] = nn.Identity()
    return make_spec("vgg11", model)


class ExclusivePool(nn.Layer):
    def forward(self, x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, exclusive=True)


def inception_v3_planted():
    """One InceptionC's branch-pool average excludes the padding (``exclusive=True``, Paddle's
    default) where torchvision's ``F.avg_pool2d`` counts it. Scope: ``Mixed_6b``."""
    model = build("inception_v3")
    model.inception_block_list[4].branch_pool = ExclusivePool()
    return make_spec("inception_v3", model)
