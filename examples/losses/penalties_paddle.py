"""The gradient penalties of ``penalties_torch.py``, ported to PaddlePaddle.

``lossgraph.grad`` is ``paddle.grad(..., create_graph=True)`` eagerly; inputs are marked with
``stop_gradient = False`` (Paddle's spelling of ``requires_grad_``).

    lossgraph export examples/losses/penalties_paddle.py:wgan_gp -o gp_paddle.onnx
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

import lossgraph as lg

N = 2
IMAGE = [N, 1, 6, 6]
LAMBDA = 10.0


class Critic(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2D(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 1)

    def forward(self, x):
        h = F.leaky_relu(self.conv(x), 0.2)
        return self.fc(h.reshape([h.shape[0], -1]))


def _critic() -> Critic:
    paddle.seed(0)
    return Critic()


def gradient_norm(model, x_hat, scale=1.0):
    x_hat.stop_gradient = False
    grads = lg.grad(model(x_hat) * scale, x_hat)
    return paddle.sqrt((grads.reshape([grads.shape[0], -1]) ** 2).sum(axis=1))


def wgan_losses(model, real, fake):
    return -model(real).mean() + model(fake).mean()


def wgan_gp():
    def loss(model, real, fake, alpha):
        x_hat = alpha * real + (1.0 - alpha) * fake
        penalty = LAMBDA * ((gradient_norm(model, x_hat) - 1.0) ** 2).mean()
        return {"penalty": penalty, "d_loss": wgan_losses(model, real, fake) + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={
        "real": lg.Input(IMAGE), "fake": lg.Input(IMAGE),
        "alpha": lg.Input([N, 1, 1, 1], low=0.0, high=1.0)})


def wgan_lp():
    def loss(model, real, fake, alpha):
        x_hat = alpha * real + (1.0 - alpha) * fake
        excess = paddle.clip(gradient_norm(model, x_hat, scale=6.0) - 1.0, min=0.0)
        penalty = (excess ** 2).mean()  # lambda 1: keeps float32 gradients near 1
        return {"penalty": penalty, "d_loss": wgan_losses(model, real, fake) + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={
        "real": lg.Input(IMAGE), "fake": lg.Input(IMAGE),
        "alpha": lg.Input([N, 1, 1, 1], low=0.0, high=1.0)})


def dragan():
    def loss(model, real, eps, alpha):
        std = paddle.sqrt(paddle.var(real, unbiased=False))
        x_hat = paddle.clip(real + alpha * (0.5 * std * eps), -1.0, 1.0)
        penalty = LAMBDA * ((gradient_norm(model, x_hat) - 1.0) ** 2).mean()
        d_real, d_fake = model(real), model(-real)
        bce = F.binary_cross_entropy_with_logits
        gan = bce(d_real, paddle.ones_like(d_real)) + bce(d_fake, paddle.zeros_like(d_fake))
        return {"penalty": penalty, "d_loss": gan + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={
        "real": lg.Input(IMAGE, low=-0.9, high=0.9), "eps": lg.Input(IMAGE, low=0.0, high=1.0),
        "alpha": lg.Input([N, 1, 1, 1], low=-1.0, high=1.0)})


def r1():
    def loss(model, real):
        real.stop_gradient = False
        grads = lg.grad(model(real), real)
        penalty = 5.0 * (grads ** 2).reshape([grads.shape[0], -1]).sum(1).mean()
        return {"penalty": penalty, "d_loss": F.softplus(-model(real)).mean() + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={"real": lg.Input(IMAGE)})


SPECS = ["wgan_gp", "wgan_lp", "dragan", "r1"]
