"""Node-level localization on small pairs built for one property each: decomposition
intermediates that only one side computes are not origins, constants and shapes are not
searched, and a divergence with agreeing losses is not reported in the forward pass."""

import lossgraph as lg
from lossgraph.verify.localize import neighbourhood

TORCH = """
import torch
from torch import nn
import lossgraph as lg

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)

def spec():
    torch.manual_seed(0)
    def loss(model, x, y):
        h = model(x)
        mixed = h * 0.5 + x          # the candidate computes (h + 2x) / 2
        return torch.clamp(1.0 - mixed * y, min=0.0).mean()   # hinge, margin 1
    return lg.Spec(model=Net(), loss=loss,
                   inputs={"x": lg.Input([3, 4]), "y": lg.Input([3, 4], choices=[-1.0, 1.0])})
"""

PADDLE = """
import paddle
from paddle import nn
import lossgraph as lg

class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)

def spec(margin=MARGIN):
    paddle.seed(0)
    def loss(model, x, y):
        h = model(x)
        mixed = (h + 2.0 * x) / 2.0
        return paddle.clip(margin - mixed * y, min=0.0).mean()
    return lg.Spec(model=Net(), loss=loss,
                   inputs={"x": lg.Input([3, 4]), "y": lg.Input([3, 4], choices=[-1.0, 1.0])})
"""


def _pair(write_spec, tmp_path, margin):
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    lg.export(str(write_spec(TORCH, "loc_torch.py")), ref)
    lg.export(str(write_spec(PADDLE.replace("MARGIN", repr(margin)), "loc_paddle.py")), cand)
    return ref, cand


def test_same_computation_decomposed_otherwise_passes(write_spec, tmp_path):
    assert lg.verify(*_pair(write_spec, tmp_path, 1.0)).passed


def test_origin_is_past_the_decomposition_intermediates(write_spec, tmp_path):
    ref, cand = _pair(write_spec, tmp_path, 0.7)
    result = lg.verify(ref, cand)
    found = result.first_divergence
    assert not result.passed and found.localized
    assert found.phase == "forward" and found.scope == ""
    # h * 0.5 exists only in the reference, yet the values agree again at h * 0.5 + x: the
    # origin is where the margin enters (1 - mixed * y), not the intermediate
    assert found.op_type == "Sub", found
    assert found.source["code"].strip().startswith("return torch.clamp(1.0 - mixed * y")
    assert "computes Sub in the loss with 1" in found.hint and "0.7" in found.hint
    graph = lg.verify.pipeline.LossGraph.load(ref)
    around = neighbourhood(graph, found.reference_node)
    assert around["center"] == found.reference_node
    assert any(n["layer"] < 0 for n in around["nodes"]) and any(n["layer"] > 0 for n in around["nodes"])


def test_a_sign_flip_is_localized(write_spec, tmp_path):
    """Values equal up to sign correspond inside a region (1 - t vs -(t - 1)), but the diverging
    loss never stands for its own negation."""
    ref, _ = _pair(write_spec, tmp_path, 1.0)
    flipped = PADDLE.replace("MARGIN", "1.0").replace(
        "return paddle.clip(margin - mixed * y, min=0.0).mean()",
        "return -paddle.clip(margin - mixed * y, min=0.0).mean()",
    )
    cand = tmp_path / "flipped.onnx"
    lg.export(str(write_spec(flipped, "loc_flipped.py")), cand)
    found = lg.verify(ref, cand).first_divergence
    assert found is not None and found.localized and found.phase == "forward", found


def test_parameter_free_modules_pair_through_their_children():
    from lossgraph.verify.localize import translate_tap, with_parents

    modules = with_parents(
        {"enc.0": "encoder.0", "enc.2": "encoder.2", "head.fc": "out.fc", "mix.a": "m1.a", "mix.b": "m2.b"}
    )
    assert translate_tap("enc#0", modules) == "encoder#0"
    assert translate_tap("enc.1#0", modules) == "encoder.1#0"  # a Tanh between two Linears
    assert translate_tap("head#1", modules) == "out#1"
    assert "mix" not in modules and translate_tap("mix#0", modules) == "mix#0"  # ambiguous


RENAMED_TORCH = """
import torch
from torch import nn
import lossgraph as lg

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.enc(x))

def spec():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=lambda model, x: model(x).square().mean(),
                   inputs={"x": lg.Input([3, 4])})
"""

RENAMED_PADDLE = """
import paddle
from paddle import nn
import lossgraph as lg

class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4))
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.out(self.encoder(x))

def spec():
    paddle.seed(0)
    return lg.Spec(model=Net(), loss=lambda model, x: model(x).square().mean(),
                   inputs={"x": lg.Input([3, 4])})
"""


def test_renamed_containers_localize_to_the_parameter_free_layer(write_spec, tmp_path):
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    lg.export(str(write_spec(RENAMED_TORCH, "renamed_torch.py")), ref)
    lg.export(str(write_spec(RENAMED_PADDLE, "renamed_paddle.py")), cand)
    report = lg.verify(ref, cand, tol=1e-6)
    assert not report.passed
    divergence = report.first_divergence
    assert divergence.scope == "enc.1", divergence


