"""GridSample as the ops it is made of: every 4-D ONNX ``GridSample`` node (torch's
``F.grid_sample`` and Paddle's ``F.grid_sample`` both export one) is lowered into Gather,
arithmetic and Where nodes, following the ONNX operator definition: ``linear``/``bilinear``
and ``nearest`` modes, ``zeros``, ``border`` and ``reflection`` padding, either
``align_corners``.

The autodiff differentiates those ops (GridSample has no gradient rule of its own): the
gradient reaches the input through GatherElements (scattered back, each of the four corners
weighted) and the grid through the bilinear weights, as the frameworks' grid_sample backward
computes it; the float64 re-run converts them, and the export's eager check proves the
lowering against the framework's own function. The cubic mode and other ranks are refused
with one line naming the node. Replacement nodes are named ``<node>/lower/<k>`` and carry the
node's metadata (scope, source line) and the GridSample they came from (``LOWERED_KEY``: a
divergence there names GridSample and its settings).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lossgraph.errors import UnsupportedOpError
from lossgraph.graph import LOWERED_KEY, derived_node, set_node_meta, value_names
from lossgraph.runtime.types import static_types

_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest"}


def lower_grid_sample(proto: onnx.ModelProto) -> int:
    """Replace every GridSample node of the main graph by its lowered ops, in place; returns
    how many were replaced. Raises UnsupportedOpError for a node that cannot be lowered."""
    graph = proto.graph
    nodes = [n for n in graph.node if n.op_type == "GridSample" and n.domain in ("", "ai.onnx")]
    if not nodes:
        return 0
    types = static_types(proto)
    names = value_names(graph)
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        rewritten.extend(_Lowering(node, types, names).nodes() if node in nodes else [node])
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(nodes)


class _Lowering:
    """One GridSample node's replacement."""

    def __init__(self, node: onnx.NodeProto, types, names: set[str]) -> None:
        self.node = node
        self.names = names
        self.base = node.name or node.output[0]
        self.out: list[onnx.NodeProto] = []
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        shapes = [types.get(v) for v in node.input[:2]]
        if any(t is None or len(t.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in t.shape)
               for t in shapes):
            raise self.refuse("only a 4-D input and grid of static shape can be lowered")
        (self.n, self.c, self.h, self.w), (_, self.ho, self.wo, _) = (t.shape for t in shapes)
        self.elem = shapes[0].elem_type
        self.origin = json.dumps({"op_type": "GridSample", "name": self.base, "attributes": {
            "mode": _MODES.get(self.attrs.get("mode", "linear"), self.attrs.get("mode")),
            "padding_mode": self.attrs.get("padding_mode", "zeros"),
            "align_corners": int(self.attrs.get("align_corners", 0))}})

    def refuse(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"GridSample node {self.base!r} has no gradient: {why}.")

    # --- emission ----------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        node = derived_node(op_type, inputs, f"{self.base}/lower/{len(self.out)}", self.names,
                            self.node, **attrs)
        set_node_meta(node, LOWERED_KEY, self.origin)
        self.out.append(node)
        return node.output[0]

    def const(self, value, dtype=None) -> str:
        dtype = dtype or helper.tensor_dtype_to_np_dtype(self.elem)
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(value, dtype)))

    def ints(self, values) -> str:
        return self.const(values, np.int64)

    # --- the lowering ------------------------------------------------------------------------

    def nodes(self) -> list[onnx.NodeProto]:
        mode = _MODES.get(self.attrs.get("mode", "linear"))
        padding = self.attrs.get("padding_mode", "zeros")
        if mode is None:
            raise self.refuse(f"mode {self.attrs.get('mode')!r} (linear and nearest are lowered)")
        if padding not in ("zeros", "border", "reflection"):
            raise self.refuse(f"padding_mode {padding!r}")
        x, grid = self.node.input[:2]
        flat = self.op("Reshape", x, self.ints([self.n, self.c, self.h * self.w]))
        ix = self.coordinate(self.op("Gather", grid, self.ints(0), axis=3), self.w, padding)
        iy = self.coordinate(self.op("Gather", grid, self.ints(1), axis=3), self.h, padding)
        if mode == "nearest":
            result = self.corner(flat, self.op("Round", iy), self.op("Round", ix), None)
        else:
            x0, y0 = self.op("Floor", ix), self.op("Floor", iy)
            one = self.const(1.0)
            x1, y1 = self.op("Add", x0, one), self.op("Add", y0, one)
            wx1, wy1 = self.op("Sub", ix, x0), self.op("Sub", iy, y0)
            wx0, wy0 = self.op("Sub", one, wx1), self.op("Sub", one, wy1)
            result = None
            for y, wy in ((y0, wy0), (y1, wy1)):
                for xk, wx in ((x0, wx0), (x1, wx1)):
                    term = self.corner(flat, y, xk, self.op("Mul", wy, wx))
                    result = term if result is None else self.op("Add", result, term)
        self.out.append(helper.make_node("Identity", [result], [self.node.output[0]],
                                         name=f"{self.base}/lower/out"))
        self.out[-1].metadata_props.extend(self.node.metadata_props)
        set_node_meta(self.out[-1], LOWERED_KEY, self.origin)
        return self.out

    def coordinate(self, g: str, size: int, padding: str) -> str:
        """A normalized grid coordinate in [-1, 1] as a pixel coordinate, padded."""
        if self.attrs.get("align_corners", 0):
            pixel = self.op("Mul", self.op("Add", g, self.const(1.0)), self.const((size - 1) / 2))
        else:
            pixel = self.op("Div", self.op("Sub", self.op("Mul", self.op("Add", g, self.const(1.0)),
                                                          self.const(float(size))), self.const(1.0)),
                            self.const(2.0))
        if padding == "reflection":
            pixel = self.reflect(pixel, size)
        if padding in ("border", "reflection"):
            pixel = self.op("Clip", pixel, self.const(0.0), self.const(float(size - 1)))
        return pixel

    def reflect(self, pixel: str, size: int) -> str:
        """The coordinate reflected at the borders (at -0.5 and size - 0.5, or at the corner
        pixels' centres with ``align_corners``), until it lies between them."""
        low, high = (0.0, 2.0 * (size - 1)) if self.attrs.get("align_corners", 0) else (-1.0, 2.0 * size - 1)
        if high == low:
            return self.op("Mul", pixel, self.const(0.0))
        span = (high - low) / 2
        distance = self.op("Abs", self.op("Sub", pixel, self.const(low / 2)))
        flips = self.op("Floor", self.op("Div", distance, self.const(span)))
        extra = self.op("Sub", distance, self.op("Mul", flips, self.const(span)))
        even = self.op("Equal", self.op("Mod", flips, self.const(2.0), fmod=1), self.const(0.0))
        return self.op("Where", even, self.op("Add", extra, self.const(low / 2)),
                       self.op("Sub", self.const(span + low / 2), extra))

    def corner(self, flat: str, y: str, x: str, weight: str | None) -> str:
        """The input at integer pixel (y, x) for every grid point ([N, C, Ho, Wo]), times
        ``weight``, zero where the pixel lies outside the input."""
        inside = None
        for value, size in ((x, self.w), (y, self.h)):
            for check in (self.op("GreaterOrEqual", value, self.const(0.0)),
                          self.op("LessOrEqual", value, self.const(float(size - 1)))):
                inside = check if inside is None else self.op("And", inside, check)
        clipped = [self.op("Cast", self.op("Clip", v, self.const(0.0), self.const(float(s - 1))),
                           to=onnx.TensorProto.INT64) for v, s in ((y, self.h), (x, self.w))]
        index = self.op("Add", self.op("Mul", clipped[0], self.ints(self.w)), clipped[1])
        index = self.op("Expand", self.op("Reshape", index, self.ints([self.n, 1, self.ho * self.wo])),
                        self.ints([self.n, self.c, self.ho * self.wo]))
        values = self.op("Reshape", self.op("GatherElements", flat, index, axis=2),
                         self.ints([self.n, self.c, self.ho, self.wo]))
        scale = self.op("Cast", inside, to=self.elem)
        if weight is not None:
            scale = self.op("Mul", weight, scale)
        return self.op("Mul", values, self.op("Unsqueeze", scale, self.ints([1])))
