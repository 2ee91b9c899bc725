"""ConvTransposes rewritten as Gemm + Col2Im compute what ONNX Runtime's ConvTranspose computes,
and only where the rewrite applies and pays."""

from __future__ import annotations

import numpy as np
import pytest
from feeds import feeds_for
from onnx import TensorProto, helper

from lossgraph.runtime.conv_transpose import lower_conv_transposes
from lossgraph.runtime.session import OrtRunner


def conv_transpose_model(x_shape, w_shape, bias=False, dtype=TensorProto.FLOAT, opset=18, **attrs):
    inputs = [helper.make_tensor_value_info("x", dtype, list(x_shape)),
              helper.make_tensor_value_info("w", dtype, list(w_shape))]
    names = ["x", "w"]
    if bias:
        inputs.append(helper.make_tensor_value_info("b", dtype, [w_shape[1] * attrs.get("group", 1)]))
        names.append("b")
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", names, ["y"], name="up", **attrs)], "g", inputs,
        [helper.make_tensor_value_info("y", dtype, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# (x shape, w shape [Ci, Co, kh, kw], bias, attributes): each has at least 2 images and at most
# half as many positions per image as input channels, so each is rewritten
GEOMETRIES = {
    "4x4-stride2": ((4, 64, 4, 4), (64, 32, 4, 4), False, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "bias": ((2, 40, 3, 4), (40, 7, 3, 3), True, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "output-padding": ((3, 32, 4, 4), (32, 16, 3, 3), False,
                       {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    "asymmetric-pads": ((2, 36, 3, 3), (36, 5, 4, 3), True, {"strides": [2, 3], "pads": [0, 2, 1, 1]}),
    "dilated": ((2, 20, 2, 5), (20, 6, 3, 2), False, {"dilations": [2, 3], "pads": [1, 0, 2, 1]}),
    "unit-stride-1x1": ((5, 16, 2, 2), (16, 9, 1, 1), True, {}),
}


@pytest.mark.parametrize("case", GEOMETRIES)
def test_rewrite_matches_conv_transpose(case):
    x_shape, w_shape, bias, attrs = GEOMETRIES[case]
    model = conv_transpose_model(x_shape, w_shape, bias, **attrs)
    lowered, count = lower_conv_transposes(model)
    assert count == 1
    ops = [n.op_type for n in lowered.graph.node]
    assert "ConvTranspose" not in ops and "Col2Im" in ops and ops.count("Gemm") == 1
    feeds = feeds_for(model)
    want = OrtRunner(model, col2im=False).run(feeds)["y"]
    runner = OrtRunner(model)
    assert runner.col2im_conv_transposes == 1
    got = runner.run(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs, why",
    [((1, 64, 4, 4), (64, 32, 4, 4), {}, "one image: the weight is packed once either way"),
     ((4, 64, 8, 8), (64, 32, 4, 4), {}, "64 positions per image for 64 input channels"),
     ((4, 64, 4, 4), (32, 16, 4, 4), {"group": 2}, "grouped"),
     ((4, 64, 4, 4), (64, 32, 4, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, "auto_pad"),
     ((4, 64, 4, 4), (64, 32, 4, 4), {"output_shape": [8, 8], "strides": [2, 2]}, "output_shape")],
    ids=["one-image", "many-positions", "grouped", "auto-pad", "output-shape"],
)
def test_left_as_it_is(x_shape, w_shape, attrs, why):
    model = conv_transpose_model(x_shape, w_shape, **attrs)
    lowered, count = lower_conv_transposes(model)
    assert count == 0 and lowered is model, why


def test_needs_opset_18_and_float32():
    shapes = ((4, 64, 4, 4), (64, 32, 4, 4))
    assert lower_conv_transposes(conv_transpose_model(*shapes, opset=17))[1] == 0  # no Col2Im
    assert lower_conv_transposes(conv_transpose_model(*shapes, dtype=TensorProto.DOUBLE))[1] == 0
    assert lower_conv_transposes(conv_transpose_model(*shapes))[1] == 1
    # every=True rewrites what the size rule leaves, never what the rewrite cannot express
    assert lower_conv_transposes(conv_transpose_model((4, 8, 8, 8), (8, 4, 3, 3)), every=True)[1] == 1
    assert lower_conv_transposes(conv_transpose_model(*shapes, opset=17), every=True)[1] == 0


def test_off_on_request_and_off_the_cpu_path():
    model = conv_transpose_model((4, 64, 4, 4), (64, 32, 4, 4))
    assert OrtRunner(model, col2im=False).col2im_conv_transposes == 0
    assert OrtRunner(model).col2im_conv_transposes == 1


def test_strided_conv_gradients_unchanged():
    """A strided Conv's dX is a ConvTranspose of the forward weight (the autodiff's rule); with
    the rewrite the whole gradient is what ORT's ConvTranspose gives, and agrees with float64."""
    from lossgraph.autodiff import build_gradients
    from lossgraph.runtime.float64 import to_float64

    x_shape, w_shape = (4, 96, 8, 8), (48, 96, 4, 4)  # dX's ConvTranspose reads [4, 48, 4, 4]
    out_shape = [4, 48, 4, 4]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
              for n, s in (("x", x_shape), ("w", w_shape), ("r", out_shape))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["y", "r"], ["yr"]),
             helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    result = build_gradients(model, "loss", ["x", "w"])
    feeds = feeds_for(result.model)
    grads = [result.grads["x"], result.grads["w"]]
    runner = OrtRunner(result.model, extra_outputs=grads)
    assert runner.col2im_conv_transposes == 1
    got = runner.run(feeds, grads)
    plain = OrtRunner(result.model, extra_outputs=grads, col2im=False).run(feeds, grads)
    wide = OrtRunner(to_float64(result.model), extra_outputs=grads).run(
        {k: v.astype(np.float64) for k, v in feeds.items()}, grads
    )
    for name in grads:
        scale = float(np.abs(wide[name]).max())
        np.testing.assert_allclose(got[name], plain[name], rtol=1e-5, atol=1e-5 * scale)
        assert np.abs(got[name] - wide[name]).max() <= 1e-5 * scale
