"""A spatial transformer network (the PyTorch tutorial's: a localization net regresses an affine
transform, ``affine_grid`` turns it into a sampling grid, ``grid_sample`` resamples the input)
against its Paddle port. The two functions are called at the top level of ``forward``, where
no module's output marks them, and both have an ``align_corners`` default that differs between
the libraries (torch False, Paddle True): a port that keeps Paddle's default in either is found
at that call, with a hint naming the argument of the function it sits in."""

import pytest

import lossgraph as lg

TORCH = '''
    import torch, torch.nn as nn, torch.nn.functional as F, lossgraph as lg

    class STN(nn.Module):
        def __init__(self):
            super().__init__()
            self.localization = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), nn.ReLU(True),
                                              nn.Conv2d(8, 10, 5), nn.MaxPool2d(2), nn.ReLU(True))
            self.fc_loc = nn.Sequential(nn.Linear(90, 32), nn.ReLU(True), nn.Linear(32, 6))
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            xs = self.localization(x).view(-1, 90)
            theta = self.fc_loc(xs).view(-1, 2, 3)
            grid = F.affine_grid(theta, list(x.size()), align_corners=False)
            x = F.grid_sample(x, grid, align_corners=False)
            return self.fc(self.conv(x).flatten(1))

    def spec():
        torch.manual_seed(0)
        return lg.Spec(model=STN(), loss=lambda m, x, y: F.cross_entropy(m(x), y),
                       inputs={"x": lg.Input([2, 1, 28, 28]),
                               "y": lg.Input([2], dtype="int64", choices=list(range(10)))})
'''

PADDLE = '''
    import paddle, paddle.nn as nn, paddle.nn.functional as F, lossgraph as lg

    class STN(nn.Layer):
        def __init__(self):
            super().__init__()
            self.localization = nn.Sequential(nn.Conv2D(1, 8, 7), nn.MaxPool2D(2), nn.ReLU(),
                                              nn.Conv2D(8, 10, 5), nn.MaxPool2D(2), nn.ReLU())
            self.fc_loc = nn.Sequential(nn.Linear(90, 32), nn.ReLU(), nn.Linear(32, 6))
            self.conv = nn.Conv2D(1, 4, 3)
            self.fc = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            xs = self.localization(x).reshape([-1, 90])
            theta = self.fc_loc(xs).reshape([-1, 2, 3])
            grid = F.affine_grid(theta, x.shape{affine})
            x = F.grid_sample(x, grid{sample})
            return self.fc(self.conv(x).flatten(1))

    def spec():
        return lg.Spec(model=STN(), loss=lambda m, x, y: F.cross_entropy(m(x), y),
                       inputs={{"x": lg.Input([2, 1, 28, 28]),
                               "y": lg.Input([2], dtype="int64", choices=list(range(10)))}})
'''

EXPLICIT = ", align_corners=False"
#: port -> (affine_grid's and grid_sample's extra arguments, the function whose default was kept)
PORTS = {
    "correct": ((EXPLICIT, EXPLICIT), None),
    "affine_grid_default": (("", EXPLICIT), "affine_grid"),
    "grid_sample_default": ((EXPLICIT, ""), "grid_sample"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stn")
    (folder / "stn_torch.py").write_text(__import__("textwrap").dedent(TORCH))
    out = folder / "stn_torch.onnx"
    lg.export(f"{folder / 'stn_torch.py'}:spec", out)
    return out


@pytest.mark.parametrize("port", PORTS)
def test_stn_port(reference, write_spec, tmp_path, port):
    (affine, sample), kept = PORTS[port]
    path = write_spec(PADDLE.format(affine=affine, sample=sample), f"stn_{port}.py")
    candidate = tmp_path / f"{port}.onnx"
    lg.export(f"{path}:spec", candidate)
    result = lg.verify(reference, candidate, grads=True, steps=2)
    if kept is None:
        assert result.passed, result.first_divergence
        return
    divergence = result.first_divergence
    assert (divergence.step, divergence.phase, divergence.scope) == (0, "forward", "")
    assert f"{kept}(" in divergence.source["code"]
    assert f"{kept} (align_corners): torch align_corners=False; Paddle align_corners=True" in divergence.hint
