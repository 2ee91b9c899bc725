"""Recurrent layers as the ops they are made of: every ONNX ``LSTM``, ``GRU`` and ``RNN`` node
(torch's exporter and paddle2onnx both emit them) is unrolled over its static sequence length
into Gather, MatMul, Add, Mul and activation nodes, following the ONNX operator definitions:
gate order i, o, f, c (LSTM) and z, r, h (GRU, either ``linear_before_reset``), forward, reverse
and bidirectional, either ``layout``, initial states, biases and peepholes, the activations
Sigmoid, Tanh and Relu.

The autodiff differentiates those ops (a recurrent node has no gradient rule of its own), the
float64 re-run converts them, and the export's eager check proves each unrolling against the
framework's own layer. What the unrolling cannot express exactly -- a ``clip``, coupled input and
forget gates, other activations, sequence lengths shorter than the sequence (packed sequences),
a sequence length not known at export -- is refused with one line naming the node. Replacement
nodes are named ``<node>/unroll/<k>`` and carry the node's metadata (scope, source line).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lossgraph.errors import UnsupportedOpError
from lossgraph.graph import LSTM_CELL_GATE_KEY, derived_node, set_node_meta, value_names
from lossgraph.runtime.types import constant_values, static_types

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
#: Gates per op, in the ONNX order of the weights' rows.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Default activations per direction.
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")


def unroll_recurrent(proto: onnx.ModelProto) -> int:
    """Replace every recurrent node of the main graph by its unrolled ops, in place; returns how
    many were replaced. Raises UnsupportedOpError for a node that cannot be unrolled exactly."""
    graph = proto.graph
    nodes = [n for n in graph.node if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")]
    if not nodes:
        return 0
    types = static_types(proto)
    constants = constant_values(proto)
    names = value_names(graph)
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        if node in nodes:
            rewritten.extend(_Unroll(node, types, constants, names).nodes())
        else:
            rewritten.append(node)
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(nodes)


class _Unroll:
    """One recurrent node's replacement."""

    def __init__(self, node: onnx.NodeProto, types, constants, names: set[str]) -> None:
        self.node = node
        self.types = types
        self.constants = constants
        self.names = names
        self.base = node.name or node.output[0]
        self.out: list[onnx.NodeProto] = []
        self.constants_written: dict[tuple, str] = {}
        self.op_type = node.op_type
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.hidden = int(self.attrs.get("hidden_size", 0))
        direction = self.attrs.get("direction", b"forward")
        self.direction = direction.decode() if isinstance(direction, bytes) else direction
        self.layout = int(self.attrs.get("layout", 0))

    # --- emission ----------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        node = derived_node(op_type, inputs, f"{self.base}/unroll/{len(self.out)}", self.names,
                            self.node, **attrs)
        self.out.append(node)
        return node.output[0]

    def ints(self, values: Sequence[int] | int) -> str:
        """An int64 constant (a list, or a scalar), written once per node however often used."""
        array = np.asarray(values, np.int64)
        key = (array.shape, array.tobytes())
        if key not in self.constants_written:
            self.constants_written[key] = self.op("Constant", value=numpy_helper.from_array(array))
        return self.constants_written[key]

    def take(self, x: str, index: int, axis: int = 0) -> str:
        """``x`` at ``index`` along ``axis``, that axis dropped."""
        return self.op("Gather", x, self.ints(index), axis=axis)

    def rows(self, x: str, start: int, stop: int, axis: int = 0) -> str:
        return self.op("Slice", x, self.ints([start]), self.ints([stop]), self.ints([axis]))

    def add(self, a: str | None, b: str | None) -> str | None:
        if a is None or b is None:
            return a if b is None else b
        return self.op("Add", a, b)

    def activation(self, kind: str, x: str) -> str:
        return self.op(kind, x)

    def stack(self, values: list[str], axis: int) -> str:
        parts = [self.op("Unsqueeze", v, self.ints([axis])) for v in values]
        return parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=axis)

    # --- checks ------------------------------------------------------------------------------

    def refuse(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"{self.op_type} node {self.base!r} cannot be unrolled for gradients: {why}."
        )

    def input(self, index: int) -> str | None:
        inputs = self.node.input
        return inputs[index] if index < len(inputs) and inputs[index] else None

    def steps(self, x: str) -> int:
        shape = self.types.get(x)
        dims = None if shape is None else shape.shape
        axis = 1 if self.layout else 0
        if dims is None or len(dims) != 3 or not isinstance(dims[axis], int) or dims[axis] < 1:
            raise self.refuse("its sequence length is not known at export (static shapes only)")
        return int(dims[axis])

    def activations(self, directions: int) -> list[list[str]]:
        default = _DEFAULT_ACTIVATIONS[self.op_type]
        given = [a.decode() if isinstance(a, bytes) else a for a in self.attrs.get("activations", [])]
        if not given:
            given = default * directions
        if len(given) != len(default) * directions:
            raise self.refuse(f"it lists {len(given)} activations for {directions} direction(s)")
        unknown = sorted({a for a in given if a not in _ACTIVATIONS})
        if unknown or self.attrs.get("activation_alpha") or self.attrs.get("activation_beta"):
            raise self.refuse(f"activations {unknown or given} (lossgraph unrolls {', '.join(_ACTIVATIONS)})")
        n = len(default)
        return [given[d * n:(d + 1) * n] for d in range(directions)]

    def check(self, steps: int) -> None:
        if self.hidden < 1:
            raise self.refuse("it has no hidden_size")
        if "clip" in self.attrs:
            raise self.refuse("it clips the cell input ('clip')")
        if int(self.attrs.get("input_forget", 0)):
            raise self.refuse("it couples the input and forget gates ('input_forget')")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise self.refuse(f"direction {self.direction!r}")
        lengths = self.input(4)
        if lengths is not None:
            value = self.constants.get(lengths)
            if value is None or np.any(np.asarray(value) != steps):
                raise self.refuse(
                    "its sequence lengths differ from the sequence length or are computed "
                    "(packed sequences are not supported)"
                )

    # --- the unrolling -----------------------------------------------------------------------

    def nodes(self) -> list[onnx.NodeProto]:
        x = self.input(0)
        steps = self.steps(x)
        self.check(steps)
        directions = 2 if self.direction == "bidirectional" else 1
        activations = self.activations(directions)
        if self.layout:
            x = self.op("Transpose", x, perm=[1, 0, 2])  # [T, B, I]
        outputs: list[tuple[list[str], str, str | None]] = []
        for d in range(directions):
            reverse = self.direction == "reverse" or d == 1
            order = range(steps - 1, -1, -1) if reverse else range(steps)
            outputs.append(self.direction_of(x, d, list(order), activations[d]))
        y = self.stack([self.stack(ys, 0) for ys, _, _ in outputs], 1)  # [T, D, B, H]
        y_h = self.stack([h for _, h, _ in outputs], 0)  # [D, B, H]
        y_c = self.stack([c for _, _, c in outputs], 0) if self.op_type == "LSTM" else None
        if self.layout:
            y = self.op("Transpose", y, perm=[2, 0, 1, 3])
            y_h = self.op("Transpose", y_h, perm=[1, 0, 2])
            y_c = self.op("Transpose", y_c, perm=[1, 0, 2]) if y_c else None
        results = [y, y_h, y_c][: len(self.node.output)]
        renames = {}
        for result, target in zip(results, self.node.output):
            if target and result:
                renames[self.op("Identity", result)] = target
        for node in self.out:
            node.output[:] = [renames.get(o, o) for o in node.output]
        return self.out

    def direction_of(
        self, x: str, d: int, order: list[int], activations: list[str]
    ) -> tuple[list[str], str, str | None]:
        """One direction: the hidden state at every time step (in time order), the last hidden
        state and, for an LSTM, the last cell state."""
        h_size, gates = self.hidden, _GATES[self.op_type]
        w = self.op("Transpose", self.take(self.input(1), d), perm=[1, 0])  # [I, G*H]
        r = self.take(self.input(2), d)  # [G*H, H]
        bias = self.take(self.input(3), d) if self.input(3) else None  # [2*G*H]
        w_bias = self.rows(bias, 0, gates * h_size) if bias else None
        r_bias = self.rows(bias, gates * h_size, 2 * gates * h_size) if bias else None
        state_axis = 1 if self.layout else 0  # initial states: [D, B, H], or [B, D, H]
        h = self.take(self.input(5), d, state_axis) if self.input(5) else None
        c = (self.take(self.input(6), d, state_axis)
             if self.op_type == "LSTM" and self.input(6) else None)
        peep = self.take(self.input(7), d) if self.op_type == "LSTM" and self.input(7) else None
        xw = self.add(self.op("MatMul", x, w), w_bias)  # [T, B, G*H]
        step = {"LSTM": self.lstm_step, "GRU": self.gru_step, "RNN": self.rnn_step}[self.op_type]
        hidden: dict[int, str] = {}
        for t in order:
            h, c = step(self.take(xw, t), r, r_bias, h, c, peep, activations)
            hidden[t] = h
        return [hidden[t] for t in range(len(order))], h, c

    def gate(self, value: str, k: int) -> str:
        return self.rows(value, k * self.hidden, (k + 1) * self.hidden, axis=-1)

    def recurrent(self, h: str | None, r: str, r_bias: str | None, first: int, last: int) -> str | None:
        """``h @ R[first:last].T + Rb[first:last]`` (None where both are absent)."""
        size = self.hidden
        term = None
        if h is not None:
            part = self.rows(r, first * size, last * size)
            term = self.op("MatMul", h, self.op("Transpose", part, perm=[1, 0]))
        if r_bias is not None:
            term = self.add(term, self.rows(r_bias, first * size, last * size))
        return term

    def lstm_step(self, xw, r, r_bias, h, c, peep, activations):
        f, g, act_h = activations
        gates = self.add(xw, self.recurrent(h, r, r_bias, 0, 4))
        i, o, fo, cand = (self.gate(gates, k) for k in range(4))
        set_node_meta(self.out[-1], LSTM_CELL_GATE_KEY, "2")  # the cell candidate's Slice
        if peep is not None and c is not None:
            i = self.op("Add", i, self.op("Mul", self.gate(peep, 0), c))
            fo = self.op("Add", fo, self.op("Mul", self.gate(peep, 2), c))
        i, cand = self.activation(f, i), self.activation(g, cand)
        new_c = self.op("Mul", i, cand)
        if c is not None:
            new_c = self.op("Add", self.op("Mul", self.activation(f, fo), c), new_c)
        if peep is not None:
            o = self.op("Add", o, self.op("Mul", self.gate(peep, 1), new_c))
        new_h = self.op("Mul", self.activation(f, o), self.activation(act_h, new_c))
        return new_h, new_c

    def gru_step(self, xw, r, r_bias, h, c, peep, activations):
        f, g = activations
        zr = self.add(self.rows(xw, 0, 2 * self.hidden, axis=-1), self.recurrent(h, r, r_bias, 0, 2))
        z = self.activation(f, self.gate(zr, 0))
        reset = self.activation(f, self.gate(zr, 1))
        x_h = self.gate(xw, 2)
        r_bias_h = self.rows(r_bias, 2 * self.hidden, 3 * self.hidden) if r_bias else None
        if int(self.attrs.get("linear_before_reset", 0)):
            inner = self.recurrent(h, r, r_bias, 2, 3)
            hidden_term = self.op("Mul", reset, inner) if inner is not None else None
        elif h is not None:
            inner = self.recurrent(self.op("Mul", reset, h), r, None, 2, 3)
            hidden_term = self.add(inner, r_bias_h)
        else:
            hidden_term = r_bias_h
        candidate = self.activation(g, self.add(x_h, hidden_term))
        # (1 - z) * candidate + z * h = candidate - z * candidate + z * h
        new_h = self.op("Sub", candidate, self.op("Mul", z, candidate))
        if h is not None:
            new_h = self.op("Add", new_h, self.op("Mul", z, h))
        return new_h, None

    def rnn_step(self, xw, r, r_bias, h, c, peep, activations):
        (f,) = activations
        return self.activation(f, self.add(xw, self.recurrent(h, r, r_bias, 0, 1))), None
