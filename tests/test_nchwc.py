"""Convs lowered to ONNX Runtime's NCHWc kernels compute what the plain Conv computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from feeds import feeds_for
from onnx import TensorProto, helper

from lossgraph.runtime import nchwc
from lossgraph.runtime.nchwc import DOMAIN, block_size, lower_convs
from lossgraph.runtime.session import OrtRunner

BLOCK = block_size()
needs_nchwc = pytest.mark.skipif(not BLOCK, reason="this onnxruntime build has no NCHWc kernels")


@pytest.fixture(autouse=True)
def small_shapes_lowered(monkeypatch):
    """The cases are small; each test that checks the size threshold sets it back."""
    monkeypatch.setattr(nchwc, "MIN_POSITIONS", 1)


def conv_model(x_shape, w_shape, bias=False, dtype=TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", dtype, list(x_shape)),
              helper.make_tensor_value_info("w", dtype, list(w_shape))]
    names = ["x", "w"]
    if bias:
        inputs.append(helper.make_tensor_value_info("b", dtype, [w_shape[0]]))
        names.append("b")
    graph = helper.make_graph(
        [helper.make_node("Conv", names, ["y"], name="conv", **attrs)], "g", inputs,
        [helper.make_tensor_value_info("y", dtype, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def float64_conv(model: onnx.ModelProto, feeds) -> np.ndarray:
    from lossgraph.runtime.float64 import to_float64

    wide = {k: v.astype(np.float64) for k, v in feeds.items()}
    return OrtRunner(to_float64(model), nchwc=False).run(wide)["y"]


# (x shape, w shape, bias, attributes): every kernel family and each way the channels can sit
# against the block (below it: NCHW input; unaligned: padded in and out)
GEOMETRIES = {
    "rgb-7x7-stride2": ((2, 3, 33, 31), (24, 3, 7, 7), True, {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    "3x3": ((2, 32, 12, 12), (48, 32, 3, 3), False, {"pads": [1, 1, 1, 1]}),
    "unaligned-channels": ((2, 20, 10, 9), (21, 20, 3, 3), True, {"pads": [1, 1, 1, 1]}),
    "few-input-channels": ((1, 8, 10, 10), (16, 8, 3, 3), False, {"pads": [1, 1, 1, 1]}),
    "1x1-stride2": ((2, 32, 9, 9), (16, 32, 1, 1), False, {"strides": [2, 2]}),
    "4x4-stride2-asymmetric": ((2, 16, 12, 12), (32, 16, 4, 4), True, {"strides": [2, 2], "pads": [1, 2, 2, 1]}),
    "dilated": ((2, 16, 14, 14), (16, 16, 3, 3), False, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    "no-pads": ((1, 64, 9, 9), (64, 64, 3, 3), True, {"strides": [2, 2]}),
}


@needs_nchwc
@pytest.mark.parametrize("case", GEOMETRIES)
def test_lowered_conv_matches_plain(case):
    x_shape, w_shape, bias, attrs = GEOMETRIES[case]
    model = conv_model(x_shape, w_shape, bias, **attrs)
    lowered, count = lower_convs(model)
    assert count == 1
    assert [n.op_type for n in lowered.graph.node if n.domain == DOMAIN][-2:] == ["Conv", "ReorderOutput"]
    feeds = feeds_for(model)
    plain = OrtRunner(model, nchwc=False).run(feeds)["y"]
    fast = OrtRunner(model)
    assert fast.nchwc_convs == 1
    got = fast.run(feeds)["y"]
    want = float64_conv(model, feeds)
    assert got.shape == plain.shape == want.shape
    scale = np.abs(want).max()
    # the blocked kernels sum in another order: as close to float64 as im2col + SGEMM is
    assert np.abs(got - want).max() <= max(4 * np.abs(plain - want).max(), 1e-6 * scale)


@needs_nchwc
def test_shared_input_and_weight_reordered_once():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [16, 16, 3, 3])
    nodes = [helper.make_node("Conv", ["x", "w"], [f"y{k}"], name=f"c{k}", pads=[1, 1, 1, 1], strides=[k, k])
             for k in (1, 2)]
    graph = helper.make_graph(nodes, "g", [x, w], [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None)
                                                  for k in (1, 2)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    lowered, count = lower_convs(model)
    assert count == 2
    reorders = [n for n in lowered.graph.node if n.op_type == "ReorderInput"]
    assert len(reorders) == 3  # x once, the weight's two steps once
    feeds = feeds_for(model)
    plain = OrtRunner(model, nchwc=False).run(feeds)
    fast = OrtRunner(model).run(feeds)
    for name in plain:
        np.testing.assert_allclose(fast[name], plain[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    {
        "grouped": ((1, 32, 8, 8), (32, 16, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, TensorProto.FLOAT),
        "float64": ((1, 16, 8, 8), (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}, TensorProto.DOUBLE),
        "1-d": ((1, 16, 8), (16, 16, 3), {"pads": [1, 1]}, TensorProto.FLOAT),
        "channels-not-multiple-of-4": ((1, 18, 8, 8), (16, 18, 3, 3), {"pads": [1, 1, 1, 1]}, TensorProto.FLOAT),
        "kernel-larger-than-output": ((3, 8, 16, 16), (4, 8, 14, 14), {}, TensorProto.FLOAT),
        "auto-pad": ((1, 16, 8, 8), (16, 16, 3, 3), {"auto_pad": "SAME_UPPER"}, TensorProto.FLOAT),
    }.items(),
    ids=lambda item: item[0],
)
def test_convs_the_kernels_do_not_take_stay(case):
    _, (x_shape, w_shape, attrs, dtype) = case
    model = conv_model(x_shape, w_shape, dtype=dtype, **attrs)
    lowered, count = lower_convs(model)
    assert count == 0 and lowered is model
    if dtype == TensorProto.FLOAT:  # ONNX Runtime has no float64 Conv (lossgraph decomposes it)
        runner = OrtRunner(model)
        assert runner.nchwc_convs == 0
        runner.run(feeds_for(model))


@needs_nchwc
def test_few_output_positions_stay_on_im2col(monkeypatch):
    model = conv_model((2, 64, 16, 16), (64, 64, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1])  # 2x8x8
    monkeypatch.setattr(nchwc, "MIN_POSITIONS", 129)
    assert lower_convs(model)[1] == 0
    monkeypatch.setattr(nchwc, "MIN_POSITIONS", 128)
    assert lower_convs(model)[1] == 1


@needs_nchwc
def test_plain_kernels_on_request():
    model = conv_model((1, 16, 8, 8), (16, 16, 3, 3), pads=[1, 1, 1, 1])
    assert OrtRunner(model, nchwc=False).nchwc_convs == 0
    assert OrtRunner(model).nchwc_convs == 1


def random_geometries(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    drawn = 0
    while drawn < count:
        ci = int(rng.choice([1, 2, 3, 5, 8, 16, 20, 32, 36]))
        co = int(rng.choice([1, 5, 16, 17, 33]))
        k = [int(v) for v in rng.choice([1, 2, 3, 5], 2)]
        strides = [int(v) for v in rng.integers(1, 4, 2)]
        dilations = [int(v) for v in rng.integers(1, 3, 2)]
        pads = [int(v) for v in rng.integers(0, 3, 4)]
        size = [int(v) for v in rng.integers(6, 14, 2)]
        if any((k[a] - 1) * dilations[a] + 1 > size[a] + pads[a] + pads[a + 2] for a in range(2)):
            continue  # no output
        drawn += 1
        yield ((int(rng.integers(1, 3)), ci, *size), (co, ci, *k), bool(rng.integers(2)),
               {"strides": strides, "dilations": dilations, "pads": pads, "kernel_shape": k})


@needs_nchwc
def test_random_geometries_match_float64():
    """Channels on both sides of the block, unaligned; kernels, strides, dilations, asymmetric
    pads drawn at random: every lowered Conv is as close to float64 as the plain one."""
    lowered = 0
    for x_shape, w_shape, bias, attrs in random_geometries(40):
        model = conv_model(x_shape, w_shape, bias, **attrs)
        runner = OrtRunner(model)
        lowered += runner.nchwc_convs
        feeds = feeds_for(model)
        got = runner.run(feeds)["y"]
        plain = OrtRunner(model, nchwc=False).run(feeds)["y"]
        want = float64_conv(model, feeds)
        scale = max(np.abs(want).max(), 1.0)
        assert np.abs(got - want).max() <= max(4 * np.abs(plain - want).max(), 1e-6 * scale), (x_shape, w_shape, attrs)
    assert lowered >= 25  # most draws qualify (kernel no larger than the output, channels % 4)


def conv_loss_model(x_shape, w_shape, **attrs) -> onnx.ModelProto:
    """sum(Conv(x, w) * r): its gradient for x is a unit-stride Conv by the flipped kernel."""
    out_shape = [x_shape[0], w_shape[0], *x_shape[2:]]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
              for n, s in (("x", x_shape), ("w", w_shape), ("r", out_shape))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs),
             helper.make_node("Mul", ["y", "r"], ["yr"]),
             helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@needs_nchwc
@pytest.mark.parametrize(
    "x_shape, w_shape, fast",
    [((2, 32, 9, 9), (48, 32, 3, 3), True), ((1, 16, 7, 7), (32, 16, 5, 5), True),
     ((2, 32, 8, 8), (20, 32, 3, 3), False), ((2, 4, 8, 8), (16, 4, 3, 3), False)],
    ids=["3x3", "5x5", "unaligned-out-channels", "few-in-channels"],
)
def test_dx_conv_weight_built_from_the_forward_one(x_shape, w_shape, fast):
    """The dX Conv of a unit-stride Conv reads the forward Conv's blocked weight, its tiles
    transposed and reordered, where both channel counts fill whole blocks; elsewhere the
    flipped weight is reordered as it is. Either way it computes what the plain graph does."""
    from lossgraph.autodiff import build_gradients

    pad = (w_shape[2] - 1) // 2
    model = conv_loss_model(x_shape, w_shape, pads=[pad] * 4)
    result = build_gradients(model, "loss", ["x", "w"])
    lowered, count = lower_convs(result.model)
    assert count == 2 if x_shape[1] >= BLOCK else count >= 1
    ops = [n.op_type for n in lowered.graph.node]
    flipped = [n for n in lowered.graph.node if n.name.endswith("/w_flipped")]
    assert bool(flipped) == fast
    if fast:  # the flip the autodiff wrote (Transpose, MatMul by the exchange matrix) is gone
        assert "MatMul" not in ops
        # x, dy, the forward weight's two steps, the tile swap
        assert ops.count("ReorderInput") == 5
    feeds = feeds_for(result.model)
    outputs = [result.grads["x"], result.grads["w"]]
    plain = OrtRunner(result.model, nchwc=False).run(feeds, outputs)
    got = OrtRunner(result.model).run(feeds, outputs)
    for name in outputs:
        scale = np.abs(plain[name]).max()
        np.testing.assert_allclose(got[name], plain[name], rtol=0, atol=1e-5 * scale)
