"""DiscoGAN (torch) with one planted change each, to see what ``lossgraph verify`` reports.

    lossgraph export examples/discogan/discogan_torch_planted.py:bce_weighting -o planted.onnx
    lossgraph verify torch.onnx planted.onnx --tol 1e-6      # exits 1: dis_loss diverges

``hinge_margin`` is instructive: DiscoGAN's feature-matching targets are all ones, and
HingeEmbeddingLoss ignores its margin where the target is 1, so that change verifies as equal.
"""

from __future__ import annotations

import functools

from discogan_torch import build_model, discogan_loss, make_spec


def bce_weighting():
    """The discriminator weighs real/fake BCE 0.6/0.4 instead of 0.5/0.5 (dis_loss changes)."""
    return make_spec(build_model(), loss=functools.partial(discogan_loss, dis_weight=0.6))


def recon_rate():
    """The reconstruction weight is 0.02 instead of 0.01 (gen_loss changes, dis_loss does not)."""
    return make_spec(build_model(), loss=functools.partial(discogan_loss, rate=0.02))


def hinge_margin():
    """HingeEmbeddingLoss margin 0.5 instead of 1.0: a no-op here, the targets are all ones."""
    return make_spec(build_model(hinge_margin=0.5))
