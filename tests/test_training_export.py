"""Training-mode export: BatchNorm with batch statistics and running-stat updates as graph
outputs, dropout masks as graph inputs, each in its framework's convention; module taps."""

import numpy as np
import pytest

import lossgraph as lg
from lossgraph.graph import TAP_KEY, node_meta
from lossgraph.inputs import dropout_feeds, make_inputs
from lossgraph.runtime.session import OrtRunner

TORCH = """
import torch, torch.nn as nn, torch.nn.functional as F
import lossgraph as lg

class Net(nn.Module):
    def __init__(self, momentum=0.1):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3, momentum=momentum)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x))))
        h = self.bn(h)  # a layer used twice: its running statistics are updated twice
        return self.fc(F.dropout2d(h, 0.2, training=self.training).flatten(1))

def loss(model, x, y):
    return {"mse": F.mse_loss(model(x), y)}

INPUTS = {"x": lg.Input([4, 2, 4, 4]), "y": lg.Input([4, 2])}

def spec():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=loss, inputs=INPUTS, train=True)

def cumulative():
    torch.manual_seed(0)
    return lg.Spec(model=Net(momentum=None), loss=loss, inputs=INPUTS, train=True)

def evaluation():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=loss, inputs=INPUTS)
"""

PADDLE = """
import paddle, paddle.nn as nn, paddle.nn.functional as F
import lossgraph as lg

class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2D(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x))))
        h = self.bn(h)
        return self.fc(F.dropout(h, 0.2, axis=[0, 1], training=self.training).flatten(1))

def loss(model, x, y):
    return {"mse": F.mse_loss(model(x), y)}

def spec():
    paddle.seed(0)
    return lg.Spec(model=Net(), loss=loss, inputs={"x": lg.Input([4, 2, 4, 4]), "y": lg.Input([4, 2])},
                   train=True)
"""


def _bn_reference(x, conv_w, conv_b, momentum_new, unbiased):
    """Running statistics after one BatchNorm call on conv(x), computed with numpy."""
    import torch

    h = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(conv_w),
                                   torch.from_numpy(conv_b), padding=1).numpy().astype(np.float64)
    mean = h.mean((0, 2, 3))
    var = h.var((0, 2, 3), ddof=1 if unbiased else 0)
    return momentum_new * mean, (1 - momentum_new) * 1.0 + momentum_new * var


@pytest.mark.parametrize("name", ["spec", "cumulative"])
def test_torch_training_export(write_spec, name):
    graph = lg.export(f"{write_spec(TORCH, 'train_torch.py')}:{name}")
    meta = graph.meta
    assert meta.train
    assert list(meta.state_outputs.values()) == ["bn.running_mean", "bn.running_var",
                                                 "bn.num_batches_tracked"]
    assert [d["shape"] for d in meta.dropout] == [[4, 3, 4, 4], [4, 3, 1, 1]]
    assert meta.dropout[0]["scale"] == pytest.approx(1 / 0.7)
    assert [i.name for i in graph.model.graph.input][-2:] == ["dropout:0", "dropout:1"]
    # the export checked losses and buffers against torch eager; check one update by hand too
    inputs = make_inputs(meta.inputs, 0)
    feeds = {**inputs, **dropout_feeds(meta.dropout, 0, 0)}
    out = OrtRunner(graph.model).run(feeds)
    assert int(out["state:bn.num_batches_tracked"]) == 2  # two calls in one forward
    values = graph.param_values()
    if name == "spec":
        mean, var = _bn_reference(inputs["x"], values["conv.weight"], values["conv.bias"], 0.1, True)
        first_mean = out["state:bn.running_mean"]  # after the second call: chained
        assert not np.allclose(first_mean, mean, atol=1e-6)  # the second call moved it again


def test_torch_eval_export_has_no_training_io(write_spec):
    graph = lg.export(f"{write_spec(TORCH, 'train_torch.py')}:evaluation")
    assert graph.meta.state_outputs == {} and graph.meta.dropout == []
    assert [i.name for i in graph.model.graph.input] == ["x", "y"]


def test_paddle_training_export(write_spec):
    graph = lg.export(str(write_spec(PADDLE, "train_paddle.py")))
    meta = graph.meta
    assert list(meta.state_outputs.values()) == ["bn._mean", "bn._variance"]
    assert [d["shape"] for d in meta.dropout] == [[4, 3, 4, 4], [4, 3, 1, 1]]
    assert [i.name for i in graph.model.graph.input][-2:] == ["dropout:0", "dropout:1"]


def test_masks_are_seeded_and_framework_scaled():
    calls = [{"p": 0.25, "scale": 4 / 3, "shape": [100, 100]}]
    a = dropout_feeds(calls, 3, 1)["dropout:0"]
    assert np.array_equal(a, dropout_feeds(calls, 3, 1)["dropout:0"])
    assert not np.array_equal(a, dropout_feeds(calls, 3, 2)["dropout:0"])
    assert set(np.unique(a)) == {0.0, np.float32(4 / 3)}
    assert 0.22 < (a == 0).mean() < 0.28


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_module_outputs_are_tapped(exported, framework):
    from conftest import DISCOGAN

    from lossgraph.graph import LossGraph

    graph = LossGraph.load(exported(f"{DISCOGAN}/discogan_{framework}.py"))
    taps = {node_meta(n, TAP_KEY) for n in graph.model.graph.node if node_meta(n, TAP_KEY)}
    assert {"generator_A#0", "generator_A#1", "generator_B.main.0#0", "discriminator_A.conv3#1",
            "discriminator_B#0.0", "discriminator_B#0.1.2"} <= taps


def test_the_export_summary_counts_buffers_apart_from_frozen_parameters(write_spec, cli, tmp_path):
    """BatchNorm's running statistics in training mode are buffers the training updates, not
    "buffers, frozen" as the summary said."""
    out = cli("export", f"{write_spec(PADDLE, 'train_paddle.py')}:spec", "-o", tmp_path / "p.onnx").stdout
    line = next(line for line in out.splitlines() if line.startswith("parameters:"))
    assert "2 buffer(s) (updated in training mode), 0 frozen parameter(s)" in line, line
