"""A weight that several convolutions use: its gradient contributions, each a GEMM product,
are added as one GEMM over the concatenated factors where that is cheaper than a Sum."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from lossgraph.autodiff import build_gradients
from lossgraph.runtime.session import OrtRunner


def shared_weight_model(op: str, x_shapes, w_shape, **attrs) -> onnx.ModelProto:
    """loss = sum_i sum(op(x_i, w) * r_i): one weight, one use per input."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("w", f, list(w_shape))]
    nodes, terms = [], []
    for i, shape in enumerate(x_shapes):
        inputs.append(helper.make_tensor_value_info(f"x{i}", f, list(shape)))
        nodes.append(helper.make_node(op, [f"x{i}", "w"], [f"y{i}"], **attrs))
        nodes.append(helper.make_node("ReduceSum", [f"y{i}"], [f"s{i}"], keepdims=0))
        terms.append(f"s{i}")
    nodes.append(helper.make_node("Sum", terms, ["loss"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("loss", f, [])])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def torch_weight_grad(op: str, xs, w, **attrs) -> np.ndarray:
    weight = torch.from_numpy(w).requires_grad_()
    fn = torch.nn.functional.conv2d if op == "Conv" else torch.nn.functional.conv_transpose2d
    pad = attrs["pads"][0]
    sum(fn(torch.from_numpy(x), weight, stride=attrs["strides"][0], padding=pad).sum() for x in xs).backward()
    return weight.grad.numpy()


CASES = {
    # small maps, large kernels: the products (512 x 256*16) dwarf their factors -> one GEMM
    "conv-small-maps": ("Conv", [(2, 256, 8, 8), (2, 256, 8, 8)], (512, 256, 4, 4), True),
    "conv-three-uses": ("Conv", [(1, 64, 8, 8)] * 3, (128, 64, 4, 4), True),
    "conv-transpose": ("ConvTranspose", [(2, 256, 4, 4), (2, 256, 4, 4)], (256, 128, 4, 4), True),
    # large maps, a small kernel: the factors are larger than the products -> a Sum
    "conv-large-maps": ("Conv", [(2, 3, 64, 64), (2, 3, 64, 64)], (16, 3, 4, 4), False),
}


@pytest.mark.parametrize("case", CASES)
def test_shared_weight_gradient(case):
    op, x_shapes, w_shape, merged = CASES[case]
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1], "kernel_shape": list(w_shape[2:])}
    model = shared_weight_model(op, x_shapes, w_shape, **attrs)
    result = build_gradients(model, "loss", ["w"])
    grad = result.grads["w"]
    producers = {o: n for n in result.model.graph.node for o in n.output}
    summed = producers[producers[grad].input[0]].op_type == "Sum"
    gemms = [n for n in result.model.graph.node if n.op_type == "Gemm"]
    assert summed != merged
    assert len(gemms) == (1 if merged else len(x_shapes))
    rng = np.random.default_rng(0)
    feeds = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    feeds.update({f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(x_shapes)})
    got = OrtRunner(result.model).run(feeds, [grad])[grad]
    want = torch_weight_grad(op, [feeds[f"x{i}"] for i in range(len(x_shapes))], feeds["w"], **attrs)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
