"""Tensor sequences as plain tensors: ``SplitToSequence`` read only by ``SequenceAt`` at constant
positions becomes one ``Split`` (torch exports ``torch.chunk`` and ``torch.split`` that way).

The autodiff differentiates tensors, not sequences; a Split has a gradient rule. Each
SequenceAt node stays where it was, with its name and metadata (scope, source line), as the
Identity (or, for ``keepdims=0``, the Squeeze) of the Split output it read.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from lossgraph.graph import inferred_shapes
from lossgraph.runtime.types import constant_values


def sequences_as_splits(proto: onnx.ModelProto) -> int:
    """Rewrite every SplitToSequence whose sequence only SequenceAt nodes read at constant
    positions, in place; returns how many were rewritten. Others are left as they are (the
    autodiff then names the op it cannot differentiate)."""
    graph = proto.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    splits = [n for n in graph.node if n.op_type == "SplitToSequence" and n.domain in ("", "ai.onnx")]
    if not splits:
        return 0
    outputs = {o.name for o in graph.output}
    consts = constant_values(proto)
    shapes = _static_shapes(proto)
    rewritten = 0
    for node in splits:
        sequence = node.output[0]
        readers = consumers.get(sequence, [])
        positions = [_position(r, consts) for r in readers]
        if sequence in outputs or not readers or any(p is None for p in positions):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        axis = attrs.get("axis", 0) % len(shape)
        split = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        sizes = _sizes(shape[axis], split)
        if sizes is None:
            continue
        keepdims = attrs.get("keepdims", 1) or split is not None  # keepdims applies without split
        parts = [f"{sequence}/part{i}" for i in range(len(sizes))]
        sizes_name = f"{sequence}/sizes"
        graph.initializer.append(numpy_helper.from_array(_int64(sizes), sizes_name))
        replacement = helper.make_node(
            "Split", [node.input[0], sizes_name], parts, name=node.name or f"{sequence}/split", axis=axis
        )
        replacement.metadata_props.extend(node.metadata_props)
        node.CopyFrom(replacement)
        for reader, position in zip(readers, positions):
            part = parts[position % len(parts)]
            del reader.attribute[:]
            if keepdims:
                reader.op_type = "Identity"
                reader.input[:] = [part]
            else:
                axes_name = f"{sequence}/axes"
                if not any(t.name == axes_name for t in graph.initializer):
                    graph.initializer.append(numpy_helper.from_array(_int64([axis]), axes_name))
                reader.op_type = "Squeeze"
                reader.input[:] = [part, axes_name]
        rewritten += 1
    return rewritten


def _position(node: onnx.NodeProto, consts) -> int | None:
    if node.op_type != "SequenceAt" or len(node.input) < 2:
        return None
    value = consts.get(node.input[1])
    return None if value is None or value.size != 1 else int(value.reshape(()))


def _sizes(dim: int | None, split) -> list[int] | None:
    if not isinstance(dim, int) or dim <= 0:
        return None
    if split is None:
        return [1] * dim
    if split.ndim == 0:
        chunk = int(split)
        if chunk <= 0:
            return None
        return [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
    sizes = [int(s) for s in split.reshape(-1)]
    return sizes if sum(sizes) == dim else None


def _static_shapes(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = inferred_shapes(proto)
    out: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            out[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    for init in graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _int64(values):
    import numpy as np

    return np.asarray(values, dtype=np.int64)
