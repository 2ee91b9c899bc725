"""Graphs past protobuf's 2 GB limit: saved with their tensors in a data file beside the graph,
loaded back, run on ONNX Runtime with their large initializers fed (a session cannot serialize
them), shape-inferred without their weights, and copied (the check's cache, ``--keep``) with
their data. The limit is lowered here so that a small pair crosses it; the same code paths serve
a 2 GB model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lossgraph as lg
from lossgraph import graph as graph_module
from lossgraph.errors import VerificationError
from lossgraph.graph import LossGraph, copy_graph_file, data_file, inferred_shapes
from lossgraph.runtime.session import OrtRunner

TORCH = """
    import torch
    from torch import nn

    import lossgraph as lg


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(2000, 64)
            self.out = nn.Linear(64, 5)

        def forward(self, ids):
            return self.out(self.emb(ids).mean(1))


    def spec():
        torch.manual_seed(0)
        return lg.Spec(model=Net(), loss=lambda m, ids: (m(ids) ** 2).mean(),
                       inputs={"ids": lg.Input([4, 6], dtype="int64", high=2000)})
"""
PADDLE = """
    import paddle
    from paddle import nn

    import lossgraph as lg


    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(2000, 64)
            self.out = nn.Linear(64, 5)

        def forward(self, ids):
            return self.out(self.emb(ids).mean(1))


    def spec():
        paddle.seed(0)
        return lg.Spec(model=Net(), loss=lambda m, ids: (m(ids) ** 2).mean(),
                       inputs={"ids": lg.Input([4, 6], dtype="int64", high=2000)})
"""
#: the embedding alone is 512 KB: over this limit, under which the rest of each graph stays
LIMIT = 300_000


@pytest.fixture
def large_pair(tmp_path: Path, write_spec, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setattr(graph_module, "PROTOBUF_LIMIT", LIMIT)
    graphs = []
    for name, source in (("big_torch.py", TORCH), ("big_paddle.py", PADDLE)):
        out = tmp_path / name.replace(".py", ".onnx")
        lg.export(f"{write_spec(source, name)}:spec", out)  # its eager check ran on the fed path
        graphs.append(out)
    return graphs[0], graphs[1]


def test_a_graph_over_the_limit_is_saved_with_its_data_beside_it(large_pair) -> None:
    for path in large_pair:
        assert data_file(path).stat().st_size >= 2000 * 64 * 4
        assert path.stat().st_size < 50_000
        graph = LossGraph.load(path)
        weights = {t.name: t for t in graph.model.graph.initializer}
        assert max(int(np.prod(t.dims)) for t in weights.values()) == 2000 * 64
        runner = OrtRunner(graph.model)
        assert runner.constants, "a session over the limit feeds its large initializers"
        light = inferred_shapes(graph.model)
        assert light.ByteSize() < LIMIT and light.graph.value_info


def test_a_pair_over_the_limit_verifies_and_trains(large_pair, monkeypatch) -> None:
    result = lg.verify(*large_pair, grads=True, steps=2)
    assert result.passed, result
    assert result.steps and all(step.passed for step in result.steps)


def test_a_graph_copied_with_its_data_loads_the_same(large_pair, tmp_path: Path) -> None:
    source = large_pair[0]
    target = tmp_path / "kept" / "reference.onnx"
    target.parent.mkdir()
    copy_graph_file(source, target)
    assert data_file(target).is_file()
    a, b = LossGraph.load(source), LossGraph.load(target)
    assert a.initializers().keys() == b.initializers().keys()
    for name, value in a.initializers().items():
        np.testing.assert_array_equal(value, b.initializers()[name])


def test_a_graph_without_its_data_file_is_refused_in_one_line(large_pair, tmp_path: Path, cli) -> None:
    moved = tmp_path / "alone" / "big.onnx"
    moved.parent.mkdir()
    moved.write_bytes(large_pair[0].read_bytes())
    with pytest.raises(VerificationError, match="big_torch.onnx.data, which is missing"):
        LossGraph.load(moved)
    result = cli("verify", moved, large_pair[1])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "copy or move them together" in result.stderr


def test_a_model_copied_part_by_part_is_the_same_model(large_pair) -> None:
    """``copy_model`` (the copy that works past 2 GB, where ``CopyFrom`` serializes and fails)
    leaves nothing out: metadata, opsets, nodes, initializers."""
    from lossgraph.graph import copy_model

    model = LossGraph.load(large_pair[1]).model
    assert copy_model(model).SerializeToString() == model.SerializeToString()
