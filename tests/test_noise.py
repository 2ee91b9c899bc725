"""The noise rule: a diff above the tolerance is noise exactly when the float64 re-run of the same
comparison is within the tolerance; the float64 re-run computes with each framework's float32
hyper-parameters; the first divergence is never an item the report calls noise."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_spec_files

from lossgraph.graph import OptimizerInfo, ParamInfo
from lossgraph.optim import build_update
from lossgraph.verify.compare import Tolerance, compare_arrays
from lossgraph.verify.noise import classify, semantic_view
from lossgraph.verify.pipeline import VerifyOptions, run_verify
from lossgraph.verify.results import GradDiff, LossDiff, StepResult

TOL = Tolerance(1e-6)


def _diff(size: float):
    return compare_arrays(np.zeros(1), np.full(1, size), TOL)


def _step(step: int, loss: float, grad: float) -> StepResult:
    return StepResult(
        step=step,
        losses={"loss": LossDiff("loss", 0.0, loss, _diff(loss))},
        gradients={"w": GradDiff({"loss": _diff(grad)})},
    )


def test_noise_is_a_float64_diff_within_the_tolerance():
    # float32 1e-3 that stays 5e-6 in float64: semantic, though it shrank 200-fold
    # float32 1e-5 that is 9e-7 in float64: noise, though it shrank only 11-fold
    floor = classify([_step(0, 1e-3, 1e-5)], [_step(0, 5e-6, 9e-7)])
    verdicts = {item["what"]: item["verdict"] for item in floor["items"]}
    assert verdicts == {"loss loss": "semantic", "gradient w (loss)": "noise"}
    assert floor["verdict"] == "semantic"
    assert "within the tolerance" in floor["rule"]


def test_rounding_the_computation_amplifies_is_noise_only_where_the_reference_moves_as_much():
    steps32 = [_step(0, 1e-3, 1e-3)]
    steps64 = [_step(0, 5e-6, 5e-6)]
    # the reference nudged by a rounding error: its loss moves 1e-6, its gradient 1e-13
    floor = classify(steps32, steps64, nudged=[_step(0, 1e-6, 1e-13)])
    items = {item["what"]: item for item in floor["items"]}
    assert items["loss loss"]["verdict"] == "noise" and items["loss loss"]["reason"] == "amplified"
    assert items["loss loss"]["float64_nudged"] == 1e-6
    assert items["gradient w (loss)"]["verdict"] == "semantic"  # 5e-6 is 5e7 times 1e-13
    assert floor["verdict"] == "semantic"
    # a float64 diff that did not shrink 10-fold is semantic however far the reference moves
    floor = classify([_step(0, 1e-5, 1e-5)], [_step(0, 5e-6, 5e-6)], nudged=[_step(0, 1e-4, 1e-4)])
    assert {item["verdict"] for item in floor["items"]} == {"semantic"}


def test_the_first_divergence_skips_what_the_report_calls_noise():
    steps32 = [_step(0, 1e-5, 1e-5), _step(1, 1e-7, 1e-3)]
    floor = classify(steps32, [_step(0, 1e-9, 1e-9), _step(1, 1e-9, 2e-5)])
    view = semantic_view(steps32, floor)
    assert view[0].passed  # step 0's diffs are noise
    assert not view[1].passed and view[1].phase_failed() == "backward"
    assert not steps32[0].passed  # the float32 results themselves are unchanged


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_float64_updates_compute_with_the_float32_hyper_parameters(framework):
    cls, group = (("SGD", {"lr": 0.1, "momentum": 0.9}) if framework == "torch"
                  else ("Momentum", {"learning_rate": 0.1, "momentum": 0.9}))
    info = OptimizerInfo(cls=cls, framework=framework, groups=[{"params": ["w"], **group}])
    params = {"w": ParamInfo([3], "float32", True)}
    rng = np.random.default_rng(0)
    w = rng.normal(size=3).astype(np.float32) * 100
    grads = [rng.normal(size=3).astype(np.float32) * 100 for _ in range(3)]
    runs = {}
    for dtype, scalars in (("float32", None), ("float64", "float32"), ("float64", None)):
        update = build_update(info, params, dtype=dtype, scalars=scalars)
        value, state = {"w": w.astype(dtype)}, update.init_state()
        for g in grads:
            value, state = update.step(value, {"w": g.astype(dtype)}, state, 0.1)
        runs[dtype, scalars] = np.asarray(value["w"], np.float64)
    exact = runs["float64", "float32"]
    # the float32 run differs from its exact re-run by rounding only
    assert np.max(np.abs(runs["float32", None] - exact)) < 1e-4
    # a float64 run with 0.9 itself, not float32's 0.9, is another computation
    if framework == "torch":
        assert np.max(np.abs(runs["float64", None] - exact)) > 1e-7


def _adam_runs(beta2_paddle: float, scalars: str) -> tuple[np.ndarray, np.ndarray]:
    """torch Adam and Paddle Adam (lr 2e-4, betas (0.5, beta2), weight decay 1e-5) for 4 float64
    steps from one start, on gradients near Adam's epsilon as well as large ones."""
    torch = OptimizerInfo(cls="Adam", framework="torch", groups=[
        {"params": ["w"], "lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 1e-5}])
    paddle = OptimizerInfo(cls="Adam", framework="paddle", groups=[
        {"params": ["w"], "learning_rate": 2e-4, "beta1": 0.5, "beta2": beta2_paddle,
         "epsilon": 1e-8, "weight_decay": 1e-5}])
    params = {"w": ParamInfo([64], "float32", True)}
    rng = np.random.default_rng(1)
    w = rng.normal(size=64)
    grads = [rng.normal(size=64) * np.logspace(-10, 2, 64) for _ in range(4)]
    runs = []
    for info in (torch, paddle):
        update = build_update(info, params, dtype="float64", scalars=scalars)
        value, state = {"w": w}, update.init_state()
        for g in grads:
            value, state = update.step(value, {"w": g}, state, 2e-4)
        runs.append(np.asarray(value["w"]))
    return runs[0], runs[1]


def test_the_noise_floor_computes_one_adam_in_two_orders_to_float64_rounding():
    """torch and Paddle write Adam in two orders (torch divides by its bias corrections computed
    in Python, Paddle folds them into lr_t and eps_t from float32 accumulators). With each
    framework's float32 scalars the float64 re-runs differ at float32 size, which GAN training
    amplifies past 1e-6 (the DiscoGAN training pair); with float32 hyper-parameters and exact
    derived scalars they agree to float64 rounding, and a beta2 that differs in float32 still
    differs."""
    torch, paddle = _adam_runs(0.999, "hyper-float32")
    assert np.max(np.abs(torch - paddle)) < 1e-15
    torch, paddle = _adam_runs(0.999, "float32")
    assert np.max(np.abs(torch - paddle)) > 1e-12
    torch, paddle = _adam_runs(0.9991, "hyper-float32")
    assert np.max(np.abs(torch - paddle)) > 1e-9


MOMENTUM_TORCH = """
import torch
import lossgraph as lg


def spec():
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    return lg.Spec(
        model=model,
        loss=lambda model, x, y: ((model(x) - y) ** 2).mean(),
        inputs={"x": lg.Input([8, 16], low=-100.0, high=100.0), "y": lg.Input([8, 4])},
        optimizers={"opt": torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)},
    )
"""

MOMENTUM_PADDLE = """
import paddle
import lossgraph as lg


def spec():
    model = paddle.nn.Linear(16, 4)
    return lg.Spec(
        model=model,
        loss=lambda model, x, y: ((model(x) - y) ** 2).mean(),
        inputs={"x": lg.Input([8, 16], low=-100.0, high=100.0), "y": lg.Input([8, 4])},
        optimizers={"opt": paddle.optimizer.Momentum(1e-5, momentum=0.9,
                                                     parameters=model.parameters())},
    )
"""


def test_a_correct_momentum_port_is_not_called_semantic(tmp_path_factory, exported):
    """torch's SGD and Paddle's Momentum both compute with float32's 0.9; a float64 re-run that
    gave torch 0.9 itself made max|grad| x (0.9 - fl32(0.9)) a 'semantic' difference."""
    files = write_spec_files(tmp_path_factory, "momentum", {"t": MOMENTUM_TORCH, "p": MOMENTUM_PADDLE})
    result = run_verify(exported(str(files["t"])), exported(str(files["p"])),
                        VerifyOptions(tol=1e-6, grads=True, steps=3))
    floor = result.noise_floor
    assert floor is not None and floor["items"], "the float32 run should differ above 1e-6 here"
    assert floor["verdict"] == "noise", [i for i in floor["items"] if i["verdict"] != "noise"]
    assert floor["max_float64_diff"] <= 1e-6
    assert result.passed
    # a passing run shows its noise as noise: in the JSON items, the terminal and the HTML
    from io import StringIO

    from rich.console import Console

    from lossgraph.verify.report import render_html, render_verify, report_dict

    report = report_dict(result)
    kinds = [v for step in report["steps"]
             for group in ("losses", "gradients", "parameters", "optimizer_state")
             for v in step[group].values()]
    verdicts = {v["verdict"] for v in kinds}
    assert "noise" in verdicts and verdicts <= {"pass", "noise"}, verdicts
    out = StringIO()
    render_verify(result, Console(file=out, width=150, color_system=None))
    assert "FAIL" not in out.getvalue()
    page = render_html(report)
    assert 'class="fail"' not in page and 'class="box divergence"' not in page


def test_a_localization_of_size_zero_is_not_reported(tmp_path_factory, exported, monkeypatch):
    """Where the node search measures no difference at the node it stops at, the report names
    where the difference was observed (here the loss), with its real size, and no hint of a node
    that does not differ."""
    from lossgraph.verify import localize
    from lossgraph.verify.results import Divergence

    def nothing_there(*args, **kwargs):
        return Divergence(step=0, phase="forward", scope="fc", op_type="Gemm", reference_node="n",
                          candidate_node="-", max_abs_diff=0.0, localized=True), {}

    monkeypatch.setattr(localize, "localize_forward", nothing_there)
    files = write_spec_files(tmp_path_factory, "zero", {
        "t": MOMENTUM_TORCH,
        "c": MOMENTUM_TORCH.replace("((model(x) - y) ** 2).mean()", "((model(x) - y) ** 2).mean() * 1.01"),
    })
    result = run_verify(exported(str(files["t"])), exported(str(files["c"])), VerifyOptions(tol=1e-6))
    found = result.first_divergence
    assert not result.passed and found.max_abs_diff > 0
    assert found.reference_node != "n" and not found.localized and found.loss == "loss"


TAPPED = """
import torch
import lossgraph as lg


class Body(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) * {scale}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Body()

    def forward(self, x):
        return self.body(x)


def spec():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=lambda model, x: model(x).sum() * 1e-7,
                   inputs={{"x": lg.Input([5, 4])}})
"""


def test_a_module_output_that_parts_is_a_divergence_when_the_losses_agree(tmp_path_factory, exported):
    """Node by node: a flat loss (here scaled by 1e-7) must not hide a module that computes
    something else."""
    files = write_spec_files(tmp_path_factory, "tapped", {
        "t": TAPPED.format(scale=1.0), "c": TAPPED.format(scale=1.01),
    })
    result = run_verify(exported(str(files["t"])), exported(str(files["c"])), VerifyOptions(tol=1e-6))
    step = result.steps[0]
    assert all(d.passed for d in step.losses.values())
    assert not step.taps["body#0"].passed and step.taps["body#0"].max_abs_diff > 1e-3
    assert not result.passed and result.first_divergence.phase == "forward"
    assert result.first_divergence.scope.startswith("body")
    same = run_verify(exported(str(files["t"])), exported(str(files["t"])), VerifyOptions(tol=1e-6))
    assert same.passed and same.steps[0].taps


INSTANCE_NORM = """
    import sys
    sys.path.insert(0, {folder!r})
    import paddle
    import layers_paddle

    def spec():
        found = layers_paddle.instance_norm_affine()
        found.optimizers = {{"adam": paddle.optimizer.Adam(parameters=found.model.parameters(),
                                                          learning_rate={lr})}}
        return found
"""


@pytest.mark.parametrize("lr", [1e-2, 1.1e-2])
def test_adam_on_a_gradient_zero_but_for_rounding_is_noise_and_a_real_difference_beside_it_is_not(
        write_spec, exported, lr):
    """A bias before InstanceNorm has a gradient zero but for rounding at step 0; Adam turns it
    into a full-size step in float32 and float64 parts the biases by 4e-6 a step later: the
    reference nudged by a rounding error moves as far, so it is noise. A learning rate that
    differs beside it stays semantic."""
    from conftest import EXAMPLES

    candidate = exported(str(write_spec(INSTANCE_NORM.format(folder=str(EXAMPLES / "catalog"), lr=lr),
                                        f"instance_norm_{lr}.py")) + ":spec")
    result = run_verify(exported(f"{EXAMPLES}/catalog/layers_torch.py:instance_norm_affine"), candidate,
                        VerifyOptions(grads=True, steps=2))
    amplified = [i for i in result.noise_floor["items"] if i.get("reason") == "amplified"]
    assert [i["what"] for i in amplified] == ["parameter layer.bias"]
    assert amplified[0]["float64"] <= 10 * amplified[0]["float64_nudged"]
    if lr == 1e-2:
        assert result.passed and result.noise_only
        from rich.console import Console

        from lossgraph.verify.report import render_verify

        console = Console(record=True, width=200)
        render_verify(result, console)
        text = console.export_text()
        assert "FAIL" not in text and "amplified: step 1 parameter layer.bias" in text  # rows say noise
        # each side's float64 ONNX Runtime and framework runs part as far, by the same amplification
        from lossgraph.cli import native_runner

        native = run_verify(exported(f"{EXAMPLES}/catalog/layers_torch.py:instance_norm_affine"), candidate,
                            VerifyOptions(grads=True, steps=2, native=True, native_runner=native_runner()))
        assert native.passed and not native.native_failures
        assert any(d.amplified for diffs in native.native.values() for d in diffs)
    else:
        assert not result.passed
        assert (result.first_divergence.step, result.first_divergence.phase) == (0, "update")


def test_a_native_diff_is_amplified_rounding_only_where_every_parameter_is():
    """--native: each parameter whose float64 difference stays above the tolerance must have
    shrunk 10-fold and stay within 10x of the float64 reference's own nudged movement of the
    paired parameter; one real difference beside a chaotic bias keeps the diff semantic."""
    from lossgraph.verify.noise import amplified_native
    from lossgraph.verify.results import NativeDiff

    def native(each32, each64):
        loss = {"loss": _diff(0.0)}
        exact = NativeDiff(1, loss, _diff(max(each64.values())), "", each=each64)
        return NativeDiff(1, loss, _diff(max(each32.values())), "", float64=exact, each=each32)

    nudged = [StepResult(step=1, losses={}, parameters={"b": _diff(2e-5), "w": _diff(1e-14)})]
    names = {"b": "b", "w": "w"}
    chaotic = native({"b": 4e-3, "w": 1e-7}, {"b": 9e-6, "w": 1e-15})
    assert amplified_native(chaotic, nudged, names, TOL) == 2e-5
    real_beside = native({"b": 4e-3, "w": 1e-5}, {"b": 9e-6, "w": 1e-5})
    assert amplified_native(real_beside, nudged, names, TOL) is None
    unpaired = native({"b": 4e-3}, {"b": 9e-6})
    assert amplified_native(unpaired, nudged, {}, TOL) is None
