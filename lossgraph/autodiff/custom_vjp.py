"""Carried custom backward passes: markers into nodes whose gradient is the user's backward.

An exporter traces an ``autograd.Function`` / ``PyLayer`` with a backward of its own as a marker
(see ``lossgraph/exporters/custom_backward.py``): ``concat([tag, index, count, output, args...,
placeholder, grads...])`` with the output picked back out, where ``grads`` were computed by the
traced backward from ``placeholder``, a stand-in for the output's gradient.
:func:`carry_custom_vjps` replaces the pick by ``Reshape(flattened output, shape)`` tagged
``lossgraph.custom_vjp`` (the arguments, the label of the Function, the local function holding the
backward) and moves the backward's nodes into that local function (domain
``lossgraph.custom_vjp``), which takes the placeholder first (``concat([pad, flat gradient])``)
and then the forward values the backward reads. :class:`GradBuilder` gives such a node's
gradient to the arguments, by inlining the function, instead of differentiating the forward.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lossgraph.errors import ExportError
from lossgraph.graph import (
    CUSTOM_VJP_DOMAIN,
    CUSTOM_VJP_KEY,
    SCOPE_KEY,
    SOURCE_KEY,
    VJP_GRAD_TAG,
    VJP_MARKER_TAG,
    live_nodes,
    node_meta,
    remove_dead_nodes,
    set_node_meta,
)
from lossgraph.runtime import ValueType, constant_values, infer_types


@dataclass(frozen=True)
class CustomVjp:
    """What a ``lossgraph.custom_vjp`` node says: the local function computing the gradients of
    ``args`` from the output's gradient and ``captures`` (forward values), and whose it is."""

    function: str
    args: tuple[str, ...]
    captures: tuple[str, ...]
    label: str

    def to_json(self) -> str:
        return json.dumps(
            {"function": self.function, "args": list(self.args), "captures": list(self.captures),
             "label": self.label}
        )

    @classmethod
    def of(cls, node: onnx.NodeProto) -> CustomVjp | None:
        text = node_meta(node, CUSTOM_VJP_KEY)
        if text is None:
            return None
        data = json.loads(text)
        return cls(data["function"], tuple(data["args"]), tuple(data["captures"]), data["label"])


def _tag(value: str, consts: Mapping[str, np.ndarray]) -> float | None:
    tag = consts.get(value)
    if tag is None or tag.size != 1:
        return None
    return float(np.float32(tag.reshape(-1)[0]))


def carry_custom_vjps(
    model: onnx.ModelProto, labels: Sequence[str], feeds: Mapping[str, np.ndarray] | None = None
) -> onnx.ModelProto:
    """``model`` with each custom-backward marker turned into a tagged node and a local
    function (in place; returned for chaining)."""
    graph = model.graph
    consts = constant_values(model)
    markers = [n for n in graph.node if _tag_of(n, consts) == np.float32(VJP_MARKER_TAG)]
    traced = {int(consts[m.input[1]].reshape(-1)[0]) for m in markers if m.input[1] in consts}
    lost = [label for index, label in enumerate(labels) if index not in traced]
    if lost:
        raise ExportError(
            f"The exporter traced {'; '.join(lost)} without its custom backward (it fell back to "
            f"a tracer that inlines the forward); the gradient would be the forward's."
        )
    if not markers:
        return model
    types = infer_types(model, feeds)
    producers = {out: node for node in graph.node for out in node.output if out}
    calls = [_Call.read(m, k, consts, producers, graph, labels) for k, m in enumerate(markers)]
    # the forward: each output reshaped, by a tagged node in place of its pick
    boundaries = {id(c.marker): c.boundary(graph, types) for c in calls}
    nodes = [n for n in graph.node if not any(c.picked in n.output for c in calls)]
    for position in reversed(range(len(nodes))):
        boundary = boundaries.get(id(nodes[position]))
        if boundary is not None:
            nodes.insert(position, boundary)
    del graph.node[:]
    graph.node.extend(nodes)
    # the backward: what the gradients need that the forward does not, into local functions
    live = _live_values(graph, exclude={id(m) for m in markers})
    in_graph = {node.name: node for node in graph.node}  # extend() copied the boundaries
    for call in calls:
        vjp = call.function(model, live)
        set_node_meta(in_graph[boundaries[id(call.marker)].name], CUSTOM_VJP_KEY, vjp.to_json())
    remove_dead_nodes(graph)
    leftover = [n.name for n in graph.node if _tag_of(n, constant_values(model)) == np.float32(VJP_GRAD_TAG)]
    if leftover:
        raise ExportError(
            "A custom backward's gradient placeholder is used outside its backward; the "
            "exporter rewrote the marker pattern."
        )
    model.opset_import.append(helper.make_opsetid(CUSTOM_VJP_DOMAIN, 1))
    return model


