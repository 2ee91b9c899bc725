"""Random feeds for the one-node test graphs of the session rewrites (test_nchwc,
test_conv_transpose)."""

from __future__ import annotations

import numpy as np
import onnx


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A standard-normal array for every graph input, of its declared type and static shape."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in model.graph.input:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        out[value.name] = rng.standard_normal(shape).astype(dtype)
    return out
