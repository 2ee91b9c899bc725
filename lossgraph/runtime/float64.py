"""Float64 copies of float32 ONNX graphs, for the rounding-noise floor.

``to_float64(model)`` retypes every float32 value, initializer, constant and type-naming attribute
to float64. ONNX Runtime's CPU provider has no float64 kernel for some ops (Conv, Erf, Softplus,
...); each such node is replaced by an exact decomposition into ops it does run in float64: the
same mathematical function, evaluated to float64 rounding (erf by W. J. Cody's rational
approximations, expm1 and log1p by Kahan's and Goldberg's compensated formulas). Replacement
nodes are named ``<node>/f64/<k>``, carry the node's metadata_props and write the node's own
outputs, so the rest of the graph is untouched and reports can still name the original node.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, MutableSequence, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from lossgraph.errors import InternalError, UnsupportedOpError
from lossgraph.graph import copy_model, derived_node, inferred_shapes

_F32, _F64 = TensorProto.FLOAT, TensorProto.DOUBLE
_DEFAULT_DOMAINS = ("", "ai.onnx")

_Dims = list[int | None]

# attributes that name an output element type, per op; ops listed in _FLOAT_BY_DEFAULT produce
# float32 when the attribute is absent
_DTYPE_ATTRS = {
    "Cast": "to",
    "EyeLike": "dtype",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "Bernoulli": "dtype",
    "SequenceEmpty": "dtype",
    "BlackmanWindow": "output_datatype",
    "HannWindow": "output_datatype",
    "HammingWindow": "output_datatype",
    "MelWeightMatrix": "output_datatype",
}
#: element types that become float64: float32, and the low types of emulated mixed precision
#: (``lossgraph.runtime.precision``: a cast to bfloat16 or float16 is a rounding step, which a
#: float64 run leaves out, so a difference that mixed precision makes shows as rounding)
_TO_FLOAT64 = (_F32, TensorProto.BFLOAT16, TensorProto.FLOAT16)
_FLOAT_BY_DEFAULT = {
    "RandomNormal", "RandomUniform", "SequenceEmpty", "BlackmanWindow", "HannWindow",
    "HammingWindow", "MelWeightMatrix",
}


#: ops ``to_float64(defer=True)`` retypes but leaves whole, for :func:`lower_float64` to decompose
#: when a session is built: a gradient built over the op itself (its own rule, in float64)
#: recomputes the kernel windows it needs, where one built over the decomposition keeps every
#: im2col window of the forward pass alive for the backward (DiscoGAN, 5 steps: 7.4 GB against
#: 3 GB)
DEFERRED = frozenset({"Conv", "ConvTranspose"})


def to_float64(model: onnx.ModelProto, defer: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` computing the same function in float64 on ONNX Runtime's CPU provider.

    Every float32 tensor type, initializer, constant (``Constant`` values, ``value_float(s)``,
    ``ConstantOfShape``) and dtype attribute (``Cast`` to, ``RandomNormal`` dtype, ...) becomes
    float64, in subgraphs and local functions too; other element types are left alone. Nodes of
    ops that ORT cannot run (or runs inaccurately) in float64 -- Conv, ConvTranspose,
    AveragePool, Global{Average,Max}Pool, InstanceNormalization, LayerNormalization with
    statistics outputs, Erf, Gelu, Softplus, Mish, Sigmoid, Elu, Celu, Selu, LeakyRelu, PRelu,
    ThresholdedRelu, HardSigmoid, HardSwish, Softsign, Shrink, Resize, Tan, Sinh, Cosh, Asinh, Acosh, Atanh, Atan,
    Asin, Acos, Mean, NonZero -- are replaced by nodes
    named ``<node name, or its first output>/f64/<k>`` that compute the same outputs. The
    decompositions of convolutions and pooling need static spatial shapes, taken from ONNX
    shape inference with data propagation; ``UnsupportedOpError`` names the node where one is
    unknown. Model metadata, opset imports and value names are kept.

    ``defer``: the ops in :data:`DEFERRED` are retyped, not decomposed (ONNX Runtime cannot run
    the result until :func:`lower_float64` decomposes them; ``OrtRunner`` does).
    """
    out = copy_model(model)
    converter = _converter(model, out, _known_types(model), DEFERRED if defer else frozenset())
    converter.graph(out.graph)
    for function in out.functions:
        converter.function(function)
    return out


def has_deferred(model: onnx.ModelProto) -> bool:
    """Whether ``model`` has float64 nodes ``to_float64(defer=True)`` left whole (a cheap test:
    an op of :data:`DEFERRED` in a graph with a float64 input or initializer)."""
    graph = model.graph
    return any(n.op_type in DEFERRED and n.domain in _DEFAULT_DOMAINS for n in graph.node) and (
        any(i.type.tensor_type.elem_type == _F64 for i in graph.input)
        or any(t.data_type == _F64 for t in graph.initializer)
    )


