"""Mixed precision on ONNX Runtime's CPU kernels, by emulation.

A loss traced under ``torch.autocast`` computes its matrix products (and what follows them) in
bfloat16 or float16. ONNX Runtime's CPU provider has no kernel for most ops in those types
(``Gemm``, ``MatMul``, ``Relu``, ... in bfloat16), so :func:`emulate_low_precision` rewrites such
a graph to compute in float32 on values rounded where the framework rounds: every value of a
low-precision type becomes a float32 value holding the same number (each node's float32 result
cast to the low type and back). The rounding is ONNX's ``Cast`` (round to nearest, ties to even,
as torch rounds), and a float32 product of two bfloat16 or float16 numbers is exact, so a
``Gemm`` computed this way differs from torch's CPU kernels (float32 accumulation, one rounding
of the result) only by the order of the float32 sums: on 64x256x128 and 32x1024x512 products,
0.01-0.02% of the results were one bfloat16 unit apart, none more. Gradients flow through the
rounding casts, so they are rounded where torch rounds them too (the gradient of a cast is the
cast back)."""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from lossgraph.errors import ExportError
from lossgraph.graph import inferred_shapes
from lossgraph.runtime.rewrite import NodeWriter

#: element types below float32 that a framework's mixed precision computes in, by ONNX type
LOW_PRECISION = {TensorProto.BFLOAT16: "bfloat16", TensorProto.FLOAT16: "float16"}
#: attributes naming an output element type (a low one becomes float32)
_DTYPE_ATTRS = {"dtype", "output_datatype"}
#: node metadata an exporter sets on a cast to a low type that the framework's kernels do not
#: round: a Python scalar in ``bf16_tensor * 0.1``, which torch's exporter writes as a bfloat16
#: ``scalar_tensor`` while torch's CPU kernels multiply by the float32 scalar
WIDE_MARK = "lossgraph.wide"


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> element type, by ONNX shape inference."""
    inferred = inferred_shapes(model)
    return {i.name: i.type.tensor_type.elem_type for i in (*inferred.graph.value_info, *inferred.graph.output)}


def low_precision_types(model: onnx.ModelProto, typed: dict[str, int] | None = None) -> dict[str, int]:
    """The low-precision element types the graph computes in: type name -> how many values of
    that type its nodes produce (by ONNX shape inference, or ``typed``; empty: a float32 graph)."""
    typed = _elem_types(model) if typed is None else typed
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for out in node.output:
            low = LOW_PRECISION.get(typed.get(out, 0))
            if low is None and node.op_type == "Cast":
                low = LOW_PRECISION.get(_attr(node, "to"))
            if low is not None:
                counts[low] = counts.get(low, 0) + 1
    for tensor in model.graph.initializer:
        if tensor.data_type in LOW_PRECISION:
            name = LOW_PRECISION[tensor.data_type]
            counts[name] = counts.get(name, 0) + 1
    return counts


def emulate_low_precision(model: onnx.ModelProto, where: str) -> dict[str, int]:
    """Rewrite ``model`` in place so that it computes in float32 what it computed in bfloat16 or
    float16, rounding each such value as the low type would (see the module's docstring).
    Returns the rounding points by type name (empty: nothing was low). Raises ExportError, naming
    ``where``, for what cannot be emulated faithfully: a low-precision graph input, or low
    precision inside a subgraph (If, Loop, Scan). A cast marked :data:`WIDE_MARK` is not rounded."""
    graph = model.graph
    typed = _elem_types(model)  # one shape inference: it copies the whole model, weights too
    if not low_precision_types(model, typed):
        return {}
    for value in graph.input:
        if value.type.tensor_type.elem_type in LOW_PRECISION:
            raise ExportError(f"{where}: graph input {value.name!r} is {_name(value.type.tensor_type.elem_type)}; "
                              f"lossgraph feeds float32 inputs.")
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                if any(low_precision_types(_as_model(sub, model)) for sub in [attr.g, *attr.graphs] if sub.node):
                    raise ExportError(
                        f"{where}: node {node.name or node.op_type!r} computes in low precision inside its "
                        f"{node.op_type} body; lossgraph emulates mixed precision in the main graph only.")
    writer = NodeWriter(graph)
    rounded: dict[str, int] = {}
    front: list[onnx.NodeProto] = []
    for tensor in graph.initializer:  # low-precision constants: read as float32 (exact)
        if tensor.data_type in LOW_PRECISION:
            original = tensor.name
            tensor.name = writer.name(f"{original}/low")
            front.append(helper.make_node("Cast", [tensor.name], [original], name=writer.name(f"{original}/float"),
                                          to=TensorProto.FLOAT))
    nodes = front
    for node in graph.node:
        low_outputs = []
        for index, out in enumerate(node.output):
            elem = _attr(node, "to") if node.op_type == "Cast" else typed.get(out, 0)
            if elem in LOW_PRECISION:
                low_outputs.append((index, out, elem))
        _float_attributes(node)
        nodes.append(node)
        for index, out, elem in low_outputs:
            if node.op_type == "Cast" and any(p.key == WIDE_MARK for p in node.metadata_props):
                node.attribute.remove(next(a for a in node.attribute if a.name == "to"))
                node.attribute.append(helper.make_attribute("to", TensorProto.FLOAT))
                continue  # not rounded: the framework computes with the float32 value
            if node.op_type == "Cast":  # Cast(to=low) rounds; its float32 copy follows
                node.attribute.remove(next(a for a in node.attribute if a.name == "to"))
                node.attribute.append(helper.make_attribute("to", elem))
                low = writer.name(f"{out}/low")
                node.output[index] = low
                nodes.append(helper.make_node("Cast", [low], [out], name=writer.name(f"{out}/float"),
                                              to=TensorProto.FLOAT))
            else:  # computed in float32 from float32 copies, then rounded
                wide = writer.name(f"{out}/wide")
                node.output[index] = wide
                low = writer.name(f"{out}/low")
                nodes.append(helper.make_node("Cast", [wide], [low], name=writer.name(f"{out}/round"), to=elem))
                nodes.append(helper.make_node("Cast", [low], [out], name=writer.name(f"{out}/float"),
                                              to=TensorProto.FLOAT))
            rounded[LOW_PRECISION[elem]] = rounded.get(LOW_PRECISION[elem], 0) + 1
    del graph.node[:]
    graph.node.extend(nodes)
    for info in (*graph.value_info, *graph.output):
        if info.type.tensor_type.elem_type in LOW_PRECISION:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    return rounded


def _float_attributes(node: onnx.NodeProto) -> None:
    """A node's low-precision constant attributes (``Constant`` and ``ConstantOfShape`` values)
    and output-type attributes (``RandomNormal`` dtype, ...) made float32; its output is rounded
    back to the low type after it, so the values stay the same."""
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR and attr.t.data_type in LOW_PRECISION:
            value = numpy_helper.to_array(attr.t).astype("float32")
            attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
        elif attr.type == AttributeProto.INT and attr.name in _DTYPE_ATTRS and attr.i in LOW_PRECISION:
            attr.i = TensorProto.FLOAT


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _name(elem: int) -> str:
    return LOW_PRECISION.get(elem, TensorProto.DataType.Name(elem).lower())


def _as_model(graph: onnx.GraphProto, like: onnx.ModelProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=list(like.opset_import))
    model.ir_version = like.ir_version
    return model
