"""Static shapes and element types of every value in a graph.

Gradient rules need static shapes (to un-broadcast, to reshape back). ONNX shape inference with
data propagation gives them for the graphs lossgraph exports, constant folding types most of the
rest; values still open are measured by running the graph once on ONNX Runtime
(:func:`lossgraph.runtime.session.infer_types`, with the caller's inputs).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lossgraph.graph import SHAPE_VALUE_LIMIT, inferred_shapes, without_large_weights

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class ValueType:
    """Element type (``TensorProto`` enum) and static shape of one value."""

    elem_type: int
    shape: tuple[int, ...]

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


def _from_value_info(info: onnx.ValueInfoProto) -> ValueType | None:
    if not info.type.HasField("tensor_type"):
        return None
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(dim.dim_value)
    return ValueType(tensor.elem_type, tuple(dims))


def static_types(model: onnx.ModelProto) -> dict[str, ValueType]:
    """Element type and static shape of the values of the main graph that ONNX shape inference
    and constant folding give; values they leave open are left out (see
    :func:`lossgraph.runtime.session.infer_types`, which measures them)."""
    types: dict[str, ValueType] = {}
    for tensor in model.graph.initializer:
        types[tensor.name] = ValueType(tensor.data_type, tuple(tensor.dims))
    for name, value_type in _inferred(model).items():
        types.setdefault(name, value_type)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                types[node.output[0]] = ValueType(attr.t.data_type, tuple(attr.t.dims))
    missing = open_values(model, types)
    if missing:
        _type_from_constants(model, types, missing)
    return types


def open_values(model: onnx.ModelProto, types: Mapping[str, ValueType]) -> list[str]:
    """The outputs of ``model``'s nodes that ``types`` leaves untyped."""
    return [o for n in model.graph.node for o in n.output if o and o not in types]


def _type_from_constants(
    model: onnx.ModelProto, types: dict[str, ValueType], missing: list[str]
) -> list[str]:
    """Type the values inference left open from what :func:`constant_values` folds, then infer
    again with those values as initializers (an Expand or Reshape to a computed shape gets its
    type once the shape is a constant); return what is still open. ONNX's data propagation
    stops at Expand: torch's exporter writes a bias-free Conv's zero bias as
    ``Expand(0, Expand(Shape(w)[0:1], [1]))``, which left 36 values of DiscoGAN open (72 in
    float64) and sent every gradient build to run the whole graph to measure them."""
    folded = constant_values(model, types)
    for name in missing:
        if name in folded:
            value = folded[name]
            types[name] = ValueType(onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
    missing = [name for name in missing if name not in types]
    if not missing:
        return []
    values = {
        o for n in model.graph.node
        if n.op_type != "Constant" and all(o in folded for o in n.output if o)
        for o in n.output if o
    }
    if not values:
        return missing
    second = without_large_weights(model)
    kept = [n for n in second.graph.node if not (set(n.output) & values)]
    del second.graph.node[:]
    second.graph.node.extend(kept)
    second.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(folded[name]), name) for name in values
    )
    inferred = _inferred(second)
    types.update({name: inferred[name] for name in missing if name in inferred})
    return [name for name in missing if name not in types]


def _inferred(model: onnx.ModelProto) -> dict[str, ValueType]:
    """The static types ONNX shape inference (with data propagation) gives the values of
    ``model``; where it fails on an unusual graph, those the model declares (the rest is
    folded or measured)."""
    graph = inferred_shapes(model, data_prop=True).graph
    types: dict[str, ValueType] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        value_type = _from_value_info(info)
        if value_type is not None:
            types.setdefault(info.name, value_type)
    return types


#: Constant folding stops at values this large: it exists for shapes, axes and indices.
FOLD_LIMIT = SHAPE_VALUE_LIMIT
_UNFOLDABLE = ("RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
               "Bernoulli", "Multinomial", "Dropout")


