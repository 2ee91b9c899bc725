"""Every bad input gives one line on stderr and exit code 2 (never a traceback)."""

import json

import numpy as np
import onnx
import pytest
from conftest import one_line_error
from onnx import TensorProto, helper

from lossgraph.graph import GraphMeta, LossGraph, ParamInfo
from lossgraph.spec import Input

SPECS = """
import torch
import lossgraph as lg

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
    def forward(self, x):
        return self.fc(x)

def _net():
    torch.manual_seed(0)
    return Net()

def spec():
    return lg.Spec(model=_net(), loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([4, 3])})

class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
    def forward(self, x):
        y = self.fc(x)
        if torch.equal(y, y.abs()):  # data-dependent control flow: torch.export cannot trace it
            return y
        return -y

def data_dependent():
    return lg.Spec(model=Branchy(), loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([4, 3])})

def nan_loss():
    return lg.Spec(model=_net(), loss=lambda model, x: torch.log(model(x) - 100.0).mean(),
                   inputs={"x": lg.Input([4, 3])})

def log_loss():
    return lg.Spec(model=_net(), loss=lambda model, x: (torch.log(x).sum(1, keepdim=True) * model(x)).mean(),
                   inputs={"x": lg.Input([4, 3], low=0.5, high=1.0)})

def non_scalar():
    return lg.Spec(model=_net(), loss=lambda model, x: model(x), inputs={"x": lg.Input([4, 3])})

def list_loss():
    return lg.Spec(model=_net(), loss=lambda model, x: [model(x).sum()], inputs={"x": lg.Input([4, 3])})

def other_names():
    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 5)  # nothing to pair: other names, other shapes
    model = Other()
    return lg.Spec(model=model, loss=lambda model, x: model.proj(x).pow(2).mean(),
                   inputs={"x": lg.Input([4, 3])})

def other_input():
    return lg.Spec(model=_net(), loss=lambda model, y: model(y).pow(2).mean(),
                   inputs={"y": lg.Input([4, 3])})

def bad_dtype():
    return lg.Spec(model=_net(), loss=lambda model, x: model(x).sum(),
                   inputs={"x": lg.Input([4, 3], dtype="complex64")})

def not_a_spec():
    return {"model": _net(), "inputs": {"x": lg.Input([4, 3])}}

def unaccepted_input():
    return lg.Spec(model=_net(), loss=lambda model, x: model(x).sum(),
                   inputs={"x": lg.Input([4, 3]), "y": lg.Input([4, 3])})

def missing_input():
    return lg.Spec(model=_net(), loss=lambda model, x, y: (model(x) * y).sum(),
                   inputs={"x": lg.Input([4, 3])})

def negative_dim():
    return lg.Spec(model=_net(), loss=lambda model, x: model(x).sum(),
                   inputs={"x": lg.Input([4, -3])})

def string_shape():
    return lg.Spec(model=_net(), loss=lambda model, x: model(x).sum(), inputs={"x": lg.Input("abc")})

def dict_with_non_scalar():
    return lg.Spec(model=_net(), loss=lambda model, x: {"total": model(x).sum(), "per_row": model(x)},
                   inputs={"x": lg.Input([4, 3])})
"""


@pytest.fixture
def specs(write_spec):
    return write_spec(SPECS, "cli_specs.py")


@pytest.fixture
def good_onnx(specs, cli, tmp_path):
    out = tmp_path / "good.onnx"
    result = cli("export", f"{specs}:spec", "-o", out)
    assert result.exit_code == 0, result.stderr
    return out


def test_export_of_a_missing_file(cli, tmp_path):
    line = one_line_error(cli("export", tmp_path / "nope.py", "-o", tmp_path / "x.onnx"))
    assert "does not exist" in line


def test_export_of_a_missing_function(cli, specs, tmp_path):
    line = one_line_error(cli("export", f"{specs}:nope", "-o", tmp_path / "x.onnx"))
    assert "has no function 'nope'" in line


@pytest.mark.parametrize(
    "name, message",
    [
        ("non_scalar", "loss 'loss' must be a scalar, got a tensor of shape [4, 2]"),
        ("list_loss", "must return a scalar tensor or a non-empty dict"),
        ("bad_dtype", "Input dtype must be one of"),
        ("not_a_spec", "not_a_spec() must return a lossgraph.Spec, got dict"),
        ("unaccepted_input", "does not accept the spec's inputs (x, y): got an unexpected "
                             "keyword argument 'y'; it takes (model, x)"),
        ("missing_input", "does not accept the spec's inputs (x): missing a required argument: "
                          "'y'; it takes (model, x, y)"),
        ("negative_dim", "Input shape must be a list of positive integers, got [4, -3]"),
        ("string_shape", "Input shape must be a list of positive integers, got 'abc'"),
        ("dict_with_non_scalar", "loss 'per_row' must be a scalar, got a tensor of shape [4, 2]"),
        # torch's own error is a generic TorchExportError: the cause and the user's line are named
        ("data_dependent", "DataDependentOutputException: aten.equal.default; torch.export cannot "
                           "trace it (data-dependent control flow or shapes)"),
    ],
)
def test_export_of_bad_specs(cli, specs, tmp_path, name, message):
    line = one_line_error(cli("export", f"{specs}:{name}", "-o", tmp_path / "x.onnx"))
    assert message in line


