"""Embedding lookups with ``padding_idx``: torch's embedding backward leaves the padding row
alone (the exported Gather is marked, its gradient rule skips the row), Paddle's forward zeroes
it; a correct port trains the same, on ONNX Runtime and eagerly. ``scale_grad_by_freq`` is
refused."""

import numpy as np
import pytest
from test_autodiff_graphs import assert_close, ort_gradients, torch_autograd

import lossgraph as lg
from lossgraph.cli import native_runner
from lossgraph.errors import ExportError
from lossgraph.graph import PADDING_IDX_KEY, LossGraph, node_meta
from lossgraph.spec import load_spec

SOURCE = {
    "torch": '''
        import torch
        from torch import nn
        import lossgraph as lg

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(6, 4, padding_idx={padding})
                self.fc = nn.Linear(4, 1)

            def forward(self, ids):
                return self.fc(self.emb(ids))

        def spec():
            torch.manual_seed(0)
            m = M()
            return lg.Spec(model=m, loss=lambda m, ids: (m(ids) ** 2).mean(),
                           inputs={{"ids": lg.Input([2, 5], dtype="int64", choices=[0, 1, 2, 3, 4, 5])}},
                           optimizers={{"sgd": torch.optim.SGD(m.parameters(), lr=0.5)}})
    ''',
    "paddle": '''
        import paddle
        from paddle import nn
        import lossgraph as lg

        class M(nn.Layer):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(6, 4, padding_idx={padding})
                self.fc = nn.Linear(4, 1)

            def forward(self, ids):
                return self.fc(self.emb(ids))

        def spec():
            paddle.seed(0)
            m = M()
            return lg.Spec(model=m, loss=lambda m, ids: (m(ids) ** 2).mean(),
                           inputs={{"ids": lg.Input([2, 5], dtype="int64", choices=[0, 1, 2, 3, 4, 5])}},
                           optimizers={{"sgd": paddle.optimizer.SGD(parameters=m.parameters(),
                                                                    learning_rate=0.5)}})
    ''',
}


def export(write_spec, tmp_path, side, padding, name=None):
    path = write_spec(SOURCE[side].format(padding=padding), name or f"emb_{side}.py")
    out = tmp_path / f"{path.stem}.onnx"
    lg.export(f"{path}:spec", out)
    return path, out


@pytest.mark.parametrize("padding", [0, 4])
def test_padding_rows_learn_nothing_on_either_side(write_spec, tmp_path, padding):
    _, torch_graph = export(write_spec, tmp_path, "torch", padding)
    _, paddle_graph = export(write_spec, tmp_path, "paddle", padding)
    gathers = [n for n in LossGraph.load(torch_graph).model.graph.node if n.op_type == "Gather"]
    assert [node_meta(n, PADDING_IDX_KEY) for n in gathers] == [str(padding)]
    result = lg.verify(torch_graph, paddle_graph, grads=True, steps=2, native=True,
                       native_runner=native_runner())
    assert result.passed
    assert all(d.passed for side in result.native.values() for d in side)


def test_graph_gradient_equals_torch_autograd_on_the_padding_row(write_spec, tmp_path):
    path, out = export(write_spec, tmp_path, "torch", 2)
    spec, graph = load_spec(f"{path}:spec"), LossGraph.load(out)
    inputs, ours = ort_gradients(spec, graph)
    assert 2 in inputs["ids"]
    theirs = torch_autograd(spec, inputs, graph.meta.losses)
    assert_close(ours, theirs, "padding_idx")
    assert not np.any(ours["loss"]["emb.weight"][2])


def test_scale_grad_by_freq_is_refused(write_spec, tmp_path):
    path = write_spec(SOURCE["torch"].format(padding=0).replace(
        "padding_idx=0)", "padding_idx=0, scale_grad_by_freq=True)"), "freq.py")
    with pytest.raises(ExportError, match="scale_grad_by_freq=True"):
        lg.export(f"{path}:spec", tmp_path / "f.onnx")


@pytest.mark.parametrize("torch_padding, paddle_padding", [(0, None), (None, 0)])
def test_padding_idx_on_one_side_is_found_and_named(write_spec, tmp_path, torch_padding, paddle_padding):
    _, torch_graph = export(write_spec, tmp_path, "torch", torch_padding)
    _, paddle_graph = export(write_spec, tmp_path, "paddle", paddle_padding)
    result = lg.verify(torch_graph, paddle_graph, grads=True, steps=2)
    assert not result.passed
    found = result.first_divergence
    assert found.scope == "emb", found
    if torch_padding is None:  # Paddle's lookup zeroes its row: the forward parts first
        assert found.phase == "forward"
        return
    assert found.phase == "backward"
    assert f"gives row {torch_padding} (padding_idx) no gradient" in found.hint
    assert "the candidate's embedding emb.weight has no padding_idx" in found.hint