def test_moves_of_parameters_stand_for_the_candidates_parameters():
    """A parameter the reference only moves (Transposes, chained; a Reshape) pairs with the
    candidate's parameter as stored, with the composed permutation where only Transposes move it."""
    from onnx import helper

    from lossgraph.verify.localize import _moved_parameters

    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0, 2, 3]),
        helper.make_node("Identity", ["wtt"], ["wtt_same"]),
        helper.make_node("Reshape", ["b", "shape"], ["b4"]),
        helper.make_node("Transpose", ["b4"], ["b4t"], perm=[1, 0, 2, 3]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),  # not a parameter
        helper.make_node("Relu", ["w"], ["computed"]),  # not a move
        helper.make_node("Transpose", ["u"], ["ut"], perm=[1, 0]),  # a parameter without a pair
    ]
    moved = _moved_parameters(nodes, {"w": 1, "b": 1, "u": 1}, {"w": "W", "b": "B"})
    assert moved == {
        "wt": ("w", (0, 1, 3, 2)), "wtt": ("w", (1, 0, 3, 2)), "wtt_same": ("w", (1, 0, 3, 2)),
        "b4": ("b", None), "b4t": ("b", None),
    }


def _chain(ops_a, ops_b):
    """x -> ops_a -> tap a -> ops_b -> tap b -> loss, and a dead tap c = -x."""
    from onnx import TensorProto, helper

    from lossgraph.graph import GraphMeta, LossGraph
    from lossgraph.spec import Input

    nodes, value = [], "x"
    for name, ops in (("a", ops_a), ("b", ops_b)):
        for k, op in enumerate(ops):
            nodes.append(helper.make_node(op, [value], [f"{name}{k}"]))
            value = f"{name}{k}"
        nodes.append(helper.make_node("Identity", [value], [f"{name}/tap"]))
        value = f"{name}/tap"
    nodes += [helper.make_node("ReduceSum", [value], ["loss"]),
              helper.make_node("Neg", ["x"], ["c"]), helper.make_node("Identity", ["c"], ["c/tap"])]
    info = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph(nodes, "g", [info("x", TensorProto.FLOAT, [4])],
                                                [info("loss", TensorProto.FLOAT, [])]),
                              opset_imports=[helper.make_opsetid("", 17)])
    return LossGraph(model, GraphMeta(framework="torch", losses=["loss"], inputs={"x": Input([4])}, params={}))


def test_a_module_output_that_ends_elsewhere_is_a_boundary_not_a_divergence():
    """The candidate's module a includes the Relu the reference runs after it: a differs, and
    the reference's value after it is the candidate's (a boundary); a real difference at a is
    not one; a module output nothing reads is no divergence."""
    import numpy as np

    from lossgraph.verify.compare import Tolerance
    from lossgraph.verify.localize import Side, boundary_taps, run_values

    x = {"x": np.array([-1.0, 2.0, -3.0, 0.5], np.float32)}
    ref = Side(_chain(["Neg"], ["Relu", "Exp"]), x, "cpu")
    fused = Side(_chain(["Neg", "Relu"], ["Exp"]), x, "cpu")
    other = Side(_chain(["Neg", "Sigmoid"], ["Exp"]), x, "cpu")
    pairs = {t: (f"{t[0]}/tap", f"{t[0]}/tap") for t in ("a#0", "b#0", "c#0")}
    tol = Tolerance(1e-6, 0.0)
    for cand, expected in ((fused, ["a#0", "c#0"]), (other, ["c#0"])):
        values = {}
        for tap, (r, c) in pairs.items():
            values[tap] = (run_values(ref, [r])[r], run_values(cand, [c])[c])
        assert boundary_taps(ref, cand, pairs, values, ["a#0", "c#0"], tol) == expected


TWO_LAYERS_TORCH = """
import torch
from torch import nn
import lossgraph as lg


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.a(x))


def spec():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": lg.Input([4, 4])})
"""
TWO_LAYERS_PADDLE = """
import paddle
from paddle import nn
import lossgraph as lg


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        return self.b(paddle.nn.functional.ACT(self.a(x)))


def spec():
    paddle.seed(0)
    return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": lg.Input([4, 4])})
"""


def test_an_op_only_one_side_applies_is_named_and_a_swapped_one_is_not(tmp_path_factory, exported):
    """An extra ReLU in the port (or one it lost) was reported at the next layer with no likely
    cause; an activation swapped for another must not be called an extra one."""
    from conftest import write_spec_files

    files = write_spec_files(tmp_path_factory, "extra_op", {
        "plain": TWO_LAYERS_TORCH, "relu": TWO_LAYERS_PADDLE.replace("ACT", "relu"),
        "gelu": TWO_LAYERS_PADDLE.replace("ACT", "gelu"),
    })
    plain, relu, gelu = (exported(str(files[k])) for k in ("plain", "relu", "gelu"))
    extra = lg.verify(plain, relu).first_divergence
    assert extra.hint and extra.hint.startswith("The candidate applies Relu to a value the reference passes on"), extra
    lost = lg.verify(relu, plain).first_divergence
    assert lost.hint and lost.hint.startswith("The reference applies Relu to a value the candidate passes on"), lost
    swapped = lg.verify(relu, gelu).first_divergence
    assert swapped is not None and "passes on as it is" not in (swapped.hint or "")
