"""Adaptive pooling that paddle2onnx mistranslates, written exactly.

paddle2onnx writes Paddle's adaptive pooling (``AdaptiveAvgPool2D``, ``adaptive_avg_pool2d``)
as a plain pool of stride ``in // out`` and kernel ``in - (out - 1) * stride``. That is the
adaptive pooling only where the output size divides the input size. Elsewhere the windows are
wrong (5 -> 3 averages [0, 3), [1, 4), [2, 5) instead of [0, 2), [1, 4), [3, 5)), and upsampling
(VGG's 7x7 pool after a 2x2 feature map) gets stride 0, on which ONNX's shape inference kills
the process.

Adaptive average pooling's window on each axis is ``[floor(i * in / out), ceil((i + 1) * in /
out))``, and its windows are products of those intervals, so the average is separable: one
window matrix per spatial axis, summed with MatMul and divided by the window sizes. Adaptive max
pooling has no such form: its uneven windows are taken apart before conversion
(``paddle_ops``: maxima of slices, axis by axis); one paddle2onnx still gets (a pool that
returns its mask) stops the export with a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lossgraph.errors import ExportError


def window_matrix(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``[size_out, size_in]`` of 0 and 1, row ``i`` selecting adaptive pooling's window ``i``,
    and the windows' sizes. The average is the sum divided by the size, as the frameworks
    compute it: a weight of 1/3 would carry float32 rounding into the float64 re-run."""
    from lossgraph.exporters.common import adaptive_windows

    matrix = np.zeros([size_out, size_in], np.float32)
    for i, (start, end) in enumerate(adaptive_windows(size_in, size_out)):
        matrix[i, start:end] = 1.0
    return matrix, matrix.sum(axis=1)


def _exact(in_shape: list[int], out_shape: list[int]) -> bool:
    """paddle2onnx's pool is the adaptive one where each output size divides its input size."""
    return all(o > 0 and i > 0 and i % o == 0 for i, o in zip(in_shape, out_shape))


def _where(attrs: Mapping[str, Any], paths: Mapping[str, str]) -> str:
    """" in features.pool": the module path of the pool's Paddle struct name, where known."""
    struct = str(attrs.get("struct_name") or "").strip("/")
    return f" in {paths.get(struct, struct)}" if struct else ""


def adaptive_pool_nodes(
    node: onnx.NodeProto, attrs: Mapping[str, Any], paths: Mapping[str, str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None:
    """The nodes (and averaging matrices) that replace paddle2onnx's ``node`` for the adaptive
    pool whose program attributes and shapes are ``attrs``; None where paddle2onnx's node is
    already exact. Raises ExportError where no exact translation is known (``paths``: Paddle's
    struct names -> module paths, for the message)."""
    in_shape, out_shape = attrs.get("in_shape"), attrs.get("out_shape")
    channels_last = str(attrs.get("data_format", "NCHW")).endswith("C")
    if not in_shape or not out_shape or len(in_shape) != len(out_shape) or len(in_shape) < 3:
        raise ExportError(
            f"adaptive pooling{_where(attrs, paths)}: the traced program gives no static shapes, and "
            f"paddle2onnx's translation is exact only where the output size divides the input "
            f"size; give the spec inputs of static shape."
        )
    axes = list(range(1, len(in_shape) - 1)) if channels_last else list(range(2, len(in_shape)))
    sizes_in = [in_shape[a] for a in axes]
    sizes_out = [out_shape[a] for a in axes]
    if _exact(sizes_in, sizes_out):
        return None
    if any(s <= 0 for s in sizes_in + sizes_out):
        raise ExportError(
            f"adaptive pooling{_where(attrs, paths)}: input {in_shape} has a dynamic spatial size, and "
            f"paddle2onnx's translation is exact only where the output size divides it; give the "
            f"spec inputs of static shape."
        )
    if attrs.get("pooling_type", "avg") != "avg" or channels_last:
        kind = "max" if attrs.get("pooling_type") == "max" else "channels-last average"
        raise ExportError(
            f"adaptive {kind} pooling{_where(attrs, paths)} from {sizes_in} to {sizes_out}: paddle2onnx "
            f"translates it exactly only where the output size divides the input size, and "
            f"lossgraph has no exact translation of this one; pool to a divisor of the input size."
        )
    rank = len(in_shape)
    nodes: list[onnx.NodeProto] = []
    matrices: list[onnx.TensorProto] = []
    current = node.input[0]
    changed = [(a, i, o) for a, i, o in zip(axes, sizes_in, sizes_out) if i != o]
    for k, (axis, size_in, size_out) in enumerate(changed):
        base = f"{node.name or node.output[0]}/adaptive_axis{axis}"
        out = node.output[0] if k == len(changed) - 1 else f"{base}/out"
        matrix, counts = window_matrix(size_in, size_out)
        if axis == rank - 1:  # x @ M^T sums the last axis
            weights, sums, shape = np.ascontiguousarray(matrix.T), [current, f"{base}/matrix"], [size_out]
        else:  # M @ x the second to last
            weights, sums, shape = matrix, [f"{base}/matrix", current], [size_out, 1]
        matrices += [numpy_helper.from_array(weights, f"{base}/matrix"),
                     numpy_helper.from_array(counts.reshape(shape), f"{base}/counts")]
        perm = list(range(rank))
        moved = axis < rank - 2  # bring the axis second to last, and put it back after
        if moved:
            perm[axis], perm[rank - 2] = perm[rank - 2], perm[axis]
            nodes.append(helper.make_node("Transpose", [current], [f"{base}/moved"],
                                          name=f"{base}/move", perm=perm))
            sums[1] = f"{base}/moved"
        nodes += [
            helper.make_node("MatMul", sums, [f"{base}/sum"], name=f"{base}/sum"),
            helper.make_node("Div", [f"{base}/sum", f"{base}/counts"],
                             [f"{base}/mean" if moved else out], name=base),
        ]
        if moved:
            nodes.append(helper.make_node("Transpose", [f"{base}/mean"], [out], name=f"{base}/back",
                                          perm=perm))
        current = out
    for new in nodes:
        new.metadata_props.extend(node.metadata_props)
    return nodes, matrices


def mend_adaptive_pools(
    graph: onnx.GraphProto, pools: list[tuple[onnx.NodeProto, Mapping[str, Any]]],
    paths: Mapping[str, str],
) -> None:
    """Replace each of paddle2onnx's adaptive pool nodes that is not exact, in place."""
    replacements: dict[str, list[onnx.NodeProto]] = {}  # by the pool's output
    for node, attrs in pools:
        found = adaptive_pool_nodes(node, attrs, paths)
        if found is not None:
            nodes, matrices = found
            replacements[node.output[0]] = nodes
            graph.initializer.extend(matrices)
    if not replacements:
        return
    rebuilt = []
    for node in graph.node:
        rebuilt.extend(replacements.get(node.output[0] if node.output else "", [node]))
    del graph.node[:]
    graph.node.extend(rebuilt)