TIED = '''
    import torch
    from torch import nn
    import lossgraph as lg

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 4, padding_idx=0)

        def forward(self, ids):
            return self.emb(ids) @ self.emb.weight.T  # a tied output head trains the padding row

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, ids: ((m(ids) - 1) ** 2).mean(),
                       inputs={"ids": lg.Input([2, 5], dtype="int64", choices=[0, 1, 2, 3, 4, 5])},
                       optimizers={"sgd": torch.optim.SGD(m.parameters(), lr=0.5)})
'''

TIED_PADDLE = '''
    import paddle
    from paddle import nn
    import lossgraph as lg

    class M(nn.Layer):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 4, padding_idx=0)

        def forward(self, ids):
            return paddle.matmul(self.emb(ids), self.emb.weight, transpose_y=True)

    def spec():
        m = M()
        return lg.Spec(model=m, loss=lambda m, ids: ((m(ids) - 1) ** 2).mean(),
                       inputs={"ids": lg.Input([2, 5], dtype="int64", choices=[0, 1, 2, 3, 4, 5])},
                       optimizers={"sgd": paddle.optimizer.SGD(parameters=m.parameters(),
                                                                learning_rate=0.5)})
'''


def test_the_frameworks_padding_conventions_part_once_the_row_moves(write_spec, tmp_path):
    """torch's lookup returns the padding row (which the tied head trains), Paddle's outputs
    zeros for the id: a true difference at step 1, named."""
    torch_graph, paddle_graph = tmp_path / "t.onnx", tmp_path / "p.onnx"
    lg.export(f"{write_spec(TIED, 'tied_t.py')}:spec", torch_graph)
    lg.export(f"{write_spec(TIED_PADDLE, 'tied_p.py')}:spec", paddle_graph)
    result = lg.verify(torch_graph, paddle_graph, grads=True, steps=2)
    found = result.first_divergence
    assert (found.step, found.phase, found.scope) == (1, "forward", "emb"), found
    assert "Paddle's outputs zeros for that id" in found.hint


MAX_NORM = '''
    import torch
    from torch import nn
    import lossgraph as lg

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(8, 4, max_norm={max_norm}, norm_type={norm_type})
            self.fc = nn.Linear(4, 1)

        def forward(self, ids):
            {forward}

    def spec():
        torch.manual_seed(0)
        m = M()
        return lg.Spec(model=m, loss=lambda m, ids: ((m(ids) - 1) ** 2).mean(),
                       inputs={{"ids": lg.Input([2, 5], dtype="int64", high=8)}},
                       optimizers={{"adam": torch.optim.Adam(m.parameters(), lr=0.1)}})
'''


@pytest.mark.parametrize("max_norm, norm_type, forward", [
    (1.0, 2.0, "return self.fc(self.emb(ids))"),
    (1.0, 1.0, "return self.fc(self.emb(ids)) + self.fc(self.emb(ids[:, :2] // 2)).mean()"),  # renormed twice
    (2.2, 2.0, "return self.fc(self.emb(ids))"),  # few rows above it at first
])
def test_max_norm_renormalizes_the_weight_as_torch_trains_it(write_spec, tmp_path, max_norm, norm_type, forward):
    """nn.Embedding(max_norm) rewrites the rows it looks up in place, under no_grad: the
    gradient reaches the weight as if it were not rescaled, and the optimizer steps from the
    rescaled weight. The exported graph carries both (a marked ScatterND, a state output)."""
    path = write_spec(MAX_NORM.format(max_norm=max_norm, norm_type=norm_type, forward=forward), "max_norm.py")
    out = tmp_path / "max_norm.onnx"
    lg.export(f"{path}:spec", out)
    spec, graph = load_spec(f"{path}:spec"), LossGraph.load(out)
    assert list(graph.meta.state_outputs.values()) == ["emb.weight"]
    inputs, ours = ort_gradients(spec, graph)
    theirs = torch_autograd(spec, inputs, graph.meta.losses)
    assert_close(ours, theirs, "max_norm")
    assert np.any(ours["loss"]["emb.weight"])
    result = lg.verify(out, out, grads=True, steps=3, native=True, native_runner=native_runner())
    assert result.passed
    assert result.native["reference"] and all(d.passed for d in result.native["reference"])


def test_a_forward_that_changes_another_parameter_in_place_is_refused(cli, write_spec, tmp_path):
    path = write_spec(MAX_NORM.format(max_norm=1.0, norm_type=2.0, forward=(
        "with torch.no_grad():\n                self.fc.weight.mul_(0.5)\n"
        "            return self.fc(self.emb(ids))")), "mutates.py")
    run = cli("export", f"{path}:spec", "-o", tmp_path / "m.onnx")
    assert run.exit_code == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "changes parameter(s) fc.weight in place" in run.stderr, run.stderr