def lower_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its float64 nodes of :data:`DEFERRED` decomposed as :func:`to_float64`
    does (the rest untouched: no value is retyped); ``model`` itself when it has none."""
    if not has_deferred(model):
        return model
    types = _known_types(model)
    deferred = [
        n for n in model.graph.node if n.op_type in DEFERRED and n.domain in _DEFAULT_DOMAINS
        and n.input and types.get(n.input[0], (0, None))[0] == _F64
    ]
    if not deferred:
        return model
    out = copy_model(model)
    converter = _converter(model, out, types)
    chosen = {id(n) for n in deferred}
    rewritten: list[onnx.NodeProto] = []
    for original, node in zip(model.graph.node, out.graph.node, strict=True):
        rewritten.extend(converter.decompose(node) if id(original) in chosen else [node])
    del out.graph.node[:]
    out.graph.node.extend(rewritten)
    return out


def _converter(
    model: onnx.ModelProto, out: onnx.ModelProto, types: dict[str, tuple[int, _Dims | None]],
    deferred: frozenset[str] = frozenset(),
) -> _Converter:
    """A converter of ``out`` (a copy of ``model``) that knows every value name it holds."""
    opset = next((o.version for o in out.opset_import if o.domain in _DEFAULT_DOMAINS), 0)
    names: set[str] = set()
    _collect_names(out.graph, names)
    for function in out.functions:
        _collect_names(function, names)
    return _Converter(types, opset, names, _LazyConstants(model), deferred)


#: Inputs an op takes only as float32 whatever its data type: op -> input position.
_FLOAT32_ONLY = {"Resize": 2, "Upsample": 1}


# --- value types --------------------------------------------------------------------------


def _known_types(model: onnx.ModelProto) -> dict[str, tuple[int, _Dims | None]]:
    """Element type and dims (``None`` = unknown) of every value shape inference can type."""
    # inference is best effort: a rule that needs a missing shape says so
    inferred = inferred_shapes(model, data_prop=True)
    types: dict[str, tuple[int, _Dims | None]] = {}
    _graph_types(inferred.graph, types)
    return types


def _graph_types(graph: onnx.GraphProto, types: dict[str, tuple[int, _Dims | None]]) -> None:
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.HasField("tensor_type"):
            tensor = info.type.tensor_type
            dims = None
            if tensor.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            types[info.name] = (tensor.elem_type, dims)
    for tensor in graph.initializer:
        types[tensor.name] = (tensor.data_type, list(tensor.dims))
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                _graph_types(sub, types)


def _collect_names(container: onnx.GraphProto | onnx.FunctionProto, names: set[str]) -> None:
    if isinstance(container, onnx.GraphProto):
        names.update(i.name for i in container.input)
        names.update(t.name for t in container.initializer)
    else:
        names.update(container.input)
    for node in container.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                _collect_names(sub, names)


def _retype(tp: onnx.TypeProto) -> None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type" and tp.tensor_type.elem_type == _F32:
        tp.tensor_type.elem_type = _F64
    elif kind == "sparse_tensor_type" and tp.sparse_tensor_type.elem_type == _F32:
        tp.sparse_tensor_type.elem_type = _F64
    elif kind == "sequence_type":
        _retype(tp.sequence_type.elem_type)
    elif kind == "optional_type":
        _retype(tp.optional_type.elem_type)
    elif kind == "map_type":
        _retype(tp.map_type.value_type)


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    """Turn a float32 TensorProto into float64 in place (name, dims and metadata kept)."""
    if tensor.data_type != _F32:
        return
    if tensor.data_location == TensorProto.EXTERNAL:
        raise UnsupportedOpError(
            f"Tensor {tensor.name!r} keeps its data in an external file; load the model with "
            f"its external data (onnx.load(..., load_external_data=True)) before converting it "
            f"to float64."
        )
    values = numpy_helper.to_array(tensor).astype("<f8")
    tensor.ClearField("float_data")
    tensor.ClearField("raw_data")
    tensor.data_type = _F64
    tensor.raw_data = values.tobytes()


# --- the graph walk -----------------------------------------------------------------------


class _LazyConstants:
    """The model's constant values (initializers, Constant nodes and what folds from them),
    computed on first use: only a few decompositions need them (Resize's scales)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.values: dict[str, np.ndarray] | None = None

    def get(self, name: str | None) -> np.ndarray | None:
        if not name:
            return None
        if self.values is None:
            from lossgraph.runtime.types import constant_values, static_types

            # with the static shapes, Shape folds too (paddle2onnx computes Resize's sizes)
            self.values = constant_values(self.model, static_types(self.model))
        return self.values.get(name)


class _Converter:
    """Retypes graphs in place and swaps nodes ORT cannot run in float64 for decompositions."""

    def __init__(
        self, types: dict[str, tuple[int, _Dims | None]], opset: int, names: set[str],
        constants: _LazyConstants, deferred: frozenset[str] = frozenset(),
    ):
        self.types = types
        self.opset = opset
        self.names = names
        self.constants = constants
        self.deferred = deferred

    def graph(self, graph: onnx.GraphProto) -> None:
        for info in (*graph.input, *graph.output, *graph.value_info):
            _retype(info.type)
        for tensor in graph.initializer:
            _widen_tensor(tensor)
        for sparse in graph.sparse_initializer:
            _widen_tensor(sparse.values)
        self._nodes(graph.node)

    def function(self, function: onnx.FunctionProto) -> None:
        for info in function.value_info:
            _retype(info.type)
        self._nodes(function.node)

    def _nodes(self, nodes: MutableSequence[onnx.NodeProto]) -> None:
        rewritten: list[onnx.NodeProto] = []
        for node in nodes:
            self._widen_attributes(node)
            rule = _DECOMPOSITIONS.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
            if rule is None or node.op_type in self.deferred or not self._applies(node):
                rewritten.extend(self._float32_inputs(node))
                rewritten.append(node)
                continue
            rewritten.extend(self.decompose(node))
        del nodes[:]
        nodes.extend(rewritten)

    def decompose(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes replacing ``node`` (an op with a decomposition), writing its outputs."""
        rewrite = _Rewrite(node, self.types, self.opset, self.names, self.constants)
        results = _DECOMPOSITIONS[node.op_type](rewrite)
        return rewrite.finish([results] if isinstance(results, str) else results)

    def _float32_inputs(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Casts back to float32 for the inputs an op takes only as float32 (Resize's scales),
        which the widening made float64; exact, as they were float32 values."""
        position = _FLOAT32_ONLY.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
        if position is None or len(node.input) <= position or not node.input[position]:
            return []
        name = node.input[position] + "/f32"
        while name in self.names:
            name += "_"
        self.names.add(name)
        cast = onnx.helper.make_node("Cast", [node.input[position]], [name], to=_F32,
                                     name=f"{node.name or node.output[0]}/f32")
        cast.metadata_props.extend(node.metadata_props)
        node.input[position] = name
        return [cast]

    def _applies(self, node: onnx.NodeProto) -> bool:
        if node.op_type == "LayerNormalization":
            # ORT runs it in float64, but its Mean/InvStdDev outputs stay float32 (stash_type)
            return len([o for o in node.output if o]) > 1
        known = [self.types[i][0] for i in node.input if i in self.types]
        return not known or known[0] in (_F32, _F64)

    def _widen_attributes(self, node: onnx.NodeProto) -> None:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                _widen_tensor(attr.sparse_tensor.values)
            elif attr.type == AttributeProto.GRAPH:
                self.graph(attr.g)
            elif attr.type == AttributeProto.TYPE_PROTO:
                _retype(attr.tp)
            for tensor in attr.tensors:
                _widen_tensor(tensor)
            for sparse in attr.sparse_tensors:
                _widen_tensor(sparse.values)
            for sub in attr.graphs:
                self.graph(sub)
            for tp in attr.type_protos:
                _retype(tp)
        if node.domain not in _DEFAULT_DOMAINS:
            return
        dtype_attr = _DTYPE_ATTRS.get(node.op_type)
        if dtype_attr is not None:
            found = [a for a in node.attribute if a.name == dtype_attr]
            if found and found[0].i in _TO_FLOAT64:
                found[0].i = _F64
            elif not found and node.op_type in _FLOAT_BY_DEFAULT:
                node.attribute.append(onnx.helper.make_attribute(dtype_attr, _F64))
        if node.op_type == "Constant":
            for attr in list(node.attribute):
                if attr.name in ("value_float", "value_floats"):
                    value = attr.f if attr.name == "value_float" else list(attr.floats)
                    node.attribute.remove(attr)
                    tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float64))
                    node.attribute.append(onnx.helper.make_attribute("value", tensor))
        if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            zero = numpy_helper.from_array(np.zeros(1, dtype=np.float64))
            node.attribute.append(onnx.helper.make_attribute("value", zero))


class _Rewrite:
    """Builds one node's replacement: nodes named ``<node>/f64/<k>`` with the node's metadata."""

    def __init__(
        self,
        node: onnx.NodeProto,
        types: dict[str, tuple[int, _Dims | None]],
        opset: int,
        names: set[str],
        constants: _LazyConstants | None = None,
    ) -> None:
        if opset < 13:
            raise UnsupportedOpError(
                f"Cannot convert node {node.name!r} ({node.op_type}) to float64: its "
                f"decomposition needs default-domain opset 13 or newer, the model imports {opset}."
            )
        self.node = node
        self.base = node.name or node.output[0]
        self.types = types
        self.opset = opset
        self.names = names
        self.nodes: list[onnx.NodeProto] = []
        self._consts: dict[tuple, str] = {}
        self.constants = constants

    def input(self, index: int) -> str | None:
        """The node's input ``index``, or None where it is absent or empty."""
        inputs = self.node.input
        return inputs[index] if index < len(inputs) and inputs[index] else None

    def attr(self, name: str, default=None):
        """The attribute's value; a float default is rounded to float32, as ONNX stores it."""
        if isinstance(default, float):
            default = float(np.float32(default))
        for attr in self.node.attribute:
            if attr.name == name:
                value = onnx.helper.get_attribute_value(attr)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def shape(self, value: str, axes: Iterable[int] | None = None) -> _Dims:
        """The dims of ``value``; those on ``axes`` (all by default) must be static."""
        dims = self.types.get(value, (0, None))[1]
        if dims is not None and axes is None:
            axes = range(len(dims))
        missing = dims is None or any(a >= len(dims) or dims[a] is None for a in axes)
        if missing:
            found = "an unknown rank" if dims is None else f"shape {dims}"
            raise UnsupportedOpError(
                f"Cannot convert node {self.node.name!r} ({self.node.op_type}) to float64: its "
                f"decomposition needs the static shape of {value!r}, but shape inference gives "
                f"{found}."
            )
        return dims

    def rank(self, value: str) -> int:
        return len(self.shape(value, ()))

    def constant(self, index: int) -> np.ndarray | None:
        """The value of the node's input ``index`` when it is constant; None where the input
        is absent; UnsupportedOpError where it is computed."""
        name = self.input(index)
        if name is None:
            return None
        value = self.constants.get(name) if self.constants is not None else None
        if value is None:
            raise UnsupportedOpError(
                f"Cannot convert node {self.node.name!r} ({self.node.op_type}) to float64: its "
                f"input {name!r} is computed, and its decomposition needs it constant."
            )
        return value

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """Append one node and return its (fresh) output name."""
        node = derived_node(op_type, inputs, f"{self.base}/f64/{len(self.nodes)}", self.names,
                            self.node, **attrs)
        self.nodes.append(node)
        return node.output[0]

    def const(self, value, dtype=np.float64) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.op("Constant", value=numpy_helper.from_array(array))
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.ints(shape))

    def reduce(self, op_type: str, x: str, axes: Sequence[int]) -> str:
        """``op_type`` over ``axes``, dims kept; axes as input or attribute as the opset wants."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.ints(axes), keepdims=1)
        return self.op(op_type, x, axes=list(axes), keepdims=1)

    def where(self, condition: str, then: str, otherwise: str) -> str:
        return self.op("Where", condition, then, otherwise)

    def finish(self, results: Sequence[str]) -> list[onnx.NodeProto]:
        """The replacement nodes, renamed so that ``results`` land in the node's outputs."""
        outputs = list(self.node.output)
        if len(results) != len(outputs):
            raise InternalError(
                f"The float64 decomposition of {self.node.op_type} gave {len(results)} outputs "
                f"for a node with {len(outputs)}."
            )
        produced = {o for n in self.nodes for o in n.output}
        renames = {}
        for result, target in zip(results, outputs):
            if not target:
                continue
            if result not in produced or result in renames:
                result = self.op("Identity", result)
                produced.add(result)
            renames[result] = target
        for node in self.nodes:
            node.input[:] = [renames.get(i, i) for i in node.input]
            node.output[:] = [renames.get(o, o) for o in node.output]
        return self.nodes


_Decomposition = Callable[[_Rewrite], "str | list[str]"]
_DECOMPOSITIONS: dict[str, _Decomposition] = {}


def _replaces(*op_types: str) -> Callable[[_Decomposition], _Decomposition]:
    def register(fn: _Decomposition) -> _Decomposition:
        for op_type in op_types:
            if op_type in _DECOMPOSITIONS:
                raise InternalError(f"Two float64 decompositions for op {op_type!r}.")
            _DECOMPOSITIONS[op_type] = fn
        return fn

    return register


# --- convolution and pooling --------------------------------------------------------------


def _pads(r: _Rewrite, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int], pool: bool = False) -> tuple[list[int], list[int]]:
    """Begin and end padding of a Conv or pooling node, ``auto_pad`` resolved as ORT does."""
    n = len(kernel)
    auto_pad = r.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            if pool:
                # ORT's pools size SAME padding for the undilated kernel and do not clamp it at
                # 0; a negative head moves the windows, a negative tail hides the last elements
                total = (-(-size // s) - 1) * s + k - size
                head = math.trunc((total if auto_pad == "SAME_UPPER" else total + 1) / 2)
            else:
                # the ONNX formula; ORT's float32 Conv refuses SAME with dilations > 1
                total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
                head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(head)
            end.append(total - head)
        return begin, end
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    pads = list(r.attr("pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


def _out_size(size: int, k: int, s: int, d: int, b: int, e: int, ceil: bool = False) -> int:
    span = size + b + e - (k - 1) * d - 1
    if not ceil:
        # as ORT's integer division, which truncates towards 0 (ORT's SAME pools can have span < 0)
        return (span // s if span >= 0 else -(-span // s)) + 1
    out = -(-span // s) + 1
    # as PyTorch and ONNX: the last window must start inside the input or the begin padding
    return out - 1 if (out - 1) * s >= size + b else out


def _windows(r: _Rewrite, x: str, kernel: Sequence[int], strides: Sequence[int],
             dilations: Sequence[int], out: Sequence[int], first_axis: int, start: Sequence[int],
             flip: bool = False) -> list[str]:
    """One strided Slice of ``x`` per kernel offset (row-major; reversed with ``flip``): the
    elements that offset of every window reads. ``start`` shifts the first window."""
    axes = r.ints(range(first_axis, first_axis + len(kernel)))
    steps = r.ints(strides)
    slices = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        if flip:
            offsets = tuple(k - 1 - o for o, k in zip(offsets, kernel))
        starts = [o * d + a for o, d, a in zip(offsets, dilations, start)]
        ends = [b + (o - 1) * s + 1 for b, o, s in zip(starts, out, strides)]
        slices.append(r.op("Slice", x, r.ints(starts), r.ints(ends), axes, steps))
    return slices


def _correlate(r: _Rewrite, x: str, spatial: Sequence[int], w_cols: str, out_channels: int,
               group: int, group_channels: int, kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int], begin: Sequence[int], end: Sequence[int],
               flip: bool = False) -> str:
    """Cross-correlation of ``x`` [N, C, *spatial] with ``w_cols`` [group, O/group, C/group·K]
    by im2col: the K windows' slices of the padded input, stacked per channel and multiplied by
    the weights. Negative pads crop; ``flip`` reverses the kernel (ConvTranspose)."""
    out = [_out_size(*g) for g in zip(spatial, kernel, strides, dilations, begin, end)]
    if min(out) <= 0:
        raise UnsupportedOpError(
            f"Cannot convert node {r.node.name!r} ({r.node.op_type}) to float64: its output "
            f"would have spatial shape {out}."
        )
    if any(p > 0 for p in [*begin, *end]):
        pads = [0, 0, *(max(p, 0) for p in begin), 0, 0, *(max(p, 0) for p in end)]
        x = r.op("Pad", x, r.ints(pads))
    x = r.op("Unsqueeze", x, r.ints([2]))
    shift = [max(-b, 0) for b in begin]
    cols = _windows(r, x, kernel, strides, dilations, out, 3, shift, flip)
    stacked = cols[0] if len(cols) == 1 else r.op("Concat", *cols, axis=2)
    stacked = r.reshape(stacked, [0, group, group_channels * len(cols), math.prod(out)])
    y = r.op("MatMul", w_cols, stacked)
    return r.reshape(y, [0, out_channels, *out])


def _add_bias(r: _Rewrite, y: str, bias: str | None, n_spatial: int) -> str:
    if bias is None:
        return y
    return r.op("Add", y, r.reshape(bias, [-1] + [1] * n_spatial))


@_replaces("Conv")
def _conv(r: _Rewrite) -> str:
    x, w = r.input(0), r.input(1)
    w_shape = r.shape(w)
    n = len(w_shape) - 2
    spatial = r.shape(x, range(2, 2 + n))[2:]
    kernel = list(r.attr("kernel_shape", w_shape[2:]))
    strides = list(r.attr("strides", [1] * n))
    dilations = list(r.attr("dilations", [1] * n))
    group = r.attr("group", 1)
    begin, end = _pads(r, spatial, kernel, strides, dilations)
    out_channels = w_shape[0]
    w_cols = r.reshape(w, [group, out_channels // group, -1])
    y = _correlate(r, x, spatial, w_cols, out_channels, group, w_shape[1], kernel, strides,
                   dilations, begin, end)
    return _add_bias(r, y, r.input(2), n)


def _transpose_geometry(r: _Rewrite, spatial: Sequence[int], kernel: Sequence[int],
                        strides: Sequence[int],
                        dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Head padding and output size per axis of a ConvTranspose, as ONNX (and ORT) define them."""
    n = len(kernel)
    adj = list(r.attr("output_padding", [0] * n))
    full = [(i - 1) * s + (k - 1) * d + 1 + a
            for i, s, k, d, a in zip(spatial, strides, kernel, dilations, adj)]
    auto_pad = r.attr("auto_pad", "NOTSET")
    output_shape = r.attr("output_shape")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape:
            out = list(output_shape)[-n:]
        else:
            out = [min(f, i * s) for f, i, s in zip(full, spatial, strides)]
        totals = [max(0, f - o) for f, o in zip(full, out)]
        if auto_pad == "SAME_UPPER":
            return [t // 2 for t in totals], out
        return [t - t // 2 for t in totals], out
    if auto_pad == "VALID":
        return [0] * n, full
    pads = list(r.attr("pads", [0] * (2 * n)))
    return pads[:n], [f - b - e for f, b, e in zip(full, pads[:n], pads[n:])]


def _zero_insert(r: _Rewrite, x: str, spatial: Sequence[int],
                 strides: Sequence[int]) -> tuple[str, list[int]]:
    """``x`` with ``stride - 1`` zeros after every element of each spatial axis."""
    if all(s == 1 for s in strides):
        return x, list(spatial)
    x = r.reshape(x, [0, 0, *(v for size in spatial for v in (size, 1))])
    zeros_after = [v for s in strides for v in (0, s - 1)]
    x = r.op("Pad", x, r.ints([0] * (2 + 2 * len(spatial)) + [0, 0, *zeros_after]))
    up = [size * s for size, s in zip(spatial, strides)]
    return r.reshape(x, [0, 0, *up]), up


def _conv_transpose_by_phases(r: _Rewrite, x: str, w: str, spatial: Sequence[int],
                              kernel: Sequence[int], strides: Sequence[int], group: int,
                              group_channels: int, out_group: int, heads: Sequence[int],
                              out: Sequence[int]) -> str:
    """A strided ConvTranspose without dilation as one unit-stride correlation for all output
    phases at once: the full output at s·q + p only receives kernel taps p + s·m, so phase p is
    x correlated with that reversed sub-kernel, and every phase reads the same M = ceil(k / s)
    windows of x (sub-kernels with fewer taps padded with zeros). The phases are stacked as
    output channels of one MatMul, interleaved by Reshape and Transpose, and the full output
    cropped to the pads. The zero-inserted form (:func:`_zero_insert`) cuts s^n times as many
    windows, most of them of inserted zeros."""
    n = len(kernel)
    taps = [-(-k // s) for k, s in zip(kernel, strides)]  # M per axis
    periods = [-(-(h + o) // s) for h, o, s in zip(heads, out, strides)]  # Q: phase length
    tail = [m * s - k for m, s, k in zip(taps, strides, kernel)]
    if any(tail):
        w = r.op("Pad", w, r.ints([0] * (n + 2) + [0, 0, *tail]))
    # [C, O/g, (M1, s1), ...] -> [g, s1, ..., O/g, C/g, M1, ...]: rows (phase, o), cols (c, m)
    w = r.reshape(w, [group, group_channels, out_group, *(v for m, s in zip(taps, strides) for v in (m, s))])
    perm = [0, *(4 + 2 * a for a in range(n)), 2, 1, *(3 + 2 * a for a in range(n))]
    phases = math.prod(strides)
    w_cols = r.reshape(r.op("Transpose", w, perm=perm), [group, phases * out_group, -1])
    y = _correlate(r, x, spatial, w_cols, group * phases * out_group, group, group_channels, taps,
                   [1] * n, [1] * n, [m - 1 for m in taps],
                   [q - size for q, size in zip(periods, spatial)], flip=True)
    # [N, (g, s1, ..., O/g), Q1, ...] -> [N, g, O/g, Q1, s1, Q2, s2, ...] -> [N, O, Q1·s1, ...]
    y = r.reshape(y, [0, group, *strides, out_group, *periods])
    perm = [0, 1, 2 + n, *(axis for a in range(n) for axis in (3 + n + a, 2 + a))]
    full = r.reshape(r.op("Transpose", y, perm=perm),
                     [0, group * out_group, *(q * s for q, s in zip(periods, strides))])
    ends = [h + o for h, o in zip(heads, out)]
    return r.op("Slice", full, r.ints(heads), r.ints(ends), r.ints(range(2, 2 + n)))


@_replaces("ConvTranspose")
def _conv_transpose(r: _Rewrite) -> str:
    """Strided without dilation: all output phases in one correlation
    (:func:`_conv_transpose_by_phases`). Otherwise a stride-1 correlation of the zero-inserted
    input with the flipped, group-transposed kernel: y[p] = Σ_k x_up[p + head - k·d] · w[k]."""
    x, w = r.input(0), r.input(1)
    w_shape = r.shape(w)
    n = len(w_shape) - 2
    spatial = r.shape(x, range(2, 2 + n))[2:]
    kernel = list(r.attr("kernel_shape", w_shape[2:]))
    strides = list(r.attr("strides", [1] * n))
    dilations = list(r.attr("dilations", [1] * n))
    group = r.attr("group", 1)
    heads, out = _transpose_geometry(r, spatial, kernel, strides, dilations)
    group_channels, out_group = w_shape[0] // group, w_shape[1]
    if any(s > 1 for s in strides) and all(d == 1 for d in dilations):
        y = _conv_transpose_by_phases(r, x, w, spatial, kernel, strides, group, group_channels,
                                      out_group, heads, out)
        return _add_bias(r, y, r.input(2), n)
    w_cols = r.reshape(w, [group, group_channels, out_group, -1])
    w_cols = r.reshape(r.op("Transpose", w_cols, perm=[0, 2, 1, 3]), [group, out_group, -1])
    x_up, up = _zero_insert(r, x, spatial, strides)
    begin = [(k - 1) * d - h for k, d, h in zip(kernel, dilations, heads)]
    end = [o + (k - 1) * d - u - b for o, k, d, u, b in zip(out, kernel, dilations, up, begin)]
    y = _correlate(r, x_up, up, w_cols, out_group * group, group, group_channels, kernel,
                   [1] * n, dilations, begin, end, flip=True)
    return _add_bias(r, y, r.input(2), n)


def _window_counts(spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                   dilations: Sequence[int], begin: Sequence[int], end: Sequence[int],
                   out: Sequence[int], include_pad: bool) -> np.ndarray:
    """How many elements each AveragePool window averages."""
    counts = np.ones(out, dtype=np.float64)
    for axis, (size, k, s, d, b, e, o) in enumerate(
        zip(spatial, kernel, strides, dilations, begin, end, out)
    ):
        low, high = (-b, size + e) if include_pad else (0, size)
        per = [sum(low <= i * s - b + j * d < high for j in range(k)) for i in range(o)]
        shape = [1] * len(out)
        shape[axis] = o
        counts = counts * np.asarray(per, dtype=np.float64).reshape(shape)
    return counts


@_replaces("AveragePool")
def _average_pool(r: _Rewrite) -> str:
    x = r.input(0)
    kernel = list(r.attr("kernel_shape"))
    n = len(kernel)
    spatial = r.shape(x, range(2, 2 + n))[2:]
    strides = list(r.attr("strides", [1] * n))
    dilations = list(r.attr("dilations", [1] * n))
    begin, end = _pads(r, spatial, kernel, strides, dilations, pool=True)
    ceil = bool(r.attr("ceil_mode", 0))
    out = [_out_size(*g, ceil) for g in zip(spatial, kernel, strides, dilations, begin, end)]
    if min(out) <= 0:
        raise UnsupportedOpError(
            f"Cannot convert node {r.node.name!r} (AveragePool) to float64: its output would "
            f"have spatial shape {out}."
        )
    visible = [size + min(e, 0) for size, e in zip(spatial, end)]
    if visible != list(spatial):
        x = r.op("Slice", x, r.ints([0] * n), r.ints(visible), r.ints(range(2, 2 + n)))
    # ceil_mode windows may run past the end padding; what they read there is not counted
    reach = [(o - 1) * s + (k - 1) * d + 1 - size - b
             for o, s, k, d, size, b in zip(out, strides, kernel, dilations, visible, begin)]
    pads = [0, 0, *(max(b, 0) for b in begin), 0, 0, *(max(a, 0) for a in reach)]
    if any(pads):
        x = r.op("Pad", x, r.ints(pads))
    shift = [max(-b, 0) for b in begin]
    slices = _windows(r, x, kernel, strides, dilations, out, 2, shift)
    total = slices[0] if len(slices) == 1 else r.op("Sum", *slices)
    include_pad = bool(r.attr("count_include_pad", 0))
    counts = _window_counts(visible, kernel, strides, dilations, begin,
                            [max(e, 0) for e in end], out, include_pad)
    return r.op("Div", total, r.const(counts))


@_replaces("GlobalAveragePool")
def _global_average_pool(r: _Rewrite) -> str:
    x = r.input(0)
    return r.reduce("ReduceMean", x, range(2, r.rank(x)))


@_replaces("GlobalMaxPool")
def _global_max_pool(r: _Rewrite) -> str:
    x = r.input(0)
    return r.reduce("ReduceMax", x, range(2, r.rank(x)))


# --- normalization --------------------------------------------------------------------------


def _normalize(r: _Rewrite, x: str, axes: Sequence[int], epsilon: float) -> tuple[str, str, str]:
    """(x - mean) / sqrt(var + eps) over ``axes``, the biased variance; also mean and 1/std."""
    mean = r.reduce("ReduceMean", x, axes)
    centered = r.op("Sub", x, mean)
    var = r.reduce("ReduceMean", r.op("Mul", centered, centered), axes)
    std = r.op("Sqrt", r.op("Add", var, r.const(epsilon)))
    return r.op("Div", centered, std), mean, std


@_replaces("InstanceNormalization")
def _instance_normalization(r: _Rewrite) -> str:
    x = r.input(0)
    rank = r.rank(x)
    y, _, _ = _normalize(r, x, range(2, rank), r.attr("epsilon", 1e-5))
    ones = [1] * (rank - 2)
    y = r.op("Mul", y, r.reshape(r.input(1), [-1, *ones]))
    return r.op("Add", y, r.reshape(r.input(2), [-1, *ones]))


@_replaces("LayerNormalization")
def _layer_normalization(r: _Rewrite) -> list[str]:
    x = r.input(0)
    rank = r.rank(x)
    axis = r.attr("axis", -1) % rank
    y, mean, std = _normalize(r, x, range(axis, rank), r.attr("epsilon", 1e-5))
    y = r.op("Mul", y, r.input(1))
    if r.input(2) is not None:
        y = r.op("Add", y, r.input(2))
    inv_std = r.op("Reciprocal", std)
    return [y, mean, inv_std][: len(r.node.output)]


# --- elementwise ----------------------------------------------------------------------------


def _horner(r: _Rewrite, t: str, coefficients: Sequence[float]) -> str:
    """Σ c_i t^i, highest power first, evaluated as Cody's loops do."""
    acc = t if coefficients[0] == 1.0 else r.op("Mul", r.const(coefficients[0]), t)
    for c in coefficients[1:-1]:
        acc = r.op("Mul", r.op("Add", acc, r.const(c)), t)
    return r.op("Add", acc, r.const(coefficients[-1]))


# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# coefficients as in Netlib SPECFUN CALERF, highest power first: erf(y) = y·P(y²)/Q(y²) for
# y <= 0.46875; erfc(y) = exp(-y²)·P(y)/Q(y) for y <= 4; erfc(y) = exp(-y²)/y·(1/√π - u·P(u)/Q(u)),
# u = 1/y², beyond.
_ERF_SMALL = (
    (1.85777706184603153e-1, 3.16112374387056560e0, 1.13864154151050156e2,
     3.77485237685302021e2, 3.20937758913846947e3),
    (1.0, 2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3,
     2.84423683343917062e3),
)
_ERFC_MID = (
    (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e0,
     6.61191906371416295e1, 2.98635138197400131e2, 8.81952221241769090e2,
     1.71204761263407058e3, 2.05107837782607147e3, 1.23033935479799725e3),
    (1.0, 1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2,
     1.62138957456669019e3, 3.29079923573345963e3, 4.36261909014324716e3,
     3.43936767414372164e3, 1.23033935480374942e3),
)
_ERFC_LARGE = (
    (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1,
     1.25781726111229246e-1, 1.60837851487422766e-2, 6.58749161529837803e-4),
    (1.0, 2.56852019228982242e0, 1.87295284992346047e0, 5.27905102951428412e-1,
     6.05183413124413191e-2, 2.33520497626869185e-3),
)
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1
_ERF_SMALL_LIMIT = 0.46875


def _erf_parts(r: _Rewrite, x: str) -> tuple[str, str, str]:
    """For y = |x|: (y <= 0.46875, erf(y) valid there, erfc(y) valid elsewhere), by Cody."""
    y = r.op("Abs", x)
    y2 = r.op("Mul", y, y)
    small_num, small_den = (_horner(r, y2, c) for c in _ERF_SMALL)
    small = r.op("Div", r.op("Mul", y, small_num), small_den)
    mid = r.op("Div", *(_horner(r, y, c) for c in _ERFC_MID))
    u = r.op("Reciprocal", y2)
    large_num, large_den = (_horner(r, u, c) for c in _ERFC_LARGE)
    large = r.op("Div", r.op("Mul", u, large_num), large_den)
    large = r.op("Div", r.op("Sub", r.const(_ONE_OVER_SQRT_PI), large), y)
    ratio = r.where(r.op("LessOrEqual", y, r.const(4.0)), mid, large)
    # exp(-y²) as exp(-a²)·exp(-(y-a)(y+a)) with a = y rounded down to 1/16, a² exact (Cody);
    # a is capped where exp(-a²) is 0 anyway, so y = inf gives 0 rather than inf - inf
    capped = r.op("Min", y, r.const(30.0))
    a = r.op("Div", r.op("Floor", r.op("Mul", capped, r.const(16.0))), r.const(16.0))
    rest = r.op("Mul", r.op("Sub", y, a), r.op("Add", y, a))
    decay = r.op("Mul", r.op("Exp", r.op("Neg", r.op("Mul", a, a))), r.op("Exp", r.op("Neg", rest)))
    erfc = r.op("Mul", decay, ratio)
    return r.op("LessOrEqual", y, r.const(_ERF_SMALL_LIMIT)), small, erfc


def _erf_of_abs(r: _Rewrite, is_small: str, small: str, erfc: str) -> str:
    half = r.const(0.5)
    return r.where(is_small, small, r.op("Add", r.op("Sub", half, erfc), half))


def _erf(r: _Rewrite, x: str) -> str:
    magnitude = _erf_of_abs(r, *_erf_parts(r, x))
    return r.where(r.op("Less", x, r.const(0.0)), r.op("Neg", magnitude), magnitude)


def _one_plus_erf(r: _Rewrite, x: str) -> str:
    """1 + erf(x) without cancellation: erfc(|x|) directly for x < -0.46875."""
    is_small, small, erfc = _erf_parts(r, x)
    one = r.const(1.0)
    negative = r.where(is_small, r.op("Sub", one, small), erfc)
    positive = r.op("Add", one, _erf_of_abs(r, is_small, small, erfc))
    return r.where(r.op("Less", x, r.const(0.0)), negative, positive)


def _expm1(r: _Rewrite, x: str) -> str:
    """exp(x) - 1 to a few ulp near 0 (Kahan: (u - 1)·x / log u, u = exp x)."""
    u = r.op("Exp", x)
    u_minus_1 = r.op("Sub", u, r.const(1.0))
    ratio = r.op("Div", r.op("Mul", u_minus_1, x), r.op("Log", u))
    minus_one = r.const(-1.0)
    tail = r.where(r.op("Equal", u_minus_1, minus_one), minus_one, ratio)
    return r.where(r.op("Equal", u, r.const(1.0)), x, tail)


def _log1p(r: _Rewrite, v: str) -> str:
    """log(1 + v) to a few ulp near 0 (Goldberg: log(u)·v / (u - 1), u = 1 + v)."""
    one = r.const(1.0)
    u = r.op("Add", v, one)
    ratio = r.op("Div", r.op("Mul", r.op("Log", u), v), r.op("Sub", u, one))
    return r.where(r.op("Equal", u, one), v, ratio)


def _softplus(r: _Rewrite, x: str) -> str:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, no cancellation."""
    tail = _log1p(r, r.op("Exp", r.op("Neg", r.op("Abs", x))))
    return r.op("Add", r.op("Max", x, r.const(0.0)), tail)


def _sigmoid(r: _Rewrite, x: str) -> str:
    # Reciprocal, not Div(1, .): ORT's basic optimizer mis-wires Div(1, a)·b next to an
    # eliminated no-op Cast (such as a converted Cast(to=FLOAT) on a float input)
    return r.op("Reciprocal", r.op("Add", r.const(1.0), r.op("Exp", r.op("Neg", x))))


def _negative_part(r: _Rewrite, x: str, negative: str) -> str:
    """``negative`` where x < 0, x elsewhere (NaN included)."""
    return r.where(r.op("Less", x, r.const(0.0)), negative, x)


def _hard_sigmoid(r: _Rewrite, x: str, alpha: float, beta: float) -> str:
    linear = r.op("Add", r.op("Mul", r.const(alpha), x), r.const(beta))
    return r.op("Max", r.op("Min", linear, r.const(1.0)), r.const(0.0))


@_replaces("Erf")
def _erf_node(r: _Rewrite) -> str:
    return _erf(r, r.input(0))


@_replaces("Gelu")
def _gelu(r: _Rewrite) -> str:
    x = r.input(0)
    if r.attr("approximate", "none") == "tanh":
        # 0.5·(1 + tanh z) = sigmoid(2z), which does not cancel for z << 0
        cube = r.op("Mul", r.op("Mul", x, x), x)
        inner = r.op("Add", x, r.op("Mul", r.const(0.044715), cube))
        z2 = r.op("Mul", r.const(2.0 * math.sqrt(2.0 / math.pi)), inner)
        return r.op("Mul", x, _sigmoid(r, z2))
    half_x = r.op("Mul", r.const(0.5), x)
    return r.op("Mul", half_x, _one_plus_erf(r, r.op("Mul", x, r.const(math.sqrt(0.5)))))


@_replaces("Sigmoid")
def _sigmoid_node(r: _Rewrite) -> str:
    # ORT has a float64 Sigmoid, but it loses all relative accuracy for x << 0 (it returns
    # 1e-13 for sigmoid(-30), 0 below -37); 1 / (1 + e^-x) keeps it to a few ulp
    return _sigmoid(r, r.input(0))


@_replaces("Softplus")
def _softplus_node(r: _Rewrite) -> str:
    return _softplus(r, r.input(0))


@_replaces("Mish")
def _mish(r: _Rewrite) -> str:
    x = r.input(0)
    return r.op("Mul", x, r.op("Tanh", _softplus(r, x)))


@_replaces("Elu")
def _elu(r: _Rewrite) -> str:
    x = r.input(0)
    tail = _expm1(r, r.op("Min", x, r.const(0.0)))
    return _negative_part(r, x, r.op("Mul", r.const(r.attr("alpha", 1.0)), tail))


@_replaces("Celu")
def _celu(r: _Rewrite) -> str:
    x = r.input(0)
    alpha = r.const(r.attr("alpha", 1.0))
    tail = _expm1(r, r.op("Div", r.op("Min", x, r.const(0.0)), alpha))
    return _negative_part(r, x, r.op("Mul", alpha, tail))


@_replaces("Selu")
def _selu(r: _Rewrite) -> str:
    x = r.input(0)
    alpha = r.attr("alpha", 1.67326319217681884765625)
    gamma = r.attr("gamma", 1.05070102214813232421875)
    tail = r.op("Mul", r.const(alpha), _expm1(r, r.op("Min", x, r.const(0.0))))
    inner = r.where(r.op("LessOrEqual", x, r.const(0.0)), tail, x)
    return r.op("Mul", r.const(gamma), inner)


@_replaces("LeakyRelu")
def _leaky_relu(r: _Rewrite) -> str:
    x = r.input(0)
    return _negative_part(r, x, r.op("Mul", r.const(r.attr("alpha", 0.01)), x))


@_replaces("PRelu")
def _prelu(r: _Rewrite) -> str:
    x = r.input(0)
    return _negative_part(r, x, r.op("Mul", x, r.input(1)))


@_replaces("ThresholdedRelu")
def _thresholded_relu(r: _Rewrite) -> str:
    x = r.input(0)
    above = r.op("Greater", x, r.const(r.attr("alpha", 1.0)))
    return r.where(above, x, r.const(0.0))


@_replaces("HardSigmoid")
def _hard_sigmoid_node(r: _Rewrite) -> str:
    return _hard_sigmoid(r, r.input(0), r.attr("alpha", 0.2), r.attr("beta", 0.5))


@_replaces("HardSwish")
def _hard_swish(r: _Rewrite) -> str:
    x = r.input(0)
    # x/6 + 1/2 as (x + 3)/6: exact sum near x = -3, where the former cancels
    gate = r.op("Div", r.op("Add", x, r.const(3.0)), r.const(6.0))
    clipped = r.op("Max", r.op("Min", gate, r.const(1.0)), r.const(0.0))
    return r.op("Mul", x, clipped)


@_replaces("Softsign")
def _softsign(r: _Rewrite) -> str:
    x = r.input(0)
    return r.op("Div", x, r.op("Add", r.op("Abs", x), r.const(1.0)))


@_replaces("Shrink")
def _shrink(r: _Rewrite) -> str:
    # ORT's float64 Shrink rounds through float32
    x = r.input(0)
    lambd, bias = r.attr("lambd", 0.5), r.attr("bias", 0.0)
    below = r.op("Less", x, r.const(-lambd))
    above = r.op("Greater", x, r.const(lambd))
    shrunk = r.where(below, r.op("Add", x, r.const(bias)), r.const(0.0))
    return r.where(above, r.op("Sub", x, r.const(bias)), shrunk)


@_replaces("Resize")
def _resize(r: _Rewrite) -> str:
    # ORT has no float64 Resize: the same interpolation as one MatMul per resized axis
    from lossgraph.runtime.resize import resize_matrices

    x = r.input(0)
    in_shape, out_shape = r.shape(x), r.shape(r.node.output[0])
    rank = len(in_shape)
    y = x
    matrices = resize_matrices(r.node, r.opset, in_shape, out_shape, *(r.constant(i) for i in (1, 2, 3)))
    for axis, matrix in matrices:
        perm = [a for a in range(rank) if a != axis] + [axis]
        moved = y if axis == rank - 1 else r.op("Transpose", y, perm=perm)
        moved = r.op("MatMul", moved, r.const(matrix.T))
        y = moved if axis == rank - 1 else r.op("Transpose", moved, perm=[int(a) for a in np.argsort(perm)])
    return y if y != x else r.op("Identity", x)


@_replaces("Tan")
def _tan(r: _Rewrite) -> str:
    x = r.input(0)
    return r.op("Div", r.op("Sin", x), r.op("Cos", x))


@_replaces("Sinh")
def _sinh(r: _Rewrite) -> str:
    # (e^x - e^-x) / 2 as expm1 terms of opposite signs: no cancellation near 0
    x = r.input(0)
    near = r.op("Mul", r.const(0.5), r.op("Sub", _expm1(r, x), _expm1(r, r.op("Neg", x))))
    # far from 0, e^-|x| is below rounding and expm1's ratio would be inf / inf
    far = r.op("Mul", r.op("Sign", x), r.op("Mul", r.const(0.5), r.op("Exp", r.op("Abs", x))))
    return r.where(r.op("Greater", r.op("Abs", x), r.const(20.0)), far, near)


@_replaces("Cosh")
def _cosh(r: _Rewrite) -> str:
    x = r.input(0)
    return r.op("Mul", r.const(0.5), r.op("Add", r.op("Exp", x), r.op("Exp", r.op("Neg", x))))


@_replaces("Asinh")
def _asinh(r: _Rewrite) -> str:
    # sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))): no cancellation near 0
    x = r.input(0)
    y = r.op("Abs", x)
    y2 = r.op("Mul", y, y)
    root = r.op("Add", r.const(1.0), r.op("Sqrt", r.op("Add", r.const(1.0), y2)))
    magnitude = _log1p(r, r.op("Add", y, r.op("Div", y2, root)))
    return r.where(r.op("Less", x, r.const(0.0)), r.op("Neg", magnitude), magnitude)


@_replaces("Acosh")
def _acosh(r: _Rewrite) -> str:
    # log1p(t + sqrt(2t + t^2)), t = x - 1 (exact for x near 1)
    t = r.op("Sub", r.input(0), r.const(1.0))
    inner = r.op("Mul", t, r.op("Add", t, r.const(2.0)))
    return _log1p(r, r.op("Add", t, r.op("Sqrt", inner)))


@_replaces("Atanh")
def _atanh(r: _Rewrite) -> str:
    x = r.input(0)
    ratio = r.op("Div", r.op("Mul", r.const(2.0), x), r.op("Sub", r.const(1.0), x))
    value = r.op("Mul", r.const(0.5), _log1p(r, ratio))
    # atanh(+-1) = +-inf, where log1p's ratio would be inf / inf
    edge = r.op("Mul", x, r.const(np.inf))
    return r.where(r.op("Equal", r.op("Abs", x), r.const(1.0)), edge, value)


#: atan(y) / y = sum (-1)^k y^2k / (2k + 1), highest power first: to float64 rounding for
#: |y| <= tan(pi / 16), where the reductions below leave it.
_ATAN_SERIES = tuple((-1.0) ** k / (2 * k + 1) for k in range(13, -1, -1))


def _atan(r: _Rewrite, x: str) -> str:
    """atan by reduction: |x| > 1 through pi/2 - atan(1/|x|), then two halvings
    atan(y) = 2 atan(y / (1 + sqrt(1 + y^2))), then the series."""
    y = r.op("Abs", x)
    large = r.op("Greater", y, r.const(1.0))
    y = r.where(large, r.op("Reciprocal", y), y)
    for _ in range(2):
        y = r.op("Div", y, r.op("Add", r.const(1.0), r.op("Sqrt", r.op("Add", r.const(1.0), r.op("Mul", y, y)))))
    series = r.op("Mul", y, _horner(r, r.op("Mul", y, y), _ATAN_SERIES))
    reduced = r.op("Mul", r.const(4.0), series)
    magnitude = r.where(large, r.op("Sub", r.const(math.pi / 2), reduced), reduced)
    return r.where(r.op("Less", x, r.const(0.0)), r.op("Neg", magnitude), magnitude)


@_replaces("Atan")
def _atan_node(r: _Rewrite) -> str:
    return _atan(r, r.input(0))


@_replaces("Asin")
def _asin(r: _Rewrite) -> str:
    # atan(x / sqrt((1 - x)(1 + x)))
    x = r.input(0)
    root = r.op("Sqrt", r.op("Mul", r.op("Sub", r.const(1.0), x), r.op("Add", r.const(1.0), x)))
    return _atan(r, r.op("Div", x, root))


@_replaces("Acos")
def _acos(r: _Rewrite) -> str:
    # 2 atan(sqrt((1 - x) / (1 + x))): accurate over the whole domain
    x = r.input(0)
    ratio = r.op("Div", r.op("Sub", r.const(1.0), x), r.op("Add", r.const(1.0), x))
    return r.op("Mul", r.const(2.0), _atan(r, r.op("Sqrt", ratio)))


@_replaces("Mean")
def _mean(r: _Rewrite) -> str:
    inputs = [i for i in r.node.input if i]
    total = inputs[0] if len(inputs) == 1 else r.op("Sum", *inputs)
    return r.op("Div", total, r.const(float(len(inputs))))


@_replaces("NonZero")
def _non_zero(r: _Rewrite) -> str:
    # NaN casts to true, as NonZero counts it
    return r.op("NonZero", r.op("Cast", r.input(0), to=TensorProto.BOOL))
