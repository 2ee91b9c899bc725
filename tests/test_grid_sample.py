"""grid_sample, lowered to the ops it is made of (``lossgraph.exporters.grid_sample``): a
spatial transformer (an affine grid from a Linear, sampling a Conv2d's maps, some points
outside the input) has torch autograd's gradients in every mode, padding and corner
alignment, and its Paddle port trains the same."""

import pytest
from test_autodiff_graphs import assert_close, ort_gradients, torch_autograd

import lossgraph as lg
from lossgraph.graph import LossGraph
from lossgraph.spec import load_spec

TORCH = '''
    import torch
    import torch.nn.functional as F
    from torch import nn
    import lossgraph as lg

    class STN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.loc = nn.Linear(4, 6)

        def forward(self, x, z):
            base = torch.tensor([[1.3, 0.2, 0.1], [-0.1, 1.2, 0.0]])
            theta = base + 0.4 * torch.tanh(self.loc(z)).view(-1, 2, 3)
            grid = F.affine_grid(theta, [2, 3, 4, 5], align_corners={align})
            return F.grid_sample(self.conv(x), grid, mode={mode!r}, padding_mode={padding!r},
                                 align_corners={align})

    def spec():
        torch.manual_seed(0)
        m = STN()
        return lg.Spec(model=m, loss=lambda m, x, z: (m(x, z) ** 2).mean() + m(x, z).mean(),
                       inputs={{"x": lg.Input([2, 2, 5, 6]), "z": lg.Input([2, 4])}},
                       optimizers={{"adam": torch.optim.Adam(m.parameters(), lr=1e-2)}})
'''

PADDLE = '''
    import paddle
    import paddle.nn.functional as F
    from paddle import nn
    import lossgraph as lg

    class STN(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2D(2, 3, 3, padding=1)
            self.loc = nn.Linear(4, 6)

        def forward(self, x, z):
            base = paddle.to_tensor([[1.3, 0.2, 0.1], [-0.1, 1.2, 0.0]])
            theta = base + 0.4 * paddle.tanh(self.loc(z)).reshape([-1, 2, 3])
            grid = F.affine_grid(theta, [2, 3, 4, 5], align_corners={align})
            return F.grid_sample(self.conv(x), grid, mode={mode!r}, padding_mode={padding!r},
                                 align_corners={align})

    def spec():
        m = STN()
        return lg.Spec(model=m, loss=lambda m, x, z: (m(x, z) ** 2).mean() + m(x, z).mean(),
                       inputs={{"x": lg.Input([2, 2, 5, 6]), "z": lg.Input([2, 4])}},
                       optimizers={{"adam": paddle.optimizer.Adam(parameters=m.parameters(),
                                                                 learning_rate=1e-2)}})
'''

CASES = [(mode, padding, align) for mode in ("bilinear", "nearest")
         for padding in ("zeros", "border", "reflection") for align in (False, True)]


@pytest.mark.parametrize("mode, padding, align", CASES)
def test_a_spatial_transformer_has_torch_autograds_gradients(write_spec, tmp_path, mode, padding, align):
    path = write_spec(TORCH.format(mode=mode, padding=padding, align=align), "stn.py")
    out = tmp_path / "stn.onnx"
    lg.export(f"{path}:spec", out)  # the export's eager check proves the lowered forward
    graph = LossGraph.load(out)
    assert "GridSample" not in {n.op_type for n in graph.model.graph.node}
    spec = load_spec(f"{path}:spec")
    inputs, ours = ort_gradients(spec, graph)
    assert_close(ours, torch_autograd(spec, inputs, graph.meta.losses), f"grid_sample {mode} {padding} {align}")


@pytest.mark.parametrize("mode, padding, align", [("bilinear", "zeros", False), ("bilinear", "reflection", True),
                                                  ("nearest", "border", False)])
def test_the_paddle_port_of_a_spatial_transformer_trains_the_same(write_spec, tmp_path, mode, padding, align):
    graphs = []
    for side, source in (("torch", TORCH), ("paddle", PADDLE)):
        path = write_spec(source.format(mode=mode, padding=padding, align=align), f"stn_{side}.py")
        graphs.append(tmp_path / f"{side}.onnx")
        lg.export(f"{path}:spec", graphs[-1])
    result = lg.verify(*graphs, grads=True, steps=2)
    assert result.passed, result.first_divergence


def test_a_paddle_port_that_keeps_paddles_corner_default_parts_at_the_sampling(write_spec, tmp_path):
    """Paddle's grid_sample aligns corners by default, torch's does not."""
    graphs = []
    for side, source in (("torch", TORCH), ("paddle", PADDLE)):
        text = source.format(mode="bilinear", padding="zeros", align=False)
        if side == "paddle":
            text = text.replace(", padding_mode='zeros',\n                                 align_corners=False)",
                                ", padding_mode='zeros')")
        path = write_spec(text, f"corners_{side}.py")
        graphs.append(tmp_path / f"{side}.onnx")
        lg.export(f"{path}:spec", graphs[-1])
    found = lg.verify(*graphs).first_divergence
    assert found is not None and found.phase == "forward" and found.op_type == "GridSample", found
    assert "GridSample differs in its settings: align_corners 0 vs 1" in found.hint, found.hint
