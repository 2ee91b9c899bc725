"""Module-output taps: every submodule call's output, tagged in the exported graph.

While a model is traced, a forward hook on each submodule passes its tensor outputs through a
small marker, ``reshape(concat([TAP_TAG, index, flatten(y)])[2:], y.shape)``, which both
exporters carry through unchanged. After export, :func:`mark_taps` replaces each marker by an
``Identity`` carrying ``lossgraph.tap = "<module path>#<call>[.<output>]"``: the module
boundaries of the two graphs then correspond by name, whatever the exporters did inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx

from lossgraph.autodiff.markers import source_value
from lossgraph.graph import TAP_KEY, TAP_TAG, remove_dead_nodes, set_node_meta, topological_sort
from lossgraph.runtime import constant_values, infer_types


class TapRecorder:
    """Names the taps of one traced forward pass, in call order."""

    def __init__(self, module_paths: dict[int, str]) -> None:
        self.module_paths = module_paths
        self.names: list[str] = []
        self._calls: dict[str, int] = {}

    def reset(self) -> None:
        """Start a forward pass (a tracer may run the forward more than once)."""
        self.names = []
        self._calls = {}

    def name_for(self, module: Any, suffix: str) -> str | None:
        path = self.module_paths.get(id(module))
        if not path:
            return None
        return f"{path}#{self._calls.get(path, 0)}{suffix}"

    def finish_call(self, module: Any) -> None:
        path = self.module_paths.get(id(module))
        if path:
            self._calls[path] = self._calls.get(path, 0) + 1


def _tap_outputs(output: Any, tap_one: Any, suffix: str = "") -> Any:
    """Apply ``tap_one(tensor, suffix)`` to every tensor in a (nested) module output."""
    if isinstance(output, (list, tuple)):
        tapped = [_tap_outputs(item, tap_one, f"{suffix}.{i}") for i, item in enumerate(output)]
        if all(a is b for a, b in zip(tapped, output)):
            return output  # nothing tapped: the very object, whatever its class
        if isinstance(output, list):
            return tapped
        # a named tuple (torch's PackedSequence) is built from its fields, a tuple from a list
        return type(output)(*tapped) if hasattr(output, "_fields") else type(output)(tapped)
    return tap_one(output, suffix)


@contextlib.contextmanager
def torch_taps(
    model: Any, recorder: TapRecorder, record: dict[str, np.ndarray] | None = None
) -> Iterator[None]:
    """Mark every submodule output for :func:`mark_taps` while the model is traced; with
    ``record``, an eager run instead: keep each output's value under its tap name."""
    import torch

    def tap_one(module: Any, tensor: Any, suffix: str) -> Any:
        if not torch.is_tensor(tensor) or not tensor.is_floating_point() or tensor.dim() == 0:
            return tensor
        name = recorder.name_for(module, suffix)
        if name is None:
            return tensor
        if record is not None:
            record[name] = tensor.detach().cpu().float().numpy().copy()
            return tensor
        index = len(recorder.names)
        recorder.names.append(name)
        # a bfloat16 or float16 output (torch.autocast) is tapped as its exact float32 copy
        wide = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
        head = torch.tensor([TAP_TAG, float(index)], dtype=wide.dtype)
        packed = torch.cat([head, wide.reshape(-1)])
        return packed[2:].reshape(tensor.shape).to(tensor.dtype).clone()  # not a view: in-place ops may follow

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        result = _tap_outputs(output, lambda t, s: tap_one(module, t, s))
        recorder.finish_call(module)
        return result if record is None else None  # recording leaves the output as it is

    handles = [m.register_forward_hook(hook) for path, m in model.named_modules() if path]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def paddle_taps(
    model: Any, recorder: TapRecorder, record: dict[str, np.ndarray] | None = None
) -> Iterator[None]:
    """:func:`torch_taps` for Paddle layers."""
    import paddle

    def tap_one(layer: Any, tensor: Any, suffix: str) -> Any:
        if not hasattr(tensor, "shape") or len(tensor.shape) == 0:
            return tensor
        if tensor.dtype not in (paddle.float32, paddle.float64):
            return tensor
        name = recorder.name_for(layer, suffix)
        if name is None:
            return tensor
        if record is not None:
            record[name] = tensor.numpy().copy()
            return tensor
        index = len(recorder.names)
        recorder.names.append(name)
        head = paddle.to_tensor([TAP_TAG, float(index)], dtype=tensor.dtype)
        packed = paddle.concat([head, tensor.reshape([-1])])
        return packed[2:].reshape(list(tensor.shape))

    def hook(layer: Any, inputs: Any, output: Any) -> Any:
        result = _tap_outputs(output, lambda t, s: tap_one(layer, t, s))
        recorder.finish_call(layer)
        return result if record is None else None  # recording leaves the output as it is

    handles = [
        layer.register_forward_post_hook(hook)
        for path, layer in model.named_sublayers()
        if path
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def mark_taps(model: onnx.ModelProto, names: list[str]) -> None:
    """Replace every tap marker by a tagged Identity of the tapped value."""
    graph = model.graph
    consts = constant_values(model)
    types = infer_types(model)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    markers: dict[str, str] = {}  # a marker's result -> the value it marks
    for node in list(graph.node):  # in topological order: a nested marker after the inner one
        index = _tap_index(node, consts)
        if index is None or index >= len(names):
            continue
        tapped = _unmarked(node.input[-1], producers, markers)
        result = _picked(node.output[0], consumers, types, types.get(tapped))
        if result is None:
            continue
        markers[result] = tapped
        identity = onnx.helper.make_node(
            "Identity", [tapped], [f"{result}/tap"], name=f"tap/{names[index]}"
        )
        set_node_meta(identity, TAP_KEY, names[index])
        graph.node.append(identity)
    renames = {result: f"{result}/tap" for result in markers}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
    for output in graph.output:
        if output.name in renames:  # a loss that is a module output: keep the name
            _rename_output(graph, renames[output.name], output.name)
    remove_dead_nodes(graph, keep=renames.values())  # a tap may be read only as an extra output
    topological_sort(graph)


def _unmarked(value: str, producers, markers: dict[str, str]) -> str:
    """The value a marker's input comes from, before any reshaping and before any earlier
    marker: a module whose output is its last child's (a Sequential) wraps the child's marked
    output in its own marker, and tapping that would keep the child's marker (a Concat and a
    Slice copying the whole tensor on every run) in the graph."""
    value = source_value(value, producers, stop=markers)
    return markers.get(value, value)


def _rename_output(graph: onnx.GraphProto, current: str, wanted: str) -> None:
    for node in graph.node:
        node.output[:] = [wanted if o == current else o for o in node.output]
        node.input[:] = [wanted if i == current else i for i in node.input]


def _tap_index(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> int | None:
    if node.op_type != "Concat" or len(node.input) < 2:
        return None
    head = consts.get(node.input[0])
    if head is None or head.size != 2 or np.float32(head.reshape(-1)[0]) != np.float32(TAP_TAG):
        return None
    return int(head.reshape(-1)[1])


def _picked(start: str, consumers, types, tapped_type) -> str | None:
    """The value after the marker's Slice/Reshape chain that has the tapped value's shape."""
    value = start
    for _ in range(4):
        nodes = consumers.get(value, [])
        if len(nodes) != 1 or nodes[0].op_type not in ("Slice", "Reshape", "Identity", "Squeeze"):
            return None
        value = nodes[0].output[0]
        value_type = types.get(value)
        if value_type is not None and tapped_type is not None and value_type.shape == tapped_type.shape:
            return value
    return None
