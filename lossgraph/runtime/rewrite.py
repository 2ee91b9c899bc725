"""Writing the nodes of a session-only graph rewrite (lossgraph.runtime.nchwc,
lossgraph.runtime.conv_transpose): fresh names that collide with nothing in the graph, nodes, and
int64 constants."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class NodeWriter:
    """Collects the nodes (``nodes``, in order) and constants (``constants``) that replace a
    graph's; every name it makes is new to the graph and to the writer."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
        taken |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
        self.taken = taken

    def name(self, base: str) -> str:
        candidate, k = base, 0
        while candidate in self.taken:
            k += 1
            candidate = f"{base}_{k}"
        self.taken.add(candidate)
        return candidate

    def op(self, op_type: str, inputs: list[str], base: str, domain: str = "", out: str | None = None, **attrs) -> str:
        """One node; its output is ``out`` (an existing value the node now computes) or a fresh
        name, which also names the node."""
        node_name = self.name(base)
        out = out or node_name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, domain=domain, **attrs))
        return out

    def ints(self, base: str, values) -> str:
        name = self.name(base)
        self.constants.append(numpy_helper.from_array(np.array(list(values), np.int64), name))
        return name
