"""ONNX Resize as matrices: Resize is linear in its data and separable, so along each axis it
resizes, ``y = M x`` with M [out, in] that axis's interpolation matrix. Both the gradient rule
(``M^T dy``) and the float64 decomposition (ONNX Runtime has no float64 Resize) use them.

Each matrix is read off ONNX's reference Resize applied to the identity along that axis, the
node's own attributes (mode, coordinate transformation, nearest rounding, cubic coefficient,
antialias, exclude_outside, crop) and its scale, size or roi for the axis, the other axis of the
probe (the basis) at scale 1. Constant terms (a crop's extrapolation value) are taken out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import helper

from lossgraph.errors import UnsupportedOpError


def resize_matrices(
    node: onnx.NodeProto,
    opset: int,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    roi: np.ndarray | None,
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(axis, M)`` for each axis the node changes (identity axes are skipped), M float64."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    policy = attrs.get("keep_aspect_ratio_policy", b"stretch")
    if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        raise UnsupportedOpError(
            f"Resize node {node.name!r}: keep_aspect_ratio_policy {policy!r} is not supported "
            f"(only 'stretch')."
        )
    rank = len(in_shape)
    axes = attrs.pop("axes", None)
    position = {int(a) % rank: i for i, a in enumerate(axes)} if axes is not None else {a: a for a in range(rank)}
    roi = None if roi is None or not np.size(roi) else np.asarray(roi, np.float64).reshape(2, -1)
    scales = None if scales is None or not np.size(scales) else np.ravel(scales)
    for axis in range(rank):
        if axis not in position:
            continue
        at = position[axis]
        feeds = {"x": np.eye(in_shape[axis])}
        inputs = ["x", "", "", ""]
        if roi is not None:
            inputs[1] = "roi"
            feeds["roi"] = np.array([0.0, roi[0, at], 1.0, roi[1, at]])
        if scales is not None:
            inputs[2] = "scales"
            feeds["scales"] = np.array([1.0, float(scales[at])], np.float32)
        else:
            inputs[3] = "sizes"
            feeds["sizes"] = np.array([in_shape[axis], out_shape[axis]], np.int64)
        matrix = _probe(node, attrs, opset, inputs, feeds)
        if matrix.shape != (out_shape[axis], in_shape[axis]):
            raise UnsupportedOpError(
                f"Resize node {node.name!r}: its interpolation along axis {axis} could not be "
                f"reproduced ({matrix.shape[0]} outputs where the graph has {out_shape[axis]})."
            )
        if matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(matrix.shape[0])):
            continue
        yield axis, matrix


def _probe(node: onnx.NodeProto, attrs: dict, opset: int, inputs: list[str], feeds: dict) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    used = inputs[: max(k for k, name in enumerate(inputs) if name) + 1]
    probe = helper.make_node("Resize", used, ["y"], **attrs)
    model = helper.make_model(
        helper.make_graph([probe], "resize_axis", [], [helper.make_tensor_value_info("y", 0, None)]),
        opset_imports=[helper.make_opsetid("", max(opset, 11))],
    )
    run = ReferenceEvaluator(model)
    identity = run.run(None, feeds)[0]
    offset = run.run(None, {**feeds, "x": np.zeros_like(feeds["x"])})[0]
    return np.asarray(identity - offset, np.float64).T
