"""The tie matrix: lossgraph's gradient at exact ties and kinks, on graphs exported from each
framework, equals that framework's own autograd.

Every case holds parameters at the values where the op is not differentiable (0 for relu, the
bounds of relu6/hardtanh/clamp, +-3 for hardswish, equal pairs for maximum, equal values in a
pooling window or a reduction), exports ``sum(w * op(p, q))``, and compares lossgraph's
d/dp, d/dq (ONNX autodiff on ONNX Runtime) with ``loss.backward()`` in the framework itself.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import lossgraph as lg
from lossgraph.graph import LossGraph
from lossgraph.inputs import make_inputs
from lossgraph.spec import load_spec
from lossgraph.verify.pipeline import loss_gradients

#: Values at every kink the ops below have: 0, +-1, +-3, 6, and some in between and beyond.
P = [[-4.0, -3.0, -1.0, 0.0, 0.0, 0.5], [1.0, 2.0, 3.0, 6.0, 7.0, -0.5]]
#: Equal to P at half of the positions (ties for maximum/minimum and tensor bounds).
Q = [[-4.0, -2.0, -1.0, 0.0, 1.0, 0.5], [0.0, 2.0, 4.0, 6.0, 7.0, -1.0]]
#: For pooling and reductions: equal values in windows and along rows.
R = [[1.0, 1.0, 0.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, -1.0, -1.0, 0.5]]
#: For topk: ties inside the top k and below it, none across the k-th place, summed over the k
#: (the order of tied values in topk's output is the kernel's). Where equal values straddle the
#: k-th place, ONNX Runtime's TopK keeps the lowest indices and torch's and Paddle's CPU kernels
#: others: both sides of a comparison run on ONNX Runtime and agree; only ``--native`` sees it.
S = [[2.0, 2.0, 1.0, 1.0, 0.0, 0.0], [3.0, 3.0, -1.0, -1.0, 0.5, 0.5]]

TORCH = """
import torch
import torch.nn.functional as F
import lossgraph as lg


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor({p}))
        self.q = torch.nn.Parameter(torch.tensor({q}))

    def forward(self):
        p, q = self.p, self.q
        return {expr}


def spec():
    return lg.Spec(model=Net(), loss=lambda model, w: (w * model()).sum(),
                   inputs={{"w": lg.Input({shape})}})
"""

PADDLE = """
import numpy as np
import paddle
import paddle.nn.functional as F
import lossgraph as lg


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        assign = paddle.nn.initializer.Assign
        self.p = self.create_parameter([2, 6], default_initializer=assign(np.array({p}, "float32")))
        self.q = self.create_parameter([2, 6], default_initializer=assign(np.array({q}, "float32")))

    def forward(self):
        p, q = self.p, self.q
        return {expr}


def spec():
    return lg.Spec(model=Net(), loss=lambda model, w: (w * model()).sum(),
                   inputs={{"w": lg.Input({shape})}})
