"""Custom backward passes: a torch ``autograd.Function`` or Paddle ``PyLayer`` with a backward
of its own is carried into the graph and trains as its framework trains it (``--native``: ONNX
Runtime against eager autograd); a port that drops one is found in the backward phase, with a
hint naming it; a backward that cannot be traced, and tensor or module hooks, are refused at
export in one line naming them; activation checkpointing exports as its forward."""

from __future__ import annotations

import json

import pytest
from conftest import one_line_error, write_spec_files

TORCH = """
import torch
import lossgraph as lg


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.alpha * g, None


class StraightThrough(torch.autograd.Function):
    '''sign(x) forward, the gradient passed where |x| <= 1 (a binarized network's STE).'''

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class Scaled(torch.autograd.Function):
    '''x * w with the weight's gradient doubled: a backward that reads two saved tensors.'''

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, 2.0 * (g * x).sum(0)


class Net(torch.nn.Module):
    def __init__(self, reverse=True):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.gain = torch.nn.Parameter(torch.linspace(0.5, 1.5, 3))
        self.head = torch.nn.Linear(3, 1)
        self.reverse = reverse

    def forward(self, x):
        h = self.fc(x)
        if self.reverse:
            h = GradReverse.apply(h, 0.5)
        h = Scaled.apply(h, self.gain)
        return self.head(StraightThrough.apply(h) + torch.tanh(h))


def _spec(model, loss=lambda model, x: model(x).pow(2).mean()):
    return lg.Spec(model=model, loss=loss, inputs={"x": lg.Input([6, 4])},
                   optimizers={"sgd": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)})


def spec():
    torch.manual_seed(0)
    return _spec(Net())


def no_reversal():
    torch.manual_seed(0)
    return _spec(Net(reverse=False))


class Untraceable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return torch.from_numpy(g.detach().numpy() * 3)


class TwoOutputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2, x * 3

    @staticmethod
    def backward(ctx, g1, g2):
        return g1 + g2


def untraceable():
    return _spec(torch.nn.Linear(4, 3), lambda model, x: Untraceable.apply(model(x)).pow(2).mean())


def two_outputs():
    def loss(model, x):
        a, b = TwoOutputs.apply(model(x))
        return (a * b).mean()
    return _spec(torch.nn.Linear(4, 3), loss)


def parameter_hook():
    model = torch.nn.Linear(4, 3)
    model.weight.register_hook(lambda g: g * 0.5)
    return _spec(model)


def halve(grad):
    return grad * 0.5


def tensor_hook():
    def loss(model, x):
        h = model(x)
        h.register_hook(halve)
        return h.pow(2).mean()
    return _spec(torch.nn.Linear(4, 3), loss)


def module_hook():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    model[0].register_full_backward_hook(lambda m, gi, go: None)
    return _spec(model)


def checkpointed():
    from torch.utils.checkpoint import checkpoint
    loss = lambda model, x: checkpoint(model, x, use_reentrant=True).pow(2).mean()
    return _spec(torch.nn.Linear(4, 3), loss)
"""

