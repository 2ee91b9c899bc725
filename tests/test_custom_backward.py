"""A custom backward (autograd.Function, PyLayer, tensor and module hooks) is never silent: the
export refuses it with one line naming it; a Function whose backward differentiates its own
forward (activation checkpointing) exports."""

from __future__ import annotations

import pytest
from conftest import one_line_error

TORCH = """
import torch
import lossgraph as lg


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.head(GradReverse.apply(self.fc(x)))


def _spec(model, loss=lambda model, x: model(x).pow(2).mean()):
    return lg.Spec(model=model, loss=loss, inputs={"x": lg.Input([5, 4])})


def reversal():
    torch.manual_seed(0)
    return _spec(Net())


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
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        return -g


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(4, 3)
        self.head = paddle.nn.Linear(3, 1)

    def forward(self, x):
        return self.head(GradReverse.apply(self.fc(x)))


def spec():
    return lg.Spec(model=Net(), loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([5, 4])})
"""


@pytest.mark.parametrize("name, named", [
    ("reversal", "torch.autograd.Function GradReverse at torch_spec.py:"),
    ("parameter_hook", "a gradient hook (register_hook) on parameter weight"),
    ("tensor_hook", "a tensor hook (Tensor.register_hook) calling halve"),
    ("module_hook", "a backward hook on module 0"),
])
def test_custom_backward_is_refused_by_name(cli, write_spec, tmp_path, name, named):
    path = write_spec(TORCH, "torch_spec.py")
    result = cli("export", f"{path}:{name}", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    message = one_line_error(result)
    assert "custom backward" in message and named in message
    assert not (tmp_path / "out.onnx").exists()


def test_checkpointing_differentiates_its_own_forward_and_exports(cli, write_spec, tmp_path):
    path = write_spec(TORCH, "torch_spec.py")
    result = cli("export", f"{path}:checkpointed", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_a_paddle_pylayer_is_refused_by_name(cli, write_spec, tmp_path):
    path = write_spec(PADDLE, "paddle_spec.py")
    result = cli("export", path, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    assert "paddle.autograd.PyLayer GradReverse at paddle_spec.py:" in one_line_error(result)
