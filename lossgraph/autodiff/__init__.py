"""Reverse-mode autodiff over ONNX: gradients as ONNX subgraphs that ONNX Runtime runs.

``build_gradients(model, loss, wrt)`` appends the backward pass; rules live in ``rules/``, one
module per op family, registered in ``registry``.
"""

from __future__ import annotations

from lossgraph.autodiff.builder import GradBuilder, GradContext, GradResult, build_gradients

__all__ = ["GradBuilder", "GradContext", "GradResult", "build_gradients"]
