"""The Paddle exporter: faithful to eager Paddle, parameters back as named initializers."""

import numpy as np
import onnx
import paddle
import pytest
from conftest import DISCOGAN, LOSSES, eager_and_ort, one_line_error
from losses_paddle import SPECS

import lossgraph as lg
from lossgraph.graph import STOP_GRADIENT_KEY, TAP_KEY, LossGraph, node_meta
from lossgraph.spec import load_spec


def paddle_eager(spec, inputs):
    with paddle.no_grad():
        out = spec.loss(spec.model, **{k: paddle.to_tensor(v) for k, v in inputs.items()})
    out = {"loss": out} if isinstance(out, paddle.Tensor) else out
    return {k: float(v) for k, v in out.items()}


def test_discogan_ort_equals_paddle_eager():
    graph, eager, ort = eager_and_ort(f"{DISCOGAN}/discogan_paddle.py", paddle_eager)
    assert list(ort) == ["gen_loss", "dis_loss"]
    for name in ort:
        assert abs(ort[name] - eager[name]) <= 1e-6, (name, ort[name], eager[name])


@pytest.mark.parametrize("name", SPECS)
def test_loss_example_ort_equals_paddle_eager(name):
    graph, eager, ort = eager_and_ort(f"{LOSSES}/losses_paddle.py:{name}", paddle_eager)
    assert set(ort) == set(eager)
    for loss in ort:
        assert abs(ort[loss] - eager[loss]) <= 1e-6, (loss, ort[loss], eager[loss])


def test_parameters_become_initializers_named_by_state_dict_keys(exported):
    graph = LossGraph.load(exported(f"{DISCOGAN}/discogan_paddle.py"))
    meta = graph.meta
    assert meta.framework == "paddle" and meta.versions["paddle2onnx"] == "2.1.0"
    inits = {t.name for t in graph.model.graph.initializer}
    assert set(meta.params) <= inits and len(meta.params) == 98
    assert not [n for n in graph.model.graph.node if n.op_type == "Constant"
                and n.output[0].split("_")[0] in ("conv2d", "batch")]
    conv = meta.params["discriminator_A.conv1.weight"]
    assert conv.layer_type == "Conv2D" and conv.trainable and conv.framework_name.startswith("conv2d_")
    stats = meta.params["generator_A.main.3._mean"]
    assert stats.kind == "buffer" and not stats.trainable and stats.layer_type == "BatchNorm2D"
    # Identity noise is gone: what remains are module-output taps
    identities = [n for n in graph.model.graph.node if n.op_type == "Identity"]
    assert identities and all(node_meta(n, TAP_KEY) for n in identities)
    assert {node_meta(n, TAP_KEY) for n in identities} >= {"generator_A.main.3#0", "generator_A.main.3#1",
                                                         "discriminator_B#1.1.2"}
    # optimizers: Paddle's own spelling, BatchNorm statistics left out
    dis = meta.optimizers["dis"]
    assert dis.cls == "Adam" and dis.framework == "paddle"
    group = dis.groups[0]
    assert group["beta1"] == 0.5 and group["beta2"] == 0.999 and group["learning_rate"] == 2e-4
    assert group["weight_decay"] == {"L2Decay": 1e-5}
    assert len(dis.params) == 22 and not any(p.endswith("_mean") for p in dis.params)


def test_equal_valued_parameters_stay_apart(exported):
    """Every BatchNorm scale starts as ones: they must still be separate initializers, each
    feeding its own layer."""
    graph = LossGraph.load(exported(f"{DISCOGAN}/discogan_paddle.py"))
    scales = [n for n in graph.meta.params if n.endswith("bn2.weight") or n.endswith("bn3.weight")]
    values = graph.initializers()
    assert len(scales) == 4 and all(np.all(values[n] == 1.0) for n in scales)
    consumers = {n: [node.name for node in graph.model.graph.node if n in node.input] for n in scales}
    assert all(len(c) >= 1 for c in consumers.values())
    assert len({tuple(c) for c in consumers.values()}) == 4


def test_detach_is_kept_as_stop_gradient(exported):
    graph = LossGraph.load(exported(f"{LOSSES}/losses_paddle.py:gan"))
    marked = [n for n in graph.model.graph.node if node_meta(n, STOP_GRADIENT_KEY) == "1"]
    assert len(marked) == 1 and marked[0].op_type == "Identity"


SOFTPLUS = """
import paddle
import paddle.nn.functional as F
import lossgraph as lg

class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, 3)

def loss(model, x):
    h = model.fc(x) * 10.0
    return {"default": F.softplus(h).mean(), "beta": F.softplus(h, beta=2.0, threshold=5.0).mean(),
            "layer": paddle.nn.Softplus()(h).sum()}

def spec():
    paddle.seed(1)
    return lg.Spec(model=Net(), loss=loss, inputs={"x": lg.Input([4, 3])})

def nll():
    def nll_loss(model, x, y):
        log_p = F.log_softmax(model.fc(x), axis=1)
        return {"mean": F.nll_loss(log_p, y), "ignored": F.nll_loss(log_p, y, ignore_index=1),
                "layer": paddle.nn.NLLLoss(reduction="sum")(log_p, y)}
    return lg.Spec(model=Net(), loss=nll_loss,
                   inputs={"x": lg.Input([5, 3]), "y": lg.Input([5], dtype="int64", high=3)})

def unsupported():
    return lg.Spec(model=Net(), loss=lambda model, x: paddle.lgamma(model.fc(x).abs() + 1).mean(),
                   inputs={"x": lg.Input([4, 3])})
"""


def test_conversion_gaps_are_decomposed(write_spec):
    """softplus (any beta/threshold) and nll_loss export although paddle2onnx rejects them."""
    path = write_spec(SOFTPLUS, "gaps.py")
    for name in ("spec", "nll"):
        graph, eager, ort = eager_and_ort(f"{path}:{name}", paddle_eager)
        for loss in ort:
            assert abs(ort[loss] - eager[loss]) <= 1e-6 * max(1.0, abs(eager[loss])), loss
    assert "Softplus" not in graph.op_histogram()


def test_unsupported_ops_are_named(cli, write_spec, tmp_path):
    path = write_spec(SOFTPLUS, "gaps.py")
    line = one_line_error(cli("export", f"{path}:unsupported", "-o", tmp_path / "x.onnx"))
    assert "pd_op.lgamma" in line and "paddle2onnx cannot convert" in line


def test_an_empty_conversion_is_detected(monkeypatch, write_spec, tmp_path):
    """paddle2onnx can log a failure and leave an empty file: that is an ExportError."""
    from lossgraph.exporters import paddle as exporter

    real_run = exporter.subprocess.run

    def empty_run(cmd, **kwargs):
        result = real_run([cmd[0], "-c", "import sys; open(sys.argv[1], 'wb').close()", cmd[-2]],
                          **kwargs)
        return result

    monkeypatch.setattr(exporter.subprocess, "run", empty_run)
    path = write_spec(SOFTPLUS, "gaps.py")
    with pytest.raises(lg.ExportError, match="paddle2onnx"):
        lg.export(f"{path}:spec")


def test_export_keeps_the_model_untouched():
    spec = load_spec(f"{LOSSES}/losses_paddle.py:mse")
    before = {k: v.numpy().copy() for k, v in spec.model.state_dict().items()}
    lg.export(spec)
    for key, value in spec.model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])


def test_onnx_is_valid(exported):
    onnx.checker.check_model(onnx.load(str(exported(f"{LOSSES}/losses_paddle.py:bce"))))
