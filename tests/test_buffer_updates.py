"""Buffers a forward pass writes itself, beside a training-mode BatchNorm's: a spectral norm's
power iteration (torch's ``nn.utils.spectral_norm`` and ``parametrizations.spectral_norm``,
Paddle's ``nn.utils.spectral_norm``), a step counter. Both exporters used to drop the writes, so
the graph never updated the buffer (and Paddle's spectral norm was exported with its weight
frozen as a constant); now each becomes a graph output ``state:<buffer>`` the trainer carries to
the next step. Ground truth is each framework's own eager training (``--native``)."""

import textwrap

import pytest

import lossgraph as lg
from lossgraph.cli import native_runner
from lossgraph.errors import ExportError
from lossgraph.graph import LossGraph

TORCH = '''
    import torch
    import lossgraph as lg
    from torch.nn.utils import spectral_norm
    from torch.nn.utils.parametrizations import spectral_norm as parametrized_spectral_norm

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = {wrap}(torch.nn.Linear(3, 3){power})
            self.out = torch.nn.Linear(3, 1)
            self.register_buffer("steps", torch.zeros(()))

        def forward(self, x):
            with torch.no_grad():
                self.steps += 1
            return self.out(torch.tanh(self.fc(x))) * (1 + 0.1 * self.steps)

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input([4, 3])}},
                       train={train},
                       optimizers={{"sgd": torch.optim.SGD(m.parameters(), lr=0.5)}})
'''

PADDLE = '''
    import paddle
    import lossgraph as lg
    from paddle.nn.utils import spectral_norm

    class M(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = {wrap}(paddle.nn.Linear(3, 3), dim=1{power})
            self.out = paddle.nn.Linear(3, 1)
            self.register_buffer("steps", paddle.zeros([]))

        def forward(self, x):
            with paddle.no_grad():
                paddle.assign(self.steps + 1, self.steps)
            return self.out(paddle.tanh(self.fc(x))) * (1 + 0.1 * self.steps)

    def spec():
        paddle.seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input([4, 3])}},
                       train={train},
                       optimizers={{"sgd": paddle.optimizer.SGD(parameters=m.parameters(),
                                                                learning_rate=0.5)}})
'''

VARIANTS = {
    ("torch", "hook"): {"wrap": "spectral_norm"},
    ("torch", "parametrized"): {"wrap": "parametrized_spectral_norm"},
    ("paddle", "hook"): {"wrap": "spectral_norm"},
}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("buffer_updates")
    cache = {}

    def export(framework: str, variant: str, train: bool = True, power: int = 1):
        key = (framework, variant, train, power)
        if key not in cache:
            template = TORCH if framework == "torch" else PADDLE
            source = template.format(train=train, power=f", n_power_iterations={power}",
                                     **VARIANTS[(framework, variant)])
            path = folder / f"{framework}_{variant}_{'train' if train else 'eval'}_{power}.py"
            path.write_text(textwrap.dedent(source))
            cache[key] = path.with_suffix(".onnx")
            lg.export(f"{path}:spec", cache[key])
        return cache[key]

    return export