"""

FULL = [2, 6]
TORCH_CASES = {
    "relu": ("torch.relu(p)", P, FULL),
    "relu6": ("F.relu6(p)", P, FULL),
    "nn.ReLU6": ("torch.nn.ReLU6()(p)", P, FULL),
    "hardtanh": ("F.hardtanh(p)", P, FULL),
    "hardtanh(-3,6)": ("F.hardtanh(p, -3.0, 6.0)", P, FULL),
    "clamp": ("torch.clamp(p, -1.0, 3.0)", P, FULL),
    "clamp(min)": ("torch.clamp(p, min=0.0)", P, FULL),
    "clamp(tensor)": ("torch.clamp(p, min=q)", P, FULL),
    "clamp(tensor,max)": ("torch.clamp(p, max=q)", P, FULL),
    "maximum": ("torch.maximum(p, q)", P, FULL),
    "minimum": ("torch.minimum(p, q)", P, FULL),
    "maximum(zeros)": ("torch.maximum(p, torch.zeros_like(p))", P, FULL),
    "abs": ("torch.abs(p)", P, FULL),
    "leaky_relu": ("F.leaky_relu(p, 0.1)", P, FULL),
    "hardswish": ("F.hardswish(p)", P, FULL),
    "hardsigmoid": ("F.hardsigmoid(p)", P, FULL),
    "elu": ("F.elu(p, 0.7)", P, FULL),
    "max_pool": ("F.max_pool2d(p.reshape(1, 1, 2, 6), 2, 2).reshape(-1)", R, [3]),
    "max_pool(overlapping)": ("F.max_pool2d(p.reshape(1, 1, 2, 6), (2, 3), (1, 1)).reshape(-1)", R, [4]),
    "amax": ("p.amax(1)", R, [2]),
    "max(dim)": ("p.max(1).values", R, [2]),
    "min(dim)": ("p.min(1).values", R, [2]),
    "topk": ("p.topk(2, dim=1).values.sum(1)", S, [2]),
}

PADDLE_CASES = {
    "relu": ("F.relu(p)", P, FULL),
    "relu6": ("F.relu6(p)", P, FULL),
    "hardtanh": ("F.hardtanh(p)", P, FULL),
    "hardtanh(-3,6)": ("F.hardtanh(p, -3.0, 6.0)", P, FULL),
    "clip": ("paddle.clip(p, -1.0, 3.0)", P, FULL),
    "clip(min)": ("paddle.clip(p, min=0.0)", P, FULL),
    "maximum": ("paddle.maximum(p, q)", P, FULL),
    "minimum": ("paddle.minimum(p, q)", P, FULL),
    "abs": ("paddle.abs(p)", P, FULL),
    "leaky_relu": ("F.leaky_relu(p, 0.1)", P, FULL),
    "hardswish": ("F.hardswish(p)", P, FULL),
    "hardsigmoid": ("F.hardsigmoid(p)", P, FULL),
    "elu": ("F.elu(p, 0.7)", P, FULL),
    "max_pool": ("F.max_pool2d(p.reshape([1, 1, 2, 6]), 2, 2).reshape([-1])", R, [3]),
    "max(axis)": ("paddle.max(p, axis=1)", R, [2]),
    "min(axis)": ("paddle.min(p, axis=1)", R, [2]),
    "topk": ("paddle.topk(p, 2, axis=1)[0].sum(1)", S, [2]),
}


def _write(tmp_path, template: str, expr: str, p, shape) -> str:
    path = tmp_path / "tie_spec.py"
    path.write_text(textwrap.dedent(template.format(p=p, q=Q, expr=expr, shape=shape)))
    return str(path)


def _lossgraph_grads(target: str, out) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    lg.export(target, out)
    graph = LossGraph.load(out)
    inputs = make_inputs(graph.meta.inputs, 0)
    grads = loss_gradients(graph, "loss", graph.trainable_params(), inputs, graph.param_values(),
                           "cpu", "reference")
    return grads, inputs


def _assert_same(ours: dict[str, np.ndarray], eager: dict[str, np.ndarray]) -> None:
    assert set(ours) <= set(eager)
    for name, value in eager.items():  # a parameter the graph does not use has no gradient
        got = ours.get(name, np.zeros_like(value))
        np.testing.assert_allclose(got, value, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_ties(case, tmp_path):
    import torch

    expr, p, shape = TORCH_CASES[case]
    target = _write(tmp_path, TORCH, expr, p, shape)
    ours, inputs = _lossgraph_grads(target, tmp_path / "t.onnx")
    spec = load_spec(target)
    spec.model.zero_grad()
    spec.loss(spec.model, w=torch.from_numpy(inputs["w"])).backward()
    eager = {n: t.grad.numpy() if t.grad is not None else np.zeros(tuple(t.shape), np.float32)
             for n, t in spec.model.named_parameters()}
    _assert_same(ours, eager)


@pytest.mark.parametrize("case", PADDLE_CASES)
def test_paddle_ties(case, tmp_path):
    import paddle

    expr, p, shape = PADDLE_CASES[case]
    target = _write(tmp_path, PADDLE, expr, p, shape)
    ours, inputs = _lossgraph_grads(target, tmp_path / "p.onnx")
    spec = load_spec(target)
    spec.loss(spec.model, w=paddle.to_tensor(inputs["w"])).backward()
    eager = {n: t.grad.numpy() if t.grad is not None else np.zeros(t.shape, np.float32)
             for n, t in spec.model.named_parameters()}
    _assert_same(ours, eager)
