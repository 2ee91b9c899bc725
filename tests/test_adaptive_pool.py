"""Adaptive pooling paddle2onnx writes with the wrong windows (issue 19.7): upsampling (VGG's
7x7 pool after a 2x2 map) used to kill the process with SIGFPE in ONNX's shape inference, and
sizes that do not divide got the wrong windows. Checked against Paddle's and torch's own
kernels, gradients and training steps included; a graph with a zero stride is bad input."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import lossgraph as lg
from lossgraph.exporters.adaptive_pool import window_matrix
from lossgraph.graph import META_KEY, GraphMeta
from lossgraph.runtime import infer_types
from lossgraph.spec import Input

SIZES = [((2, 3), (7, 5)), ((5, 7), (3, 4)), ((4, 6), (2, 3)), ((6, 5), (4, 1)), ((3, 3), (1, 1))]


@pytest.mark.parametrize("size_in, size_out", SIZES)
def test_averaging_matrices_are_paddles_adaptive_average(size_in, size_out):
    import paddle

    x = np.random.default_rng(0).standard_normal([2, 3, *size_in]).astype(np.float32)
    want = paddle.nn.functional.adaptive_avg_pool2d(paddle.to_tensor(x), size_out).numpy()
    (rows, row_sizes), (cols, col_sizes) = (window_matrix(i, o) for i, o in zip(size_in, size_out))
    mean = (rows @ x / row_sizes[:, None]) @ cols.T / col_sizes
    np.testing.assert_allclose(mean, want, rtol=1e-6, atol=1e-6)


PAIR = """
import numpy as np
import lossgraph as lg
import {fw}
W = np.random.default_rng(1).standard_normal([2, 4, {oh}, {ow}]).astype(np.float32)

class Net({base}):
    def __init__(self):
        super().__init__()
        {seed}
        self.conv = {conv}(3, 4, 3, padding=1)
        self.pool = {pool}(({oh}, {ow}))

    def forward(self, x):
        return self.pool(self.conv(x))

def spec():
    def loss(model, x):
        w = {tensor}(W)
        return (model(x) * w).sum() + (model(x) ** 2).mean()
    model = Net()
    return lg.Spec(model=model, loss=loss, inputs={{"x": lg.Input([2, 3, {ih}, {iw}])}},
                   optimizers={{"sgd": {sgd}}})
"""
TORCH = dict(fw="torch", base="torch.nn.Module", seed="torch.manual_seed(0)", conv="torch.nn.Conv2d",
             pool="torch.nn.AdaptiveAvgPool2d", tensor="torch.tensor",
             sgd="torch.optim.SGD(model.parameters(), lr=0.1)")
PADDLE = dict(fw="paddle", base="paddle.nn.Layer", seed="paddle.seed(0)", conv="paddle.nn.Conv2D",
              pool="paddle.nn.AdaptiveAvgPool2D", tensor="paddle.to_tensor",
              sgd="paddle.optimizer.SGD(0.1, parameters=model.parameters())")


@pytest.mark.parametrize("size_in, size_out", SIZES[:3], ids=["upsample", "not_dividing", "dividing"])
def test_paddle_adaptive_average_pool_exports_and_trains_like_torch(
    cli, write_spec, tmp_path, size_in, size_out
):
    sizes = dict(ih=size_in[0], iw=size_in[1], oh=size_out[0], ow=size_out[1])
    for name, fw in (("t", TORCH), ("p", PADDLE)):
        path = write_spec(PAIR.format(**fw, **sizes), f"pool_{name}.py")
        result = cli("export", f"{path}:spec", "-o", tmp_path / f"{name}.onnx")
        assert result.exit_code == 0, result.output  # the export's eager check passed
    report = tmp_path / "report.json"
    result = cli("verify", tmp_path / "t.onnx", tmp_path / "p.onnx", "--grads", "--steps", "3",
                 "--tol", "1e-6", "--json", report)
    assert result.exit_code == 0, result.stdout
    assert json.loads(report.read_text())["passed"]


@pytest.mark.parametrize("pool, shape", [("AdaptiveMaxPool2D((3, 3))", [2, 1, 5, 5]),
                                         ("AdaptiveMaxPool2D((2, 4))", [2, 1, 5, 6]),
                                         ("AdaptiveMaxPool1D(3)", [2, 1, 7])])
def test_adaptive_max_pool_with_uneven_windows_trains_as_paddle(write_spec, tmp_path, pool, shape):
    """paddle2onnx's plain pool has the wrong windows where the output size does not divide
    the input size: the windows' maxima are taken before conversion."""
    path = write_spec(f"""
        import paddle
        import lossgraph as lg

        class Net(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.pool = paddle.nn.{pool}
                self.w = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(2.0))

            def forward(self, x):
                return self.pool(x * self.w)

        def spec():
            return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(),
                           inputs={{"x": lg.Input({shape})}})
    """)
    out = tmp_path / "m.onnx"
    lg.export(f"{path}:spec", out)  # the eager check compares Paddle's own pool
    assert "MaxPool" not in {n.op_type for n in onnx.load(out).graph.node}


def _zero_stride_graph(path):
    node = helper.make_node("AveragePool", ["x"], ["loss"], name="pool", kernel_shape=[2, 2],
                            strides=[0, 0])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = GraphMeta(framework="torch", losses=["loss"], inputs={"x": Input([1, 1, 2, 2])}, params={})
    helper.set_model_props(model, {META_KEY: meta.to_json()})
    onnx.save(model, str(path))
    return model


def test_a_zero_stride_never_reaches_native_shape_inference(cli, tmp_path):
    model = _zero_stride_graph(tmp_path / "bad.onnx")
    assert "x" in infer_types(model)  # best effort, and the process lives
    result = cli("verify", tmp_path / "bad.onnx", tmp_path / "bad.onnx")
    assert result.exit_code == 2
    assert "not a valid ONNX graph: AveragePool 'pool' strides [0, 0]" in result.stderr


def test_torch_adaptive_max_pool_gives_a_tie_to_one_element(write_spec, tmp_path):
    """torch's adaptive max pool, exported as maxima of its windows, passes a tied maximum's
    gradient to one element, as torch's own backward does (amax would split it)."""
    from test_autodiff_graphs import assert_close, ort_gradients, torch_autograd

    from lossgraph.graph import LossGraph
    from lossgraph.spec import load_spec

    path = write_spec("""
        import torch
        import lossgraph as lg

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.tensor([[[[1.0, 1.0, 0.5, 2.0, 2.0], [2.0, 0.0, 1.0, 2.0, 2.0]]]]))
                self.pool = torch.nn.AdaptiveMaxPool2d((1, 2))

            def forward(self, x):
                return self.pool(self.w) + 0.0 * x.sum()

        def spec():
            return lg.Spec(model=Net(), loss=lambda m, x: (m(x) * torch.tensor([1.0, 3.0])).sum(),
                           inputs={"x": lg.Input([1])})
    """, "ties.py")
    out = tmp_path / "ties.onnx"
    lg.export(f"{path}:spec", out)
    spec, graph = load_spec(f"{path}:spec"), LossGraph.load(out)
    inputs, ours = ort_gradients(spec, graph)
    theirs = torch_autograd(spec, inputs, graph.meta.losses)
    assert_close(ours, theirs, "adaptive max pool ties")
    assert np.count_nonzero(ours["loss"]["w"]) == 2
