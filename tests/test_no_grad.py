"""Gradient switches inside forward: ``torch.no_grad()`` / ``paddle.no_grad()`` blocks, their
decorator and ``set_grad_enabled`` forms, ``enable_grad`` inside them, and Paddle's
``stop_gradient = True`` on a computed value. Both exporters used to lose them (torch.export
inlines the no_grad block, a Paddle marker on a non-Identity value was dropped), so a value
computed without gradient let one through: a correct port trained unlike either framework and a
port that dropped the block passed. Ground truth is each framework's own eager training
(``--native``)."""

import pytest

import lossgraph as lg
from lossgraph.cli import native_runner

TORCH = '''
    import torch
    import lossgraph as lg

    @torch.no_grad()
    def scale_of(h):
        return h.abs().mean() + 1.0

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
{body}
            return h / scale

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input([4, 3])}},
                       optimizers={{"sgd": torch.optim.SGD(m.parameters(), lr=0.5)}})
'''

PADDLE = '''
    import paddle
    import lossgraph as lg

    @paddle.no_grad()
    def scale_of(h):
        return h.abs().mean() + 1.0

    class M(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
{body}
            return h / scale

    def spec():
        paddle.seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input([4, 3])}},
                       optimizers={{"sgd": paddle.optimizer.SGD(parameters=m.parameters(),
                                                                learning_rate=0.5)}})
'''

#: variant -> (body lines per framework, whether the scale is cut off from the gradient)
VARIANTS = {
    "plain": ({"torch": "scale = h.abs().mean() + 1.0", "paddle": "scale = h.abs().mean() + 1.0"}, False),
    "no_grad": ({
        "torch": "with torch.no_grad():\n    scale = h.abs().mean() + 1.0",
        "paddle": "with paddle.no_grad():\n    scale = h.abs().mean() + 1.0",
    }, True),
    "set_grad_enabled": ({
        "torch": "with torch.set_grad_enabled(False):\n    scale = h.abs().mean() + 1.0",
        "paddle": "with paddle.set_grad_enabled(False):\n    scale = h.abs().mean() + 1.0",
    }, True),
    "decorated": ({"torch": "scale = scale_of(h)", "paddle": "scale = scale_of(h)"}, True),
    "enable_grad_inside": ({
        "torch": "with torch.no_grad():\n    with torch.enable_grad():\n        scale = h.abs().mean() + 1.0",
        "paddle": "with paddle.no_grad():\n    with paddle.enable_grad():\n        scale = h.abs().mean() + 1.0",
    }, False),
    # a parameter read under no_grad: its gradient comes from the layer's own use only
    "parameter": ({
        "torch": "with torch.no_grad():\n    scale = self.fc.weight.abs().mean() + h.abs().mean()",
        "paddle": "with paddle.no_grad():\n    scale = self.fc.weight.abs().mean() + h.abs().mean()",
    }, True),
    # Paddle's own flag on a computed (non-Identity) value
    "stop_gradient": ({"paddle": "scale = h.abs().mean() + 1.0\nscale.stop_gradient = True"}, True),
}


def _source(framework: str, variant: str) -> str:
    body = VARIANTS[variant][0][framework]
    indented = "\n".join(" " * 12 + line for line in body.splitlines())
    return (TORCH if framework == "torch" else PADDLE).format(body=indented)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_grad")
    cache = {}

    def export(framework: str, variant: str):
        key = (framework, variant)
        if key not in cache:
            path = folder / f"{variant}_{framework}.py"
            path.write_text(__import__("textwrap").dedent(_source(framework, variant)))
            cache[key] = folder / f"{variant}_{framework}.onnx"
            lg.export(f"{path}:spec", cache[key])
        return cache[key]

    return export


CASES = [(f, v) for v, (bodies, _) in VARIANTS.items() for f in bodies]


@pytest.mark.parametrize(("framework", "variant"), CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_exported_gradients_train_like_the_framework(graph, framework, variant):
    """The exported graph's gradients and steps equal the framework's own eager training."""
    path = graph(framework, variant)
    result = lg.verify(path, path, grads=True, steps=2, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures
    assert all(d.passed for side in result.native.values() for d in side)


PAIRS = [
    ("no_grad", "no_grad", True),
    ("decorated", "stop_gradient", True),
    ("enable_grad_inside", "plain", True),
    ("no_grad", "plain", False),
    ("plain", "set_grad_enabled", False),
    ("parameter", "parameter", True),
]


@pytest.mark.parametrize(("torch_variant", "paddle_variant", "same"), PAIRS,
                         ids=[f"{t}-vs-{p}" for t, p, _ in PAIRS])
def test_port_verdict_follows_the_gradient_switch(graph, torch_variant, paddle_variant, same):
    result = lg.verify(graph("torch", torch_variant), graph("paddle", paddle_variant),
                       grads=True, steps=2)
    assert result.passed == same
    if not same:
        divergence = result.first_divergence
        assert divergence.phase == "backward" and divergence.step == 0
        if VARIANTS[torch_variant][1] != VARIANTS[paddle_variant][1]:
            assert "stops the gradient" in (divergence.hint or ""), divergence.hint
