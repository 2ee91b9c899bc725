"""``verify --native``: each side's ONNX Runtime training against its framework's eager loop."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import EXAMPLES

import lossgraph as lg
from lossgraph.exporters.native import NativeStep
from lossgraph.graph import LossGraph
from lossgraph.verify.compare import Tolerance
from lossgraph.verify.pipeline import VerifyOptions, native_diffs

TOL = 1e-6

LINEAR = '''
import torch
from torch import nn

import lossgraph as lg


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


def loss(model, x, y):
    return ((model.fc(x) - y) ** 2).mean()


INPUTS = {"x": lg.Input([4, 3]), "y": lg.Input([4, 2])}


def sgd():
    """An optimizer, no schedule: steps train `loss` with it."""
    torch.manual_seed(0)
    model = One()
    return lg.Spec(model=model, loss=loss, inputs=INPUTS,
                   optimizers={"opt": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)})


def plain():
    """No optimizers: plain SGD, lr 1e-3, on both ORT and the native run."""
    torch.manual_seed(0)
    return lg.Spec(model=One(), loss=loss, inputs=INPUTS)
'''


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    path = tmp_path_factory.mktemp("native_specs") / "native_linear.py"
    path.write_text(textwrap.dedent(LINEAR))
    return path


def _fake_run(params: dict[str, np.ndarray], steps: int):
    outcome = SimpleNamespace(losses={"loss": 1.0}, params=params, opt_state={})
    return SimpleNamespace(records=lambda: [outcome] * steps)


def test_failing_parameter_diffs_are_reported():
    """A native step whose parameters part from the ORT step reports that diff (a failing
    ValueDiff is falsy; it must not be replaced by 0)."""
    ours = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    native = [NativeStep({"loss": 1.0}, {"w": np.full((2, 2), 1e-3), "b": np.full(2, 2e-3)})]
    options = VerifyOptions(steps=1, native=True,
                            native_runner=lambda *args, **kwargs: native)
    graph = SimpleNamespace(meta=SimpleNamespace(inputs={"x": lg.Input([1])}, accumulate=1))
    (diff,) = native_diffs(graph, ours, _fake_run(ours, 1), options, Tolerance(TOL))
    assert diff.parameters.max_abs_diff == pytest.approx(2e-3)
    assert not diff.parameters.passed and diff.worst_parameter == "b"
    agreeing = [NativeStep({"loss": 1.0}, {k: v.copy() for k, v in ours.items()})]
    options.native_runner = lambda *args, **kwargs: agreeing
    (diff,) = native_diffs(graph, ours, _fake_run(ours, 1), options, Tolerance(TOL))
    assert diff.parameters.max_abs_diff == 0.0 and diff.parameters.passed


def _native(report, side):
    return [(d["parameters"]["max_abs_diff"], max(v["max_abs_diff"] for v in d["losses"].values()))
            for d in report["native"][side]]


def test_optimizers_without_schedule(cli, exported, tmp_path):
    """bugs_torch.py:classifier has an optimizer and no schedule (it crashed with KeyError
    'sgd'): torch and Paddle each train like their eager selves."""
    report_path = tmp_path / "native.json"
    result = cli("verify", exported(str(EXAMPLES / "bugs/bugs_torch.py:classifier")),
                 exported(str(EXAMPLES / "bugs/bugs_paddle.py:classifier")),
                 "--steps", "3", "--native", "--json", report_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    for side in ("reference", "candidate"):
        diffs = _native(report, side)
        assert len(diffs) == 3
        assert all(p <= TOL and loss <= TOL for p, loss in diffs), (side, diffs)
    assert "Native fidelity, reference" in result.stdout
    assert "Native fidelity, candidate" in result.stdout


@pytest.mark.parametrize("name", ["sgd", "plain"])
def test_native_agrees_with_ort(cli, exported, linear, tmp_path, name):
    report_path = tmp_path / "native.json"
    graph = exported(f"{linear}:{name}")
    result = cli("verify", graph, graph, "--steps", "3", "--native", "--json", report_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert [s["optimizer"] for s in report["steps"]] == ["opt" if name == "sgd" else "sgd"] * 3
    assert all(p <= TOL for p, _ in _native(report, "reference"))


def test_native_reports_parameters_that_part(cli, exported, linear, tmp_path):
    """A graph whose recorded learning rate is not its spec's trains differently on ORT than
    natively: --native reports the parameter diff at every step."""
    original = exported(f"{linear}:sgd")
    graph = LossGraph.load(original)
    graph.meta.optimizers["opt"].groups[0]["lr"] = 0.2
    tampered = tmp_path / "tampered.onnx"
    graph.save(tampered)
    report_path = tmp_path / "native.json"
    cli("verify", tampered, original, "--steps", "2", "--native", "--no-noise-floor",
        "--json", report_path)
    report = json.loads(report_path.read_text())
    parted = _native(report, "reference")
    assert all(p > 1e-3 for p, _ in parted), parted
    assert parted[1][1] > 1e-4  # the second step's losses follow the other weights
    assert all(p <= TOL for p, _ in _native(report, "candidate"))
    assert report["native"]["reference"][0]["parameters"]["worst"].startswith("fc.")


def test_a_graph_that_does_not_train_like_eager_fails_the_verdict(cli, exported, linear, tmp_path):
    """Two graphs that agree with each other, but not with their framework's eager training,
    never pass: the verdict is exit 1, naming the side and the step."""
    graph = LossGraph.load(exported(f"{linear}:sgd"))
    graph.meta.optimizers["opt"].groups[0]["lr"] = 0.2
    tampered = tmp_path / "tampered.onnx"
    graph.save(tampered)
    report_path = tmp_path / "native.json"
    result = cli("verify", tampered, tampered, "--steps", "2", "--native", "--json", report_path)
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "DIVERGED" in result.stdout
    assert "The exported reference graph does not train like torch eager: step 0" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["verdict"] == "diverged"
    assert len(report["native_failures"]) == 2
