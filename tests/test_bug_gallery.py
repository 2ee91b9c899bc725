"""The bug gallery (examples/bugs/catalog.py): every porting bug is found at the right step,
phase and module scope, with the right likely cause; the correct ports pass."""

import json
import math
import sys

import pytest
from conftest import EXAMPLES

sys.path.insert(0, str(EXAMPLES / "bugs"))
from catalog import BUGS, CORRECT  # noqa: E402


def _verify(cli, exported, reference, candidate, args, tmp_path):
    report = tmp_path / "report.json"
    result = cli("verify", exported(str(EXAMPLES / reference)), exported(str(EXAMPLES / candidate)),
                 "--tol", "1e-6", "--json", report, *args)  # a later --tol in args wins
    return result, json.loads(report.read_text())


def test_gallery_has_the_design_pitfalls():
    assert len(BUGS) >= 10
    assert len({b.name for b in BUGS}) == len(BUGS)
    assert {b.phase for b in BUGS} == {"forward", "backward", "update"}


#: gallery entries run with the slow checks: DiscoGAN with gradients (30 s); its reversed twin stays
SLOW = {"batchnorm_epsilon"}


@pytest.mark.parametrize("bug", [pytest.param(b, marks=pytest.mark.slow) if b.name in SLOW else b for b in BUGS],
                         ids=[b.name for b in BUGS])
def test_bug_is_localized(cli, exported, bug, tmp_path):
    result, report = _verify(cli, exported, bug.reference, bug.candidate, bug.args, tmp_path)
    assert result.exit_code == 1, result.stdout
    found = report["first_divergence"]
    assert found["localized"], found
    assert 0 < found["max_abs_diff"] < math.inf, found  # a size, not a placeholder
    assert (found["step"], found["phase"]) == (bug.step, bug.phase), found
    assert found["scope"].startswith(bug.scope), found
    assert found["op_type"] == (bug.op or found["op_type"]), found
    if not bug.scope:
        assert found["scope"] == "", found
    assert bug.hint.lower() in (found["hint"] or "").lower(), found
    assert "likely cause" in result.stdout  # the terminal report leads with it


@pytest.mark.parametrize("reference, candidate, args", CORRECT, ids=[c[1] for c in CORRECT])
def test_correct_port_passes(cli, exported, reference, candidate, args, tmp_path):
    result, report = _verify(cli, exported, reference, candidate, args, tmp_path)
    assert result.exit_code == 0, result.stdout
    assert report["first_divergence"] is None
    assert report["passed"]


@pytest.mark.slow
def test_discogan_port_five_steps_is_float32_noise(cli, exported, tmp_path):
    """The seeds' DiscoGAN pair, correct: five alternating Adam steps; at a tolerance far below
    float32 rounding every step diff is reported, and every one is within it in float64. The
    float64 re-run computes with the float32 hyper-parameters and exact bias corrections, so
    torch's and Paddle's Adam (one formula in two orders) agree to float64 rounding (measured
    6.9e-16); with each framework's float32-rounded step sizes they were 5.5e-9 apart."""
    result, report = _verify(cli, exported, "discogan/discogan_torch.py:spec",
                             "discogan/discogan_paddle.py:spec", ("--steps", "5", "--tol", "1e-9"),
                             tmp_path)
    assert result.exit_code == 0, result.stdout
    floor = report["noise_floor"]
    assert report["verdict"] == "noise" and floor["verdict"] == "noise"
    assert len(floor["items"]) > 100  # losses, gradients, parameters and moments of 5 steps
    assert all(i["float64"] <= 1e-12 for i in floor["items"])


@pytest.mark.slow
def test_discogan_training_mode_port_is_float32_noise(cli, exported, tmp_path):
    """The same pair in training mode (BatchNorm batch statistics, dropout): Adam on gradients
    near its epsilon amplifies float32 rounding to 3.5e-2 in five steps; in float64 the two
    sides stay within 3e-9 (they were 1.9e-6 apart, a false DIVERGED, while the float64 re-run
    kept each framework's float32-rounded Adam step sizes)."""
    result, report = _verify(cli, exported, "discogan/discogan_torch.py:spec_train",
                             "discogan/discogan_paddle.py:spec_train",
                             ("--grads", "--steps", "5"), tmp_path)
    assert result.exit_code == 0, result.stdout
    floor = report["noise_floor"]
    assert floor["verdict"] == "noise" and len(floor["items"]) > 100
    assert max(i["float64"] for i in floor["items"]) < 1e-7


@pytest.mark.parametrize("seed", range(1, 9))
def test_hinge_margin_is_found_at_every_seed(cli, exported, seed, tmp_path):
    """The margin shows only where y = -1: a [2, 1] target of +-1 was all +1 at a quarter of the
    seeds, and the bug passed there; the inputs now hold every choice (seed 0 is above)."""
    bug = next(b for b in BUGS if b.name == "hinge_margin")
    result, report = _verify(cli, exported, bug.reference, bug.candidate, ("--seed", str(seed)), tmp_path)
    assert result.exit_code == 1, result.stdout
    assert report["first_divergence"]["step"] == 0
