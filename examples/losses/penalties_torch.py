"""Gradient penalties of ``gan-losses-tensorflow.md`` and MMagic's R1, in PyTorch.

Each needs a gradient inside the loss: ``lossgraph.grad(outputs, inputs)`` is
``torch.autograd.grad(..., create_graph=True)`` when run eagerly and a gradient subgraph built
by lossgraph in the exported graph, so the penalty's own parameter gradients (second order)
are compared too. ``penalties_paddle.py`` is the Paddle port.

    lossgraph export examples/losses/penalties_torch.py:wgan_gp -o gp_torch.onnx
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lossgraph as lg

N = 2
IMAGE = [N, 1, 6, 6]
LAMBDA = 10.0


class Critic(nn.Module):
    """A small convolutional critic D(x) -> one score per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 1)

    def forward(self, x):
        h = F.leaky_relu(self.conv(x), 0.2)
        return self.fc(h.reshape(h.shape[0], -1))


def _critic() -> Critic:
    torch.manual_seed(0)
    return Critic()


def gradient_norm(model, x_hat, scale=1.0):
    """|| d (scale * D(x_hat)) / d x_hat ||_2 per sample."""
    x_hat.requires_grad_(True)
    grads = lg.grad(model(x_hat) * scale, x_hat)
    return grads.reshape(grads.shape[0], -1).norm(dim=1)


def wgan_losses(model, real, fake):
    return -model(real).mean() + model(fake).mean()


def wgan_gp():
    """WGAN-GP: lambda * mean((||grad D(x_hat)|| - 1)^2), x_hat between real and fake."""

    def loss(model, real, fake, alpha):
        x_hat = alpha * real + (1.0 - alpha) * fake
        penalty = LAMBDA * ((gradient_norm(model, x_hat) - 1.0) ** 2).mean()
        return {"penalty": penalty, "d_loss": wgan_losses(model, real, fake) + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={
        "real": lg.Input(IMAGE), "fake": lg.Input(IMAGE),
        "alpha": lg.Input([N, 1, 1, 1], low=0.0, high=1.0)})


def wgan_lp():
    """WGAN-LP: mean(max(0, ||grad D(x_hat)|| - 1)^2) (lambda 1). The critic is scaled by 6 so
    that some gradient norms exceed 1 at initialization (otherwise the penalty is 0)."""

    def loss(model, real, fake, alpha):
        x_hat = alpha * real + (1.0 - alpha) * fake
        excess = torch.clamp(gradient_norm(model, x_hat, scale=6.0) - 1.0, min=0.0)
        penalty = (excess ** 2).mean()  # lambda 1: keeps float32 gradients near 1
        return {"penalty": penalty, "d_loss": wgan_losses(model, real, fake) + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={
        "real": lg.Input(IMAGE), "fake": lg.Input(IMAGE),
        "alpha": lg.Input([N, 1, 1, 1], low=0.0, high=1.0)})


def dragan():
    """DRAGAN: the gradient penalty at real data perturbed by noise 0.5 * std(real) * eps,
    x_hat = clip(real + alpha * noise, -1, 1) with alpha in [-1, 1) (the seed's two-sided form)."""

    def loss(model, real, eps, alpha):
        std = torch.sqrt(real.var(unbiased=False))
        x_hat = torch.clamp(real + alpha * (0.5 * std * eps), -1.0, 1.0)
        penalty = LAMBDA * ((gradient_norm(model, x_hat) - 1.0) ** 2).mean()
        d_real, d_fake = model(real), model(-real)
        bce = F.binary_cross_entropy_with_logits
        gan = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        return {"penalty": penalty, "d_loss": gan + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={
        "real": lg.Input(IMAGE, low=-0.9, high=0.9), "eps": lg.Input(IMAGE, low=0.0, high=1.0),
        "alpha": lg.Input([N, 1, 1, 1], low=-1.0, high=1.0)})


def r1():
    """R1 (StyleGAN2 / MMagic R1GradientPenalty): gamma/2 * mean(||grad D(real)||^2)."""

    def loss(model, real):
        real.requires_grad_(True)
        grads = lg.grad(model(real), real)
        penalty = 5.0 * grads.pow(2).reshape(grads.shape[0], -1).sum(1).mean()
        return {"penalty": penalty, "d_loss": F.softplus(-model(real)).mean() + penalty}

    return lg.Spec(model=_critic(), loss=loss, inputs={"real": lg.Input(IMAGE)})


SPECS = ["wgan_gp", "wgan_lp", "dragan", "r1"]
