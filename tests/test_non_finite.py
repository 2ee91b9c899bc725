"""NaN and Inf: on one side only a divergence (exit 1, localized to the first node that makes
them), on both sides alike bad input (exit 2, naming that node); a divergence found at one
step stands whatever later steps do."""

from __future__ import annotations

import json

import numpy as np
from conftest import write_spec_files

SPEC = """
import torch
import lossgraph as lg


def loss(model, x, y):
    out = model(x)
    return {expr}


def spec():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return lg.Spec(
        model=model, loss=loss,
        inputs={{"x": lg.Input([5, 4]), "y": lg.Input([5, 3])}},
        optimizers={{"opt": torch.optim.SGD(model.parameters(), lr={lr})}},
    )
"""

SQUARED = "((out - y) ** 2).mean()"
#: finite on the seeded inputs (the export's eager check), NaN on the inputs of ``_far``
LOGGED = "torch.log(out + 100.0).mean() + ((out - y) ** 2).mean()"


def _specs(tmp_path_factory, name, **sources):
    return write_spec_files(tmp_path_factory, name, sources)


def _far(tmp_path):
    """Inputs that take the Linear's outputs below -100 (the log's argument below zero)."""
    path = tmp_path / "far.npz"
    x = np.full((5, 4), -1e4, np.float32)
    x[:, ::2] = 1e4  # whatever the signs of the weights, some outputs go far below -100
    np.savez(path, x=x, y=np.zeros((5, 3), np.float32))
    return path


def _verify(cli, exported, files, tmp_path, *args):
    out = tmp_path / "r.json"
    result = cli("verify", exported(str(files["ref"])), exported(str(files["cand"])), "--json", out,
                 "--inputs", _far(tmp_path), *args)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_nan_on_one_side_is_a_localized_divergence(cli, exported, tmp_path_factory, tmp_path):
    files = _specs(tmp_path_factory, "nan_one",
                   ref=SPEC.format(expr=SQUARED, lr=0.01), cand=SPEC.format(expr=LOGGED, lr=0.01))
    result, report = _verify(cli, exported, files, tmp_path)
    assert result.exit_code == 1, result.stdout + result.stderr
    found = report["first_divergence"]
    assert found["phase"] == "forward" and found["op_type"] == "Log"
    assert found["candidate_node"] and found["hint"].startswith("Only the candidate computes NaN")


def test_nan_on_both_sides_is_bad_input_naming_the_node(cli, exported, tmp_path_factory, tmp_path):
    files = _specs(tmp_path_factory, "nan_both",
                   ref=SPEC.format(expr=LOGGED, lr=0.01), cand=SPEC.format(expr=LOGGED, lr=0.01))
    for args in ((), ("--grads", "--steps", "2")):
        result, report = _verify(cli, exported, files, tmp_path, *args)
        assert result.exit_code == 2 and report is None
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Both graphs produce NaN or Inf" in lines[0]
        assert "Log node" in lines[0]


def test_a_divergence_stands_whatever_the_next_step_does(cli, exported, tmp_path_factory, tmp_path):
    files = _specs(tmp_path_factory, "lr_blowup",
                   ref=SPEC.format(expr=SQUARED, lr=1e-3), cand=SPEC.format(expr=SQUARED, lr=1e30))
    result, report = _verify(cli, exported, files, tmp_path, "--steps", "3")
    assert result.exit_code == 1, result.stdout + result.stderr
    found = report["first_divergence"]
    assert found["step"] == 0 and found["phase"] == "update"
    assert found["max_abs_diff"] > 0
