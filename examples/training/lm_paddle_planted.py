"""Ports of ``lm_torch.py``'s training loop with one mistake each (the mistakes that make
training loops part): each is found at its step and phase, with a hint naming the setting.

    lossgraph export examples/training/lm_paddle_planted.py:clip_threshold -o planted.onnx
"""

from __future__ import annotations

from lm_paddle import lm
from paddle import nn


def clip_threshold():
    """The global norm clipped at 0.15, not 0.3."""
    return lm(grad_clip=nn.ClipGradByGlobalNorm(0.15))


def clip_per_tensor():
    """Each gradient clipped by its own norm (ClipGradByNorm), not the global one."""
    return lm(grad_clip=nn.ClipGradByNorm(0.3))


def loss_not_divided():
    """The loss of each micro-batch not divided by the 4 accumulated per step."""
    return lm(divide=False)


def never_cleared():
    """clear_grad() forgotten: gradients add up across steps."""
    return lm(clear_grads=False)


def decay_everything():
    """No apply_decay_param_fun: biases and LayerNorm weights decay too."""
    return lm(decay_all=True)
