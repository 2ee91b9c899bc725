"""Expanding ``lossgraph.grad`` markers into gradient subgraphs.

A marker (see ``lossgraph/exporters/grad_marker.py``) is a Concat whose first input is the
constant MAGIC, followed by the flattened ``outputs`` and ``inputs`` values, and a Slice/Reshape
chain that picks the ``inputs`` part back out. The chain's result is replaced by
d(sum(outputs))/d(inputs) built with :class:`GradBuilder`; the marker nodes become dead and are
removed.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

import numpy as np
import onnx

from lossgraph.autodiff.builder import GradBuilder
from lossgraph.errors import ExportError
from lossgraph.graph import GRAD_MARKER_TAG, remove_dead_nodes, topological_sort
from lossgraph.runtime.types import constant_values

MAGIC = np.float32(GRAD_MARKER_TAG)
_RELABEL_OPS = ("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze")
_PICK_OPS = ("Slice", *_RELABEL_OPS)


def _is_marker(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> bool:
    if node.op_type != "Concat" or len(node.input) != 3:
        return False
    tag = consts.get(node.input[0])
    return tag is not None and tag.size == 1 and np.float32(tag.reshape(-1)[0]) == MAGIC


def source_value(
    value: str, producers: Mapping[str, onnx.NodeProto], stop: Container[str] = ()
) -> str:
    """The value before any reshaping (what the user passed to lossgraph.grad), or the first
    value in ``stop`` on the way back."""
    node = producers.get(value)
    while value not in stop and node is not None and node.op_type in _RELABEL_OPS:
        value = node.input[0]
        node = producers.get(value)
    return value


def expand_grad_markers(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` with every gradient marker replaced by its gradient subgraph."""
    while True:
        consts = constant_values(model)
        marker = next((n for n in model.graph.node if _is_marker(n, consts)), None)
        if marker is None:
            return model
        model = _expand_one(model, marker, feeds)


def _expand_one(
    model: onnx.ModelProto, marker: onnx.NodeProto, feeds: Mapping[str, np.ndarray] | None
) -> onnx.ModelProto:
    builder = GradBuilder(model, feeds)
    graph = builder.graph
    marker = next(n for n in graph.node if n.name == marker.name and list(n.output) == list(marker.output))
    outputs = source_value(marker.input[1], builder.producers)
    inputs = source_value(marker.input[2], builder.producers)
    result = _picked_value(graph, marker.output[0], builder.types[inputs].shape, builder)
    out_type = builder.types[outputs]
    seed = builder.constant(np.ones(out_type.shape, dtype=out_type.numpy_dtype), None)
    grads = builder.backward({outputs: seed}, [inputs])
    gradient = grads[inputs]
    if gradient is None:
        shape = builder.types[inputs].shape
        gradient = builder.constant(np.zeros(shape, dtype=builder.types[inputs].numpy_dtype), None)
    for node in graph.node:
        node.input[:] = [gradient if name == result else name for name in node.input]
    for output in graph.output:
        if output.name == result:
            raise ExportError("A loss is exactly a lossgraph.grad(...) result; reduce it first.")
    remove_dead_nodes(graph)
    topological_sort(graph)
    return builder.model


def _picked_value(graph: onnx.GraphProto, start: str, shape, builder: GradBuilder) -> str:
    """Follow the Slice/Reshape chain after the marker's Concat to the first value of
    ``inputs``' shape: that value stands for the gradient."""
    value = start
    while True:
        consumers = [n for n in graph.node if value in n.input]
        if len(consumers) != 1 or consumers[0].op_type not in _PICK_OPS:
            break
        value = consumers[0].output[0]
        value_type = builder.types.get(value)
        if value_type is not None and value_type.shape == tuple(shape):
            return value
    raise ExportError(
        "A lossgraph.grad marker was found but its result could not be traced; the exporter "
        "rewrote the marker pattern."
    )