PADDLE = """
import paddle
import lossgraph as lg


class GradReverse(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        return -ctx.alpha * g


class StraightThrough(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return paddle.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensor()
        return g * (x.abs() <= 1).astype(g.dtype)


class Scaled(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensor()
        return g * w, 2.0 * (g * x).sum(0)


class Net(paddle.nn.Layer):
    def __init__(self, reverse=True):
        super().__init__()
        self.fc = paddle.nn.Linear(4, 3)
        self.gain = self.create_parameter([3])
        self.head = paddle.nn.Linear(3, 1)
        self.reverse = reverse

    def forward(self, x):
        h = self.fc(x)
        if self.reverse:
            h = GradReverse.apply(h, 0.5)
        h = Scaled.apply(h, self.gain)
        return self.head(StraightThrough.apply(h) + paddle.tanh(h))


def _spec(model):
    return lg.Spec(model=model, loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([6, 4])},
                   optimizers={"sgd": paddle.optimizer.Momentum(
                       learning_rate=0.1, momentum=0.9, parameters=model.parameters())})


def spec():
    return _spec(Net())


def no_reversal():
    return _spec(Net(reverse=False))


class Untraceable(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return paddle.to_tensor(g.numpy() * 3)


def untraceable():
    return lg.Spec(model=paddle.nn.Linear(4, 3),
                   loss=lambda model, x: Untraceable.apply(model(x)).pow(2).mean(),
                   inputs={"x": lg.Input([6, 4])})
"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return write_spec_files(tmp_path_factory, "custom_backward", {"torch_spec": TORCH, "paddle_spec": PADDLE})


@pytest.fixture(scope="module")
def graphs(specs, tmp_path_factory):
    """The carried pairs, exported once: torch and Paddle, each with and without the reversal."""
    from click.testing import CliRunner

    from lossgraph.cli import main

    out = tmp_path_factory.mktemp("custom_backward_graphs")
    made = {}
    for side in ("torch", "paddle"):
        for name in ("spec", "no_reversal"):
            path = out / f"{side}_{name}.onnx"
            result = CliRunner().invoke(main, ["export", f"{specs[side + '_spec']}:{name}", "-o", str(path)])
            assert result.exit_code == 0, result.output
            made[side, name] = path
    return made


def test_carried_backward_trains_like_both_frameworks(cli, graphs, tmp_path):
    """--native: each side's ONNX Runtime training (gradients through the carried backward,
    SGD with momentum) against its framework's eager autograd; and torch against Paddle."""
    report = tmp_path / "r.json"
    result = cli("verify", graphs["torch", "spec"], graphs["paddle", "spec"], "--grads",
                 "--steps", "3", "--native", "--json", report)
    assert result.exit_code == 0, result.stdout
    data = json.loads(report.read_text())
    for side in ("reference", "candidate"):
        assert data["native"][side], data["native"]
        steps = data["native"][side]
        assert len(steps) == 3
        assert all(step["parameters"]["max_abs_diff"] < 1e-5 for step in steps), (side, steps)


def test_the_carried_backward_is_the_users_not_the_forwards_derivative(cli, graphs, tmp_path):
    """Reversed against not reversed: the gradients differ (before the carry the two graphs
    were identical and this passed)."""
    result = cli("verify", graphs["torch", "spec"], graphs["torch", "no_reversal"], "--grads")
    assert result.exit_code == 1, result.stdout


@pytest.mark.parametrize("ref, cand", [
    (("torch", "spec"), ("paddle", "no_reversal")),
    (("torch", "no_reversal"), ("paddle", "spec")),
])
def test_a_dropped_custom_backward_is_found_with_its_name(cli, graphs, tmp_path, ref, cand):
    report = tmp_path / "r.json"
    result = cli("verify", graphs[ref], graphs[cand], "--grads", "--json", report)
    assert result.exit_code == 1, result.stdout
    divergence = json.loads(report.read_text())["first_divergence"]
    assert divergence["phase"] == "backward"
    assert divergence["scope"] == "fc"
    assert "GradReverse" in divergence["hint"] and "custom backward" in divergence["hint"]


def test_a_custom_backward_node_carries_its_label_and_function(graphs):
    import onnx

    from lossgraph.autodiff.custom_vjp import CustomVjp

    for side in ("torch", "paddle"):
        model = onnx.load(graphs[side, "spec"])
        labels = [vjp.label for n in model.graph.node if (vjp := CustomVjp.of(n))]
        assert [label.split()[1] for label in labels] == ["GradReverse", "Scaled", "StraightThrough"]
        assert all(f"{side}_spec.py:" in label for label in labels)
        assert len(model.functions) == 3


@pytest.mark.parametrize("side, name, named", [
    ("torch", "untraceable", "torch.autograd.Function Untraceable at torch_spec.py:"),
    ("torch", "two_outputs", "torch.autograd.Function TwoOutputs at torch_spec.py:"),
    ("paddle", "untraceable", "paddle.autograd.PyLayer Untraceable at paddle_spec.py:"),
])
def test_a_backward_that_cannot_be_carried_is_refused_by_name(cli, specs, tmp_path, side, name, named):
    result = cli("export", f"{specs[side + '_spec']}:{name}", "-o", tmp_path / "out.onnx")
    assert named in one_line_error(result)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("name, named", [
    ("parameter_hook", "a gradient hook (register_hook) on parameter weight"),
    ("tensor_hook", "a tensor hook (Tensor.register_hook) calling halve"),
    ("module_hook", "a backward hook on module 0"),
])
def test_hooks_are_refused_by_name(cli, specs, tmp_path, name, named):
    result = cli("export", f"{specs['torch_spec']}:{name}", "-o", tmp_path / "out.onnx")
    message = one_line_error(result)
    assert "custom backward" in message and named in message
    assert not (tmp_path / "out.onnx").exists()


def test_checkpointing_differentiates_its_own_forward_and_exports(cli, specs, tmp_path):
    result = cli("export", f"{specs['torch_spec']}:checkpointed", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.stdout + result.stderr
