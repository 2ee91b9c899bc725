"""Paddle loss ports with one planted porting bug each; each verifies against the torch spec of
the same name in ``losses_torch.py`` with exit code 1.

- ``hinge_margin`` (against ``hinge_embedding``): the port uses margin 0.5, torch's default is 1.0.
- ``linear_not_transposed`` (against ``mse``): a hand-written Linear that multiplies by the
  transposed weight, as if Paddle stored it [out, in] like torch (the weight is square, so the
  shapes still fit and nothing fails but the numbers).
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from losses_paddle import HALF, SIGN_1, D, X, _head, _reductions

import lossgraph as lg


def hinge_margin():
    def loss(model, x, y):
        out = model(x)
        return {
            **_reductions(F.hinge_embedding_loss, out, y, margin=0.5),
            "margin2_mean": F.hinge_embedding_loss(out, y, margin=2.0),
        }

    return lg.Spec(model=_head(D, 1), loss=loss, inputs={"x": X, "y": SIGN_1})


def linear_not_transposed():
    def loss(model, x, target):
        pred = paddle.matmul(x, model.fc.weight, transpose_y=True) + model.fc.bias
        return _reductions(F.mse_loss, pred, target)

    return lg.Spec(model=_head(), loss=loss, inputs={"x": X, "target": HALF})