@pytest.mark.parametrize(("framework", "variant", "train"), [
    ("torch", "hook", True), ("torch", "parametrized", True), ("paddle", "hook", True),
    ("torch", "hook", False), ("paddle", "hook", False),
])
def test_buffer_updates_train_like_the_framework(graph, framework, variant, train):
    path = graph(framework, variant, train)
    meta = LossGraph.load(path).meta
    assert "state:steps" in meta.state_outputs
    if train:  # the power iteration's vectors are carried (torch's parametrization names them _u/_v)
        assert sum(o.endswith(("_u", "_v")) for o in meta.state_outputs) == 2, meta.state_outputs
    # every parameter is reached: Paddle's spectral norm no longer freezes the weight
    assert not [n for o in meta.optimizers.values() for n in o.unreached]
    result = lg.verify(path, path, grads=True, steps=3, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures


@pytest.mark.parametrize("train", [True, False])
def test_spectral_norm_port_trains_the_same(graph, train):
    result = lg.verify(graph("torch", "hook", train), graph("paddle", "hook", train), grads=True, steps=3)
    assert result.passed, result.first_divergence


def test_power_iterations_that_differ_are_found(graph):
    result = lg.verify(graph("torch", "hook", True, power=1), graph("paddle", "hook", True, power=2),
                       grads=True, steps=2)
    assert not result.passed
    divergence = result.first_divergence
    assert divergence.step == 0 and divergence.phase == "forward"
    assert divergence.scope.startswith("fc"), divergence.scope


PADDLE_WRITE = """
    import paddle
    import lossgraph as lg

    class M(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(3, 1)
            self.register_buffer("total", paddle.zeros([1]))

        def forward(self, x):
{body}
            return self.fc(x) * self.total

    def spec():
        return lg.Spec(model=M(), loss=lambda m, x: m(x).mean(), inputs={{"x": lg.Input([4, 3])}})
"""

#: Paddle writes lossgraph cannot carry -> a word its one-line refusal says
UNCARRIED_WRITES = {
    "add_": ("self.total.add_(x.sum().reshape([1]).detach())", "total"),
    # a write inside a traced branch: rewiring the global block's reads cannot carry it
    "cond": ("def bump():\n    paddle.assign(self.total + 1, self.total)\n    return self.total\n"
             "paddle.static.nn.cond(x.sum() > 0, bump, lambda: self.total)", "control flow"),
}


@pytest.mark.parametrize("case", list(UNCARRIED_WRITES))
def test_paddle_buffer_writes_that_cannot_be_carried_are_refused(write_spec, tmp_path, case):
    body, said = UNCARRIED_WRITES[case]
    indented = "\n".join(" " * 12 + line for line in body.splitlines())
    path = write_spec(PADDLE_WRITE.format(body=indented), f"{case}_paddle.py")
    with pytest.raises(ExportError) as info:
        lg.export(f"{path}:spec", tmp_path / "out.onnx")
    message = str(info.value)
    assert said in message and "\n" not in message
    assert not (tmp_path / "out.onnx").exists()


WEIGHT_NORM_TORCH = '''
    import torch
    import lossgraph as lg
    from torch.nn.utils import weight_norm
    from torch.nn.utils.parametrizations import weight_norm as parametrized_weight_norm

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = {wrap}(torch.nn.Linear(3, 4))
            self.conv = {wrap}(torch.nn.Conv2d(2, 3, 3))
            self.out = torch.nn.Linear(4, 1)

        def forward(self, x, img):
            return self.out(torch.tanh(self.fc(x))).mean() + self.conv(img).pow(2).mean()

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x, img: m(x, img),
                       inputs={{"x": lg.Input([4, 3]), "img": lg.Input([2, 2, 5, 5])}},
                       optimizers={{"sgd": torch.optim.SGD(m.parameters(), lr=0.1)}})
'''

WEIGHT_NORM_PADDLE = '''
    import paddle
    import lossgraph as lg
    from paddle.nn.utils import weight_norm

    class M(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = weight_norm(paddle.nn.Linear(3, 4), dim=1)
            self.conv = weight_norm(paddle.nn.Conv2D(2, 3, 3))
            self.out = paddle.nn.Linear(4, 1)

        def forward(self, x, img):
            return self.out(paddle.tanh(self.fc(x))).mean() + self.conv(img).pow(2).mean()

    def spec():
        m = M()
        return lg.Spec(model=m, loss=lambda m, x, img: m(x, img),
                       inputs={"x": lg.Input([4, 3]), "img": lg.Input([2, 2, 5, 5])},
                       optimizers={"sgd": paddle.optimizer.SGD(parameters=m.parameters(),
                                                               learning_rate=0.1)})
'''


@pytest.mark.parametrize("wrap", ["weight_norm", "parametrized_weight_norm"])
def test_weight_norm_port_pairs_and_trains_the_same(write_spec, tmp_path, wrap):
    """torch's weight norm, as a hook (``weight_g``/``weight_v``) or a parametrization
    (``parametrizations.weight.original0``/``original1``), against Paddle's weight_norm hook
    (which sets the weight as a Layer attribute while traced): the tensors pair by name, the
    Linear's ``weight_v`` transposed, and both train as their frameworks do."""
    graphs = []
    for side, source in (("torch", WEIGHT_NORM_TORCH.format(wrap=wrap)), ("paddle", WEIGHT_NORM_PADDLE)):
        path = write_spec(source, f"weight_norm_{side}.py")
        graphs.append(tmp_path / f"{side}.onnx")
        lg.export(f"{path}:spec", graphs[-1])
    result = lg.verify(*graphs, grads=True, steps=2, native=True, native_runner=native_runner())
    assert result.passed, result.first_divergence
    assert not result.native_failures
    assert len(result.param_map.pairs) == 8


DATA_WRITE_TORCH = '''
    import torch
    import lossgraph as lg

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 1)
            self.register_buffer("scale", torch.ones(()), persistent={persistent})

        def forward(self, x):
            {write}
            return self.fc(x) * self.scale

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input([4, 3])}},
                       optimizers={{"sgd": torch.optim.SGD(m.parameters(), lr=0.5)}})
'''


@pytest.mark.parametrize("persistent", [True, False])
def test_buffer_written_in_place_is_carried_persistent_or_not(write_spec, tmp_path, persistent):
    """A non-persistent buffer is not restored by ``load_state_dict``: it is still carried, and
    the graph starts from the value the model had before the eager run."""
    path = write_spec(DATA_WRITE_TORCH.format(write="self.scale.mul_(0.5)", persistent=persistent),
                      "in_place.py")
    out = tmp_path / "in_place.onnx"
    lg.export(f"{path}:spec", out)
    assert "state:scale" in LossGraph.load(out).meta.state_outputs
    result = lg.verify(out, out, grads=True, steps=3, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures


def test_buffer_written_through_data_is_refused(write_spec, tmp_path):
    """torch.export cannot trace a write through ``.data``: one line, no graph (never a graph
    that silently keeps the buffer constant)."""
    path = write_spec(DATA_WRITE_TORCH.format(write="self.scale.data.mul_(0.5)", persistent=True),
                      "data_write.py")
    with pytest.raises(ExportError) as info:
        lg.export(f"{path}:spec", tmp_path / "out.onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


EMA_TORCH = '''
    import torch
    import lossgraph as lg

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)
            self.register_buffer("ema", torch.zeros(3, 3))

        def forward(self, x):
            with torch.no_grad():
                {write}
            return (self.fc(x) + x @ self.ema.t()).pow(2).mean()

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, x: m(x), inputs={{"x": lg.Input([4, 3])}},
                       optimizers={{"sgd": torch.optim.SGD(m.parameters(), lr=0.5)}})
'''


@pytest.mark.parametrize("write", [
    "self.ema.mul_(0.9).add_(self.fc.weight, alpha=0.1)",
    "self.ema.lerp_(self.fc.weight, 0.1)",
    "self.ema.copy_(self.fc.weight)",
])
def test_an_average_of_a_weight_written_under_no_grad_passes_no_gradient(write_spec, tmp_path, write):
    """A buffer written in place from a weight under no_grad (an EMA of the weights): the write
    is carried and the weight gets no gradient through the buffer, as in eager torch (the
    in-place op's result is the buffer itself, so only detaching its inputs cuts the path)."""
    path = write_spec(EMA_TORCH.format(write=write), "ema.py")
    out = tmp_path / "ema.onnx"
    lg.export(f"{path}:spec", out)
    assert "state:ema" in LossGraph.load(out).meta.state_outputs
    result = lg.verify(out, out, grads=True, steps=3, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures
