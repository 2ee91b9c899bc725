"""``lossgraph.grad``: a gradient inside the loss (gradient penalties), eager or exported.

Eagerly it is the framework's own ``autograd.grad(outputs, inputs, ones, create_graph=True)``.
While an exporter traces the loss it emits instead a small marker both exporters carry through
unchanged: ``reshape(concat([MAGIC, flatten(outputs), flatten(inputs)])[-n:], inputs.shape)``.
After export, :func:`lossgraph.autodiff.markers.expand_grad_markers` finds the marker and
replaces it with the gradient subgraph built by lossgraph's autodiff, so the exported graph
computes the penalty itself and can be differentiated again (second order).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from lossgraph.errors import SpecError
from lossgraph.graph import GRAD_MARKER_TAG as MAGIC

_EXPORTING: list[str] = []


@contextlib.contextmanager
def exporting(framework: str) -> Iterator[None]:
    """Within this block ``grad`` emits markers instead of differentiating."""
    _EXPORTING.append(framework)
    try:
        yield
    finally:
        _EXPORTING.pop()


def grad(outputs: Any, inputs: Any) -> Any:
    """d(sum(outputs))/d(inputs), differentiable again (``create_graph=True``).

    ``inputs`` must take part in the autograd graph: ``x.requires_grad_(True)`` in torch,
    ``x.stop_gradient = False`` in Paddle, before ``outputs`` is computed from it.
    """
    framework = _framework_of(outputs)
    if _EXPORTING:
        return _marker(framework, outputs, inputs)
    if framework == "torch":
        import torch

        if not inputs.requires_grad:
            raise SpecError(
                "lossgraph.grad(outputs, inputs): inputs does not require grad; call "
                "inputs.requires_grad_(True) before computing outputs from it."
            )
        return torch.autograd.grad(
            outputs, inputs, grad_outputs=torch.ones_like(outputs), create_graph=True
        )[0]
    import paddle

    if inputs.stop_gradient:
        raise SpecError(
            "lossgraph.grad(outputs, inputs): inputs has stop_gradient=True; set "
            "inputs.stop_gradient = False before computing outputs from it."
        )
    return paddle.grad(
        outputs, inputs, grad_outputs=paddle.ones_like(outputs), create_graph=True
    )[0]


def _framework_of(tensor: Any) -> str:
    module = type(tensor).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("paddle"):
        return "paddle"
    raise SpecError(f"lossgraph.grad takes torch or paddle tensors, got {type(tensor).__name__}.")


def _marker(framework: str, outputs: Any, inputs: Any) -> Any:
    shape = list(inputs.shape)
    count = math.prod(shape)
    if framework == "torch":
        import torch

        tag = torch.full((1,), MAGIC, dtype=inputs.dtype)
        packed = torch.cat([tag, outputs.reshape(-1), inputs.reshape(-1)])
        return packed[packed.shape[0] - count :].reshape(shape)
    import paddle

    tag = paddle.full([1], MAGIC, dtype=inputs.dtype)
    packed = paddle.concat([tag, outputs.reshape([-1]), inputs.reshape([-1])])
    total = 1 + math.prod(list(outputs.shape)) + count
    return packed[total - count :].reshape(shape)
