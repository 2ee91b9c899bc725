"""Paddle functions that paddle2onnx 2.1.0 cannot convert, re-expressed in convertible ops.

While a model is traced for export, :func:`convertible_ops` swaps these in for Paddle's own
(``paddle.nn.functional.softplus``, ``celu``, ``nll_loss`` and ``label_smooth``, which the layers
``nn.Softplus``, ``nn.NLLLoss`` and ``F.cross_entropy(label_smoothing=...)`` call too; the
While loop of ``nn.RNN``/``BiRNN`` of cells). Each follows the Paddle kernel's formula, so the
eager check at export confirms the exported graph computes what Paddle computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def softplus(x: Any, beta: float = 1, threshold: float = 20, name: Any = None) -> Any:
    """Paddle's softplus kernel: x where beta*x > threshold, else log1p(exp(beta*x)) / beta.

    paddle2onnx converts softplus only for beta == 1 and threshold == 20 as floats, and rejects
    the defaults as Paddle passes them. The exp is taken of min(beta*x, threshold) so the branch
    that is not selected never overflows (its gradient would be NaN)."""
    import paddle

    scaled = x * beta
    capped = paddle.minimum(scaled, paddle.full_like(scaled, threshold))
    soft = paddle.log1p(paddle.exp(capped)) / beta
    return paddle.where(scaled > threshold, x, soft)


def nll_loss(
    input: Any,
    label: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    name: Any = None,
) -> Any:
    """Paddle's nll_loss: -weight[label] * input[label] over the class axis 1; targets equal to
    ignore_index count zero; ``mean`` divides by the summed weight of the counted targets."""
    import paddle

    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"nll_loss reduction must be mean, sum or none, got {reduction!r}")
    kept = label != ignore_index
    safe = paddle.where(kept, label, paddle.zeros_like(label))
    picked = paddle.take_along_axis(input, safe.unsqueeze(1), axis=1).squeeze(1)
    mask = kept.astype(input.dtype)
    target_weight = mask if weight is None else paddle.gather(weight, safe.flatten()).reshape(
        safe.shape
    ) * mask
    losses = -picked * target_weight
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / target_weight.sum()


def label_smooth(label: Any, prior_dist: Any = None, epsilon: float = 0.1, name: Any = None) -> Any:
    """Paddle's label_smooth: (1 - epsilon) * label + epsilon * prior (uniform 1/C by default).

    paddle2onnx has no converter for ``label_smooth``, which ``F.cross_entropy`` uses for
    ``label_smoothing > 0``."""
    if prior_dist is None:
        return label * (1.0 - epsilon) + epsilon / label.shape[-1]
    return label * (1.0 - epsilon) + prior_dist * epsilon


#: (module, attribute) -> replacement. ``paddle.nn.functional`` re-exports from its submodules,
#: and layers call through ``paddle.nn.functional``; both names are swapped.
def celu(x: Any, alpha: float = 1.0, name: Any = None) -> Any:
    """Paddle's celu, which paddle2onnx has no converter for: alpha * elu(x / alpha) (x above 0,
    alpha (exp(x / alpha) - 1) at and below)."""
    import paddle

    return paddle.nn.functional.elu(x / alpha, 1.0) * alpha


def rnn_steps(cell: Any, inputs: Any, initial_states: Any = None, sequence_length: Any = None,
              time_major: bool = False, is_reverse: bool = False, **kwargs: Any) -> Any:
    """``paddle.nn.RNN`` and ``BiRNN`` of cells (LSTMCell, GRUCell, SimpleRNNCell, a cell of the
    user's) traced step by step, as Paddle runs them eagerly: a Python loop over the time steps,
    which an export's static shapes fix. Their static-graph form is a While loop over tensor
    arrays, on which paddle2onnx aborts."""
    from paddle.nn.layer import rnn

    return rnn._rnn_dynamic_graph(cell, inputs, initial_states, sequence_length, time_major,
                                  is_reverse, **kwargs)


REPLACEMENTS = {
    ("paddle.nn.functional", "celu"): celu,
    ("paddle.nn.functional.activation", "celu"): celu,
    ("paddle.nn.layer.rnn", "_rnn_static_graph"): rnn_steps,
    ("paddle.nn.functional", "softplus"): softplus,
    ("paddle.nn.functional.activation", "softplus"): softplus,
    ("paddle.nn.functional", "nll_loss"): nll_loss,
    ("paddle.nn.functional.loss", "nll_loss"): nll_loss,
    ("paddle.nn.functional", "label_smooth"): label_smooth,
    ("paddle.nn.functional.common", "label_smooth"): label_smooth,
}


@contextlib.contextmanager
def convertible_ops() -> Iterator[None]:
    """Swap in the convertible implementations while the model is traced."""
    import importlib

    saved = []
    try:
        for (module_name, attr), replacement in REPLACEMENTS.items():
            module = importlib.import_module(module_name)
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, replacement)
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)
