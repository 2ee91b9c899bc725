"""lossgraph verify on the forward losses: exit codes, JSON report, parameter transplant."""

import json

import numpy as np
import pytest
from conftest import DISCOGAN, LOSSES, one_line_error

import lossgraph as lg
from lossgraph.inputs import make_inputs


def verify_json(cli, ref, cand, tmp_path, *args):
    out = tmp_path / "report.json"
    result = cli("verify", ref, cand, "--tol", "1e-6", "--json", out, *args)
    return result, json.loads(out.read_text()) if out.exists() else None


def test_discogan_against_itself_passes(cli, exported, tmp_path):
    onnx_path = exported(f"{DISCOGAN}/discogan_torch.py")
    result, report = verify_json(cli, onnx_path, onnx_path, tmp_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    assert report["passed"] is True and report["first_divergence"] is None
    assert set(report) >= {"passed", "tolerance", "reference", "candidate", "steps",
                           "first_divergence", "noise_floor"}
    losses = report["steps"][0]["losses"]
    assert set(losses) == {"gen_loss", "dis_loss"}
    assert set(losses["gen_loss"]) >= {"reference", "candidate", "abs_diff", "passed"}
    assert report["reference"]["framework"] == "torch"
    assert report["tolerance"]["atol"] == 1e-6


@pytest.mark.parametrize(
    "planted, diverged, agreed",
    [("bce_weighting", "dis_loss", "gen_loss"),
     pytest.param("recon_rate", "gen_loss", "dis_loss", marks=pytest.mark.slow)],  # a DiscoGAN export of its own
)
def test_planted_change_exits_1_and_names_the_loss(cli, exported, tmp_path, planted, diverged, agreed):
    ref = exported(f"{DISCOGAN}/discogan_torch.py")
    cand = exported(f"{DISCOGAN}/discogan_torch_planted.py:{planted}")
    result, report = verify_json(cli, ref, cand, tmp_path)
    assert result.exit_code == 1
    assert report["passed"] is False
    losses = report["steps"][0]["losses"]
    assert losses[diverged]["passed"] is False and losses[diverged]["abs_diff"] > 1e-5
    assert losses[agreed]["passed"] is True
    div = report["first_divergence"]
    assert div["loss"] == diverged and div["phase"] == "forward" and div["step"] == 0
    assert div["source"]["file"].endswith("discogan_torch.py")
    assert "DIVERGED" in result.stdout


@pytest.mark.slow  # a DiscoGAN export of its own (18 s)
def test_hinge_margin_change_is_a_no_op_on_discogan(cli, exported, tmp_path):
    # DiscoGAN's feature-matching targets are all ones: HingeEmbeddingLoss then ignores margin.
    ref = exported(f"{DISCOGAN}/discogan_torch.py")
    cand = exported(f"{DISCOGAN}/discogan_torch_planted.py:hinge_margin")
    result, report = verify_json(cli, ref, cand, tmp_path)
    assert result.exit_code == 0 and report["passed"]


def test_weights_are_carried_from_reference_to_candidate(tmp_path):
    # Two Linear heads initialised differently give the same losses once the weights are carried.
    spec = lg.load_spec(f"{LOSSES}/losses_torch.py:mse")
    ref = lg.export(spec, tmp_path / "ref.onnx")
    import torch

    with torch.no_grad():
        spec.model.fc.weight.add_(1.0)
    cand = lg.export(spec, tmp_path / "cand.onnx")
    assert ref.meta.eager["losses"]["mean"] != cand.meta.eager["losses"]["mean"]
    result = lg.verify(tmp_path / "ref.onnx", tmp_path / "cand.onnx")
    assert result.passed
    assert [p.how for p in result.param_map.pairs] == ["name", "name"]


def test_name_map_pairs_renamed_parameters(cli, write_spec, tmp_path):
    source = """
    import torch
    import lossgraph as lg

    class A(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

    class B(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)

    def loss_a(model, x):
        return model.fc(x).pow(2).mean()

    def loss_b(model, x):
        return model.proj(x).pow(2).mean()

    def a():
        return lg.Spec(model=A(), loss=loss_a, inputs={"x": lg.Input([2, 3])})

    def b():
        return lg.Spec(model=B(), loss=loss_b, inputs={"x": lg.Input([2, 3])})

    def b_transposed():
        def loss(model, x):
            return (x @ model.proj.weight + model.proj.bias).pow(2).mean()
        return lg.Spec(model=B(), loss=loss, inputs={"x": lg.Input([2, 3])})
    """
    path = write_spec(source, "renamed.py")
    for name in ("a", "b", "b_transposed"):
        assert cli("export", f"{path}:{name}", "-o", tmp_path / f"{name}.onnx").exit_code == 0
    name_map = tmp_path / "map.json"
    name_map.write_text(json.dumps({"fc.weight": "proj.weight", "fc.bias": "proj.bias"}))
    result, report = verify_json(cli, tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path,
                                 "--name-map", name_map)
    assert result.exit_code == 0
    assert {p["how"] for p in report["parameter_map"]["pairs"]} == {"map"}
    # a square weight used transposed: the map's transpose flag makes them agree
    result, _ = verify_json(cli, tmp_path / "a.onnx", tmp_path / "b_transposed.onnx", tmp_path,
                            "--name-map", name_map)
    assert result.exit_code == 1
    name_map.write_text(json.dumps({"fc.weight": {"name": "proj.weight", "transpose": True},
                                    "fc.bias": "proj.bias"}))
    result, report = verify_json(cli, tmp_path / "a.onnx", tmp_path / "b_transposed.onnx", tmp_path,
                                 "--name-map", name_map)
    assert result.exit_code == 0
    assert report["parameter_map"]["pairs"][0]["transform"] == "transpose"


def test_unmapped_parameters_are_reported(cli, write_spec, tmp_path):
    source = """
    import torch
    import lossgraph as lg

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)
            self.extra = torch.nn.Linear(3, 3)

    def one():
        return lg.Spec(model=One(), loss=lambda model, x: model.fc(x).pow(2).mean(),
                       inputs={"x": lg.Input([2, 3])})

    def two():
        return lg.Spec(model=Two(), loss=lambda model, x: model.extra(model.fc(x)).pow(2).mean(),
                       inputs={"x": lg.Input([2, 3])})

    def wide():
        m = One()
        m.fc = torch.nn.Linear(3, 4)
        return lg.Spec(model=m, loss=lambda model, x: model.fc(x)[:, :3].pow(2).mean(),
                       inputs={"x": lg.Input([2, 3])})
    """
    path = write_spec(source, "unmapped.py")
    for name in ("one", "two", "wide"):
        assert cli("export", f"{path}:{name}", "-o", tmp_path / f"{name}.onnx").exit_code == 0
    line = one_line_error(cli("verify", tmp_path / "one.onnx", tmp_path / "two.onnx"))
    assert "unmapped in candidate (2 of 4): extra.weight, extra.bias" in line
    result, report = verify_json(cli, tmp_path / "one.onnx", tmp_path / "two.onnx", tmp_path,
                                 "--allow-unmapped")
    assert result.exit_code == 1  # the extra layer changes the loss
    assert report["parameter_map"]["unmapped_candidate"] == ["extra.weight", "extra.bias"]
    line = one_line_error(cli("verify", tmp_path / "one.onnx", tmp_path / "wide.onnx"))
    assert "shape mismatch: fc.weight [3, 3] vs fc.weight [4, 3]" in line


def test_inputs_file_overrides_seeded_inputs(cli, exported, tmp_path):
    onnx_path = exported(f"{LOSSES}/losses_torch.py:mse")
    graph = lg.graph.LossGraph.load(onnx_path)
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **make_inputs(graph.meta.inputs, seed=11))
    result, report = verify_json(cli, onnx_path, onnx_path, tmp_path, "--inputs", npz)
    assert result.exit_code == 0 and report["inputs"] == str(npz)
    seeded = lg.verify(onnx_path, onnx_path, seed=11)
    assert seeded.steps[0].losses["mean"].reference == report["steps"][0]["losses"]["mean"]["reference"]


def test_rtol_loosens_the_rule(exported, tmp_path):
    ref = exported(f"{DISCOGAN}/discogan_torch.py")
    cand = exported(f"{DISCOGAN}/discogan_torch_planted.py:bce_weighting")
    strict = lg.verify(ref, cand, tol=1e-6)
    loose = lg.verify(ref, cand, tol=1e-6, rtol=1e-3)
    assert not strict.passed and loose.passed
    diff = strict.steps[0].losses["dis_loss"].diff
    assert diff.required_tol == pytest.approx(diff.max_abs_diff)


def test_help_states_the_tolerance_rule(cli):
    result = cli("verify", "--help")
    assert "|candidate - reference| <= tol + rtol * |reference|" in " ".join(result.stdout.split())
