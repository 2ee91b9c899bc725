"""Module-output taps of nested modules: a Sequential's output is its last child's, so the
child's tap marker sits inside the parent's. Each module on such a chain gets its own tap of
the real tensor (not of a flattened copy), and no marker's Concat and Slice stay in the graph
(they copied the whole activation on every run)."""

import numpy as np
import pytest
from conftest import DISCOGAN

from lossgraph.exporters.taps import _tap_index
from lossgraph.graph import TAP_KEY, LossGraph, node_meta
from lossgraph.inputs import make_inputs
from lossgraph.runtime import constant_values, infer_types
from lossgraph.runtime.session import OrtRunner

#: generator_A's output is generator_A.main's, which is its last layer's (a Sigmoid)
CHAIN = ("generator_A#0", "generator_A.main#0", "generator_A.main.21#0")


@pytest.mark.parametrize("side", ["discogan_torch.py", "discogan_paddle.py"])
def test_nested_module_outputs_each_tap_the_tensor(exported, side):
    graph = LossGraph.load(exported(f"{DISCOGAN}/{side}"))
    model = graph.model
    taps = {node_meta(n, TAP_KEY): n.output[0] for n in model.graph.node if node_meta(n, TAP_KEY)}
    assert set(CHAIN) <= set(taps)
    types = infer_types(model)
    assert {tuple(types[taps[name]].shape) for name in CHAIN} == {(4, 3, 64, 64)}
    # every tap is a tensor of its module's output rank (a flattened copy was 1-D)
    assert all(len(types[value].shape) > 1 for value in taps.values())
    consts = constant_values(model)
    assert not [n.name for n in model.graph.node if _tap_index(n, consts) is not None]
    # and the three taps hold the same values
    params = graph.param_values()
    values = OrtRunner(model, fed=params, extra_outputs=[taps[name] for name in CHAIN]).run(
        {**make_inputs(graph.meta.inputs, 0), **params}, outputs=[taps[name] for name in CHAIN]
    )
    first, *rest = values.values()
    assert all(np.array_equal(first, other) for other in rest)


NAMED_OUTPUT = """
    import collections
    import torch
    from torch import nn
    import lossgraph as lg

    Heads = collections.namedtuple("Heads", ["mean", "scale", "steps"])

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            mean, scale = self.fc(x).chunk(2, dim=-1)
            return Heads(mean, scale.exp(), 3)  # a named tuple with a non-tensor field

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()

        def forward(self, x):
            heads = self.encoder(x)
            return heads.mean * heads.scale * heads.steps

    def model():
        torch.manual_seed(0)
        return lg.Spec(model=Model(), loss=lambda m, x: m(x).pow(2).mean(),
                       inputs={"x": lg.Input([2, 4])})
"""


def test_a_module_returning_a_named_tuple_is_tapped_field_by_field(cli, tmp_path):
    """Tapping rebuilds a module's tuple output: a named tuple (torch's PackedSequence among
    them) from its fields; it was built from one list, which failed the eager run."""
    import textwrap

    spec = tmp_path / "named.py"
    spec.write_text(textwrap.dedent(NAMED_OUTPUT))
    run = cli("export", f"{spec}:model", "-o", tmp_path / "named.onnx")
    assert run.exit_code == 0, run.output
    taps = {node_meta(n, TAP_KEY) for n in LossGraph.load(tmp_path / "named.onnx").model.graph.node}
    assert {"encoder#0.0", "encoder#0.1"} <= taps