def _tag_of(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> float | None:
    return _tag(node.input[0], consts) if node.op_type == "Concat" and node.input else None


@dataclass
class _Call:
    """One traced ``apply``: its marker and the values the marker packs."""

    marker: onnx.NodeProto
    number: int
    label: str
    flat_output: str
    args: list[str]
    placeholder: str
    grads: list[str]
    picked: str

    @classmethod
    def read(
        cls,
        marker: onnx.NodeProto,
        number: int,
        consts: Mapping[str, np.ndarray],
        producers: Mapping[str, onnx.NodeProto],
        graph: onnx.GraphProto,
        labels: Sequence[str],
    ) -> _Call:
        index = int(consts[marker.input[1]].reshape(-1)[0])
        n_args = int(consts[marker.input[2]].reshape(-1)[0])
        label = labels[index] if index < len(labels) else f"custom backward #{index}"
        if len(marker.input) != 2 * n_args + 5:
            raise ExportError(f"{label}: its marker has parts missing; the exporter rewrote the pattern.")
        return cls(
            marker=marker,
            number=number,
            label=label,
            flat_output=marker.input[3],
            args=[_unflattened(v, producers) for v in marker.input[4 : 4 + n_args]],
            placeholder=_placeholder(marker.input[4 + n_args], producers, consts, label),
            grads=list(marker.input[5 + n_args :]),
            picked=_picked(graph, marker.output[0]),
        )

    def boundary(self, graph: onnx.GraphProto, types: Mapping[str, ValueType]) -> onnx.NodeProto:
        """``Reshape(flattened output, shape)`` writing the picked value."""
        if self.picked not in types:
            raise ExportError(f"{self.label}: the shape of its output is not known statically.")
        shape = f"custom_backward/{self.number}/shape"
        graph.initializer.append(
            numpy_helper.from_array(np.asarray(types[self.picked].shape, dtype=np.int64), shape)
        )
        node = helper.make_node(
            "Reshape", [self.flat_output, shape], [self.picked], name=f"custom_backward/{self.number}"
        )
        for key in (SCOPE_KEY, SOURCE_KEY):
            value = node_meta(self.marker, key)
            if value is not None:
                set_node_meta(node, key, value)
        return node

    def function(self, model: onnx.ModelProto, live: set[str]) -> CustomVjp:
        """Copy the nodes computing the gradients from the placeholder and ``live`` forward
        values into a local function; those forward values are its captures."""
        body = _ancestors(model.graph, self.grads, stop={self.placeholder}, outside=live)
        produced = {o for n in body for o in n.output}
        captures = list(dict.fromkeys(
            v for n in body for v in n.input if v and v not in produced and v != self.placeholder
        ))
        name = f"vjp_{self.number}"
        nodes = [_copy(n) for n in body]
        outputs = []
        for k, grad in enumerate(self.grads):
            out = f"{name}/grad_{k}"
            nodes.append(helper.make_node("Identity", [grad], [out], name=out))
            if grad not in produced and grad != self.placeholder and grad not in captures:
                captures.append(grad)
            outputs.append(out)
        model.functions.append(helper.make_function(
            CUSTOM_VJP_DOMAIN, name, [self.placeholder, *captures], outputs, nodes,
            opset_imports=[o for o in model.opset_import if o.domain != CUSTOM_VJP_DOMAIN],
        ))
        return CustomVjp(name, tuple(self.args), tuple(captures), self.label)


_RELABELS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def _unflattened(value: str, producers: Mapping[str, onnx.NodeProto]) -> str:
    """The argument the marker flattened (one Reshape back; a 1-D argument may have none)."""
    node = producers.get(value)
    return node.input[0] if node is not None and node.op_type in ("Reshape", "Flatten") else value


def _placeholder(
    value: str, producers: Mapping[str, onnx.NodeProto], consts: Mapping[str, np.ndarray], label: str
) -> str:
    """The output of the placeholder's Concat, found back from its flattened pick."""
    node = producers.get(value)
    while node is not None:
        if node.op_type == "Concat" and _tag(node.input[0], consts) == np.float32(VJP_GRAD_TAG):
            return node.output[0]
        node = producers.get(node.input[0]) if node.input else None
    raise ExportError(f"{label}: its gradient placeholder was not found; the exporter rewrote the pattern.")


def _picked(graph: onnx.GraphProto, start: str) -> str:
    """The end of the Slice-then-relabels chain that picks the output out of the marker."""
    consumers = [n for n in graph.node if start in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "Slice":
        raise ExportError("A custom backward marker's output is not picked by one Slice; the "
                          "exporter rewrote the pattern.")
    value = consumers[0].output[0]
    outputs = {o.name for o in graph.output}
    while value not in outputs:
        consumers = [n for n in graph.node if value in n.input]
        if len(consumers) != 1 or consumers[0].op_type not in _RELABELS:
            break
        value = consumers[0].output[0]
    return value


def vjp_function(model: onnx.ModelProto, vjp: CustomVjp) -> onnx.FunctionProto:
    """The local function holding ``vjp``'s backward."""
    return next(f for f in model.functions if f.domain == CUSTOM_VJP_DOMAIN and f.name == vjp.function)


def _live_values(graph: onnx.GraphProto, exclude: set[int]) -> set[str]:
    """Values the graph's outputs need, the nodes in ``exclude`` (by id: the markers) aside."""
    outputs = {o.name for o in graph.output}
    nodes = live_nodes([n for n in graph.node if id(n) not in exclude], outputs)
    return outputs | {v for n in nodes for v in (*n.input, *n.output) if v}


def _ancestors(
    graph: onnx.GraphProto, values: Sequence[str], stop: set[str], outside: set[str]
) -> list[onnx.NodeProto]:
    """The nodes computing ``values`` from ``stop`` and values in ``outside``, in graph order."""
    producers = {out: node for node in graph.node for out in node.output if out}
    chosen: set[int] = set()
    stack = list(values)
    seen: set[str] = set()
    while stack:
        value = stack.pop()
        if value in seen or value in stop or value in outside:
            continue
        seen.add(value)
        node = producers.get(value)
        if node is None:
            continue
        chosen.add(id(node))
        stack.extend(v for v in node.input if v)
    return [n for n in graph.node if id(n) in chosen]


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy
