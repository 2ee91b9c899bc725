"""A small ONNX builder for update graphs: values are names, one scope per parameter.

Nodes are named ``<param>/<label>`` (the value a node makes has the node's name), so a report
can point at ``fc.weight/exp_avg_sq``. In a float32 graph :meth:`ParamScope.fma` computes a
fused multiply-add the way the frameworks' vectorized CPU kernels do: the float32 product is
exact in float64, so one float64 multiply-add rounded to float32 equals ``fma`` except in
double-rounding ties (about one in 2**29). A float64 graph cannot do that and uses Mul + Add.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DTYPES: dict[str, tuple[type[np.floating], int]] = {
    "float32": (np.float32, TensorProto.FLOAT),
    "float64": (np.float64, TensorProto.DOUBLE),
}

Operand = str | float | np.floating


class UpdateGraph:
    """The nodes, inputs, outputs and constants of one update graph."""

    def __init__(self, dtype: str, scalars: str | None = None) -> None:
        self.dtype = dtype
        self.np_dtype, self.onnx_type = DTYPES[dtype]
        #: Python scalars (hyper-parameters) are rounded to this dtype first: "float32" in a
        #: float64 graph re-runs the float32 program's arithmetic exactly (see OptimizerUpdate)
        self.scalar_dtype = DTYPES[scalars or dtype][0]
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[int, bytes], str] = {}
        self._doubles: dict[str, str] = {}
        self._names: Counter[str] = Counter()

    def scope(self, param: str, shape: Sequence[int]) -> ParamScope:
        return ParamScope(self, param, list(shape))

    def input(self, name: str, shape: Sequence[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, self.onnx_type, list(shape)))
        return name

    def output(self, name: str, value: str, shape: Sequence[int], node: str) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=node))
        self.outputs.append(helper.make_tensor_value_info(name, self.onnx_type, list(shape)))

    def const(self, value: float | np.floating, onnx_type: int | None = None) -> str:
        """A scalar constant, rounded to the graph's dtype (or to ``onnx_type``)."""
        onnx_type = self.onnx_type if onnx_type is None else onnx_type
        np_dtype = np.float64 if onnx_type == TensorProto.DOUBLE else self.np_dtype
        array = np.asarray(self.round(value), dtype=np_dtype)
        key = (onnx_type, array.tobytes())  # keeps -0.0 apart from 0.0
        if key not in self._consts:
            name = f"const/{np.dtype(np_dtype).name}/{float(array)!r}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def const_ints(self, values: Sequence[int]) -> str:
        """An int64 vector constant (a shape, axes)."""
        array = np.asarray(values, dtype=np.int64)
        key = (TensorProto.INT64, array.tobytes() + bytes([array.ndim]))
        if key not in self._consts:
            name = f"const/int64/{list(map(int, values))}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def round(self, value: float | np.floating) -> np.floating:
        """A Python scalar as the graph computes with it: rounded to the scalar dtype, then held
        in the graph's dtype."""
        return self.np_dtype(self.scalar_dtype(value))

    def node(self, op_type: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self._names[name] += 1
        if self._names[name] > 1:
            name = f"{name}_{self._names[name] - 1}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def as_double(self, value: str, name: str) -> str:
        """``value`` cast to float64 once, however often it is asked for."""
        if value not in self._doubles:
            self._doubles[value] = self.node("Cast", [value], name, to=TensorProto.DOUBLE)
        return self._doubles[value]

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


class ParamScope:
    """Builds one parameter's update; inputs are ``<param>:<slot>``, outputs ``<...>:updated``."""

    def __init__(self, graph: UpdateGraph, param: str, shape: list[int]) -> None:
        self.graph = graph
        self.name = param
        self.shape = shape
        self.param = graph.input(param, shape)
        self.grad = graph.input(f"{param}:grad", shape)
        self._state: dict[str, str] = {}

    @property
    def float32(self) -> bool:
        return self.graph.dtype == "float32"

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def cast(self, value: float) -> np.floating:
        """A Python float as the graph's dtype (what a kernel makes of a scalar argument)."""
        return self.graph.round(value)

    def state(self, slot: str, shape: Sequence[int] | None = None) -> str:
        """The input holding optimizer state ``slot`` (the parameter's shape by default)."""
        if slot not in self._state:
            self._state[slot] = self.graph.input(
                f"{self.name}:{slot}", self.shape if shape is None else shape
            )
        return self._state[slot]

    def scalar(self, name: str) -> str:
        """A per-step scalar input, computed by the caller as the framework computes it."""
        return self.state(name, [])

    def set_state(self, slot: str, value: str, shape: Sequence[int] | None = None) -> None:
        shape = self.shape if shape is None else shape
        self.graph.output(f"{self.name}:{slot}:updated", value, shape, f"{self.name}/output/{slot}")

    def set_param(self, value: str) -> None:
        self.graph.output(f"{self.name}:updated", value, self.shape, f"{self.name}/output")

    def _operand(self, x: Operand) -> str:
        return x if isinstance(x, str) else self.graph.const(x)

    def _op(self, op_type: str, label: str | None, *inputs: Operand, **attrs: object) -> str:
        name = f"{self.name}/{label or op_type.lower()}"
        return self.graph.node(op_type, [self._operand(x) for x in inputs], name, **attrs)

    def add(self, a: Operand, b: Operand, label: str | None = None) -> str:
        return self._op("Add", label, a, b)

    def sub(self, a: Operand, b: Operand, label: str | None = None) -> str:
        return self._op("Sub", label, a, b)

    def mul(self, a: Operand, b: Operand, label: str | None = None) -> str:
        return self._op("Mul", label, a, b)

    def div(self, a: Operand, b: Operand, label: str | None = None) -> str:
        return self._op("Div", label, a, b)

    def max(self, a: Operand, b: Operand, label: str | None = None) -> str:
        return self._op("Max", label, a, b)

    def sqrt(self, a: Operand, label: str | None = None) -> str:
        return self._op("Sqrt", label, a)

    def neg(self, a: Operand, label: str | None = None) -> str:
        return self._op("Neg", label, a)

    def sign(self, a: Operand, label: str | None = None) -> str:
        return self._op("Sign", label, a)

    def fma(self, a: Operand, b: Operand, c: Operand, label: str | None = None) -> str:
        """``a * b + c`` rounded once in float32 graphs (see the module docstring)."""
        label = label or "fma"
        if not self.float32:
            return self.add(self.mul(a, b, f"{label}/mul"), c, label)
        wide = [
            self.graph.const(x, TensorProto.DOUBLE)
            if not isinstance(x, str)
            else self.graph.as_double(x, f"{x}/as_double")
            for x in (a, b, c)
        ]
        product = self._op("Mul", f"{label}/mul64", wide[0], wide[1])
        total = self._op("Add", f"{label}/add64", product, wide[2])
        return self._op("Cast", label, total, to=TensorProto.FLOAT)