def test_verify_of_a_missing_graph(cli, good_onnx, tmp_path):
    line = one_line_error(cli("verify", good_onnx, tmp_path / "missing.onnx"))
    assert "does not exist" in line


def test_verify_of_a_non_lossgraph_onnx(cli, good_onnx, tmp_path):
    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(good_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    line = one_line_error(cli("verify", good_onnx, plain))
    assert "has no lossgraph metadata" in line


def test_verify_with_no_shared_parameters(cli, specs, good_onnx, tmp_path):
    other = tmp_path / "other.onnx"
    assert cli("export", f"{specs}:other_names", "-o", other).exit_code == 0
    line = one_line_error(cli("verify", good_onnx, other))
    assert "share no parameters" in line


def test_verify_with_different_inputs(cli, specs, good_onnx, tmp_path):
    other = tmp_path / "other.onnx"
    assert cli("export", f"{specs}:other_input", "-o", other).exit_code == 0
    line = one_line_error(cli("verify", good_onnx, other))
    assert "take different inputs" in line


def test_export_of_a_nan_loss(cli, specs, tmp_path):
    line = one_line_error(cli("export", f"{specs}:nan_loss", "-o", tmp_path / "x.onnx"))
    assert "Loss 'loss' is nan" in line


def test_verify_with_nan_outputs(cli, specs, tmp_path):
    graph = tmp_path / "log.onnx"
    assert cli("export", f"{specs}:log_loss", "-o", graph).exit_code == 0
    npz = tmp_path / "negative.npz"
    np.savez(npz, x=-np.ones((4, 3), np.float32))
    line = one_line_error(cli("verify", graph, graph, "--inputs", npz))
    assert "NaN or Inf in loss loss" in line


def test_verify_with_bad_inputs_file(cli, good_onnx, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((2, 2), np.float32))
    line = one_line_error(cli("verify", good_onnx, good_onnx, "--inputs", npz))
    assert "has shape [2, 2], expected [4, 3]" in line


def test_verify_with_bad_name_map(cli, good_onnx, tmp_path):
    name_map = tmp_path / "map.json"
    name_map.write_text(json.dumps({"fc.weight": "nothing.weight"}))
    line = one_line_error(cli("verify", good_onnx, good_onnx, "--name-map", name_map))
    assert "not a parameter of the candidate graph" in line
    name_map.write_text("{not json")
    assert "not valid JSON" in one_line_error(cli("verify", good_onnx, good_onnx, "--name-map", name_map))


def test_verify_with_unavailable_cuda(cli, good_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    line = one_line_error(cli("verify", good_onnx, good_onnx, "--device", "cuda"))
    assert "CUDAExecutionProvider" in line and "onnxruntime-gpu" in line


def _graph_with_op(tmp_path, op_type: str, domain: str):
    node = helper.make_node(op_type, ["x", "w"], ["loss"], domain=domain, name="mystery")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    meta = GraphMeta(framework="torch", losses=["loss"], inputs={"x": Input([2])},
                     params={"w": ParamInfo(shape=[2], dtype="float32", trainable=True)})
    path = tmp_path / f"{op_type}.onnx"
    LossGraph(model, meta).save(path)
    return path


def test_verify_names_unsupported_ops(cli, tmp_path):
    path = _graph_with_op(tmp_path, "FancyLoss", "my.domain")
    line = one_line_error(cli("verify", path, path))
    assert "my.domain::FancyLoss" in line


def test_debug_shows_the_traceback(cli, tmp_path):
    result = cli("--debug", "verify", tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_bad_usage_is_exit_2(cli):
    result = cli("verify", "only-one.onnx")
    assert result.exit_code == 2 and "Missing argument" in result.stderr


@pytest.mark.parametrize("side, source", [
    ("paddle", """
        import paddle
        import lossgraph as lg

        def spec():
            model = paddle.nn.Linear(3, 2)
            return lg.Spec(model=model, loss=lambda m, x, t: m(x).mean(),
                           inputs={"x": lg.Input([2, 3]), "t": lg.Input([2, 3])})
    """),
    ("torch", """
        import torch
        import lossgraph as lg

        def spec():
            model = torch.nn.Linear(3, 2)
            return lg.Spec(model=model, loss=lambda m, x: torch.nn.functional.ctc_loss(
                m(x).log_softmax(-1), torch.tensor([[1], [1]]), torch.tensor([2, 2]), torch.tensor([1, 1])),
                inputs={"x": lg.Input([2, 2, 3])})
    """),
])
def test_an_export_that_fails_says_why_in_one_line(cli, write_spec, tmp_path, side, source):
    """Paddle's static graph refuses an input the loss does not use (its own words name no
    input); torch.export cannot trace CTC's data-dependent shapes: each is one line naming the
    cause and, for torch, the user's line."""
    path = write_spec(source, f"fails_{side}.py")
    line = one_line_error(cli("export", f"{path}:spec", "-o", tmp_path / "x.onnx"))
    if side == "paddle":
        assert "an input in Spec.inputs (x, t) is not used by the loss" in line
    else:
        assert "aten._ctc_loss" in line and "fails_torch.py:" in line.split("(at ")[-1], line