def constant_values(
    model: onnx.ModelProto, types: Mapping[str, ValueType] | None = None
) -> dict[str, np.ndarray]:
    """Values known before running: initializers, Constant nodes, and small computations on
    them (Shape of a statically shaped value, Gather/Concat/Slice of shapes, ...), so that axes,
    shapes and indices computed by the exporters are known to the gradient rules."""
    out = _literal_constants(model)
    for node in model.graph.node:
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("Shape", "Size") and types is not None and node.input[0] in types:
            shape = np.array(types[node.input[0]].shape, dtype=np.int64)
            if node.op_type == "Size":
                out[node.output[0]] = np.array(shape.prod(), dtype=np.int64)
            else:
                start = _int_attr(node, "start", 0)
                end = _int_attr(node, "end", None)
                out[node.output[0]] = shape[start:end]
            continue
        if node.op_type == "CastLike" and node.input[0] in out and types and node.input[1] in types:
            like = types[node.input[1]].numpy_dtype  # only the dtype of the second input matters
            out[node.output[0]] = np.asarray(out[node.input[0]]).astype(like)
            continue
        if node.op_type in _UNFOLDABLE or not node.input:
            continue
        inputs = [out.get(name) if name else None for name in node.input]
        if any(name and value is None for name, value in zip(node.input, inputs)):
            continue
        if sum(v.size for v in inputs if v is not None) > FOLD_LIMIT:
            continue
        if node.op_type == "Trilu" and len(inputs) > 1 and inputs[1] is not None:
            inputs[1] = inputs[1].reshape(())  # paddle2onnx's k is [1]: ORT takes it, onnx.reference not
        values = _evaluate(model, node, inputs)
        if values is not None:
            for name, value in zip(node.output, values):
                if not name or value is None or isinstance(value, (list, tuple)):
                    continue  # a sequence (SplitToSequence's output) is no tensor
                if np.asarray(value).size <= FOLD_LIMIT:
                    out[name] = np.asarray(value)
    return out


def _int_attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


def _evaluate(model: onnx.ModelProto, node: onnx.NodeProto, inputs) -> list | None:
    names = tuple(f"in{i}" if name else "" for i, name in enumerate(node.input))
    signature = (
        node.op_type,
        node.domain,
        tuple(attr.SerializeToString() for attr in node.attribute),
        tuple(onnx.helper.np_dtype_to_tensor_dtype(v.dtype) if n else 0 for n, v in zip(names, inputs)),
        len(node.output),
        tuple((o.domain, o.version) for o in model.opset_import),
    )
    try:
        return _evaluator(signature).run(None, {n: v for n, v in zip(names, inputs) if n})
    except Exception:  # not foldable here: the rule will say what it needs
        return None


@functools.lru_cache(maxsize=1024)
def _evaluator(signature):
    """A reference evaluator of one node, by op, attributes, input types and opsets: building
    one takes milliseconds, running it microseconds, and an exporter's graph folds the same
    few computations (Cast, Expand, Reshape of shapes) hundreds of times."""
    from onnx.reference import ReferenceEvaluator

    op_type, domain, attributes, dtypes, n_outputs, opsets = signature
    names = [f"in{i}" if dtype else "" for i, dtype in enumerate(dtypes)]
    single = onnx.helper.make_node(op_type, names, [f"out{i}" for i in range(n_outputs)], domain=domain)
    for serialized in attributes:
        single.attribute.add().ParseFromString(serialized)
    graph = onnx.helper.make_graph(
        [single],
        "fold",
        [onnx.helper.make_tensor_value_info(n, dtype, None) for n, dtype in zip(names, dtypes) if n],
        [onnx.helper.make_tensor_value_info(f"out{i}", 0, None) for i in range(n_outputs)],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets]
    )
    return ReferenceEvaluator(model)


def _literal_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                out[node.output[0]] = np.array(attr.f, np.float32)
            elif attr.name == "value_floats":
                out[node.output[0]] = np.array(list(attr.floats), np.float32)
            elif attr.name == "value_int":
                out[node.output[0]] = np.array(attr.i, np.int64)
            elif attr.name == "value_ints":
                out[node.output[0]] = np.array(list(attr.ints), np.int64)
    return out
