"""lossgraph: does a port between PyTorch and PaddlePaddle train the same, and where does it part?

Public API: :class:`Spec` and :class:`Input` (the spec-file contract), :func:`export` (a spec to an
ONNX LossGraph) and :func:`verify` (two LossGraphs compared on ONNX Runtime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lossgraph import verify  # a callable package: lossgraph.verify(reference, candidate, ...)
from lossgraph.errors import (
    ExportError,
    InternalError,
    LossgraphError,
    SpecError,
    UnsupportedOpError,
    VerificationError,
)
from lossgraph.spec import EMA, ClipGradNorm, ClipGradValue, Input, LRSchedule, Spec, load_spec

if TYPE_CHECKING:
    from lossgraph.graph import LossGraph

__version__ = "0.1.0"


def grad(outputs: Any, inputs: Any) -> Any:
    """d(sum(outputs))/d(inputs) inside a loss (gradient penalties): torch/Paddle autograd
    eagerly, a subgraph lossgraph builds in the exported graph. ``inputs`` must require grad."""
    from lossgraph.exporters.grad_marker import grad as _grad

    return _grad(outputs, inputs)


def export(spec: Spec | str, output: Any = None, seed: int = 0) -> LossGraph:
    """Export a :class:`Spec` (or ``"FILE.py:NAME"``) to a LossGraph; save it if ``output``."""
    from lossgraph.exporters import export as _export

    return _export(spec, output, seed)


__all__ = [
    "ClipGradNorm",
    "ClipGradValue",
    "EMA",
    "ExportError",
    "Input",
    "LRSchedule",
    "InternalError",
    "LossgraphError",
    "Spec",
    "SpecError",
    "UnsupportedOpError",
    "VerificationError",
    "export",
    "grad",
    "load_spec",
    "verify",
]
