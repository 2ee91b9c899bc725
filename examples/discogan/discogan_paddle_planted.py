"""The Paddle DiscoGAN port with one planted porting bug each; ``lossgraph verify`` against the
torch DiscoGAN must exit 1.

    lossgraph export examples/discogan/discogan_paddle_planted.py:kernel_transposed -o bad.onnx
    lossgraph verify torch.onnx bad.onnx --tol 1e-6

- ``kernel_transposed``: a converted Conv kernel used with its spatial axes swapped (what a
  hand-written weight conversion from an HWIO layout produces), in ``discriminator_*.conv5``.
- ``bn_affine_swapped``: a BatchNorm whose scale and shift were renamed the wrong way round
  (torch's ``weight`` loaded into what the layer uses as its bias), in ``discriminator_A.bn3``.
- ``generators_swapped``: the port wires ``generator_A`` where the original uses
  ``generator_B``. At initialization both generators produce nearly the same images, so the
  forward losses agree within 6e-7: only gradients tell this one apart.
- ``ema_decay_swapped``: the GAN training loop (``spec_gan_loop``) with its EMA decay passed as
  ``1 - decay``.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from discogan_paddle import DiscoGAN, Discriminator, discogan_loss, make_spec


class KernelTransposedDiscriminator(Discriminator):
    def forward(self, input):
        relu1 = self.relu1(self.conv1(input))
        relu2 = self.relu2(self.bn2(self.conv2(relu1)))
        relu3 = self.relu3(self.bn3(self.conv3(relu2)))
        relu4 = self.relu4(self.bn4(self.conv4(relu3)))
        conv5 = F.conv2d(relu4, self.conv5.weight.transpose([0, 1, 3, 2]))
        return F.sigmoid(conv5), [relu2, relu3, relu4]


def kernel_transposed():
    paddle.seed(0)
    model = DiscoGAN()
    model.discriminator_A = KernelTransposedDiscriminator()
    model.discriminator_B = KernelTransposedDiscriminator()
    return make_spec(model)


class AffineSwappedBatchNorm(paddle.nn.BatchNorm2D):
    def forward(self, x):
        return F.batch_norm(x, self._mean, self._variance, self.bias, self.weight,
                            training=False, epsilon=self._epsilon)


def bn_affine_swapped():
    paddle.seed(0)
    model = DiscoGAN()
    model.discriminator_A.bn3 = AffineSwappedBatchNorm(64 * 4)
    return make_spec(model)


class SwappedGenerators:
    """A view of the model whose generators are exchanged, as a mis-wired port would have it."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        swap = {"generator_A": "generator_B", "generator_B": "generator_A"}
        return getattr(self._model, swap.get(name, name))


def swapped_loss(model, A, B):
    return discogan_loss(SwappedGenerators(model), A, B)


def generators_swapped():
    paddle.seed(0)
    return make_spec(DiscoGAN(), loss=swapped_loss)


def ema_decay_swapped():
    """The GAN loop (``spec_gan_loop``) with the EMA's decay passed as the weight of the new
    value: 0.001 where the original keeps 0.999 of the average."""
    from discogan_paddle import build_model

    return make_spec(build_model(), train=True, loop=True, ema_decay=0.001)
