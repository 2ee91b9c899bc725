"""Gradient accumulation (``Spec.accumulate=K``: K micro-batches, K input draws, per optimizer
step), a loop that never clears its gradients (``Spec.clear_grads=False``) and a new batch each
step (``fresh_inputs`` / ``--fresh-inputs``). Ground truth is each framework's own eager loop
(``--native``: forward and backward per micro-batch, then the step, with or without
``zero_grad()``/``clear_grad()``); the planted mistakes are the two that break accumulation in
ports: the loss not divided by K, the clear forgotten."""

import numpy as np
import pytest
from conftest import variant_exporter

import lossgraph as lg
from lossgraph.cli import native_runner
from lossgraph.errors import VerificationError
from lossgraph.inputs import Draws, make_inputs
from lossgraph.spec import Input

SOURCE = '''
    import {fw}
    import lossgraph as lg

    def spec():
        {fw}.{seed}(0)
        model = {fw}.nn.Sequential({fw}.nn.Linear(4, 8), {fw}.nn.Tanh(), {fw}.nn.Dropout(0.25),
                                   {fw}.nn.Linear(8, 2))
        loss = lambda m, x, y: ((m(x) - y) ** 2).mean() {divide}
        opt = {adam}
        return lg.Spec(model=model, loss=loss, inputs={{"x": lg.Input([6, 4]), "y": lg.Input([6, 2])}},
                       optimizers={{"opt": opt}}, accumulate={k}, clear_grads={clear}, train=True)
'''

#: what the two frameworks' sources differ in
FRAMEWORKS = {
    "torch": {"fw": "torch", "seed": "manual_seed", "adam": "torch.optim.Adam(model.parameters(), lr=0.01)"},
    "paddle": {"fw": "paddle", "seed": "seed",
               "adam": "paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters())"},
}

#: name -> (framework, micro-batches per step, loss divided by them, gradients cleared)
VARIANTS = {
    "torch": ("torch", 4, True, True),
    "paddle": ("paddle", 4, True, True),
    "paddle_undivided": ("paddle", 4, False, True),
    "torch_never_cleared": ("torch", 1, True, False),
    "paddle_never_cleared": ("paddle", 1, True, False),
    "torch_single": ("torch", 1, True, True),
    "paddle_two": ("paddle", 2, True, True),
}


def _source(variant: str) -> str:
    framework, k, divided, clear = VARIANTS[variant]
    return SOURCE.format(k=k, divide=f"/ {k}" if divided and k > 1 else "", clear=clear, **FRAMEWORKS[framework])


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return variant_exporter(tmp_path_factory, "accumulation", _source)


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("variant", ["torch", "paddle", "torch_never_cleared", "paddle_never_cleared"])
def test_accumulated_training_is_the_framework_s_own(graph, variant, fresh):
    path = graph(variant)
    result = lg.verify(path, path, grads=True, steps=3, native=True, native_runner=native_runner(),
                       fresh_inputs=fresh)
    assert not result.native_failures, result.native_failures


@pytest.mark.parametrize("fresh", [False, True])
def test_a_correct_port_of_accumulation_passes(graph, fresh):
    result = lg.verify(graph("torch"), graph("paddle"), grads=True, steps=5, fresh_inputs=fresh)
    assert result.passed, result.first_divergence


def test_a_loss_not_divided_by_the_micro_batches_is_found(graph):
    result = lg.verify(graph("torch"), graph("paddle_undivided"), grads=True, steps=3)
    divergence = result.first_divergence
    assert not result.passed and (divergence.step, divergence.phase) == (0, "forward"), divergence
    assert "factor of 4, the micro-batches each step accumulates" in (divergence.hint or ""), divergence.hint
    assert "the reference divides the loss by 4, the candidate does not" in divergence.hint
    assert "reduction convention" not in divergence.hint  # not the 'sum' vs 'mean' hint


@pytest.mark.parametrize(("reference", "candidate", "side"), [
    ("torch_single", "paddle_never_cleared", "candidate"),
    ("torch_never_cleared", "torch_single", "reference"),
])
def test_a_forgotten_clear_is_found_at_the_second_update(graph, reference, candidate, side):
    result = lg.verify(graph(reference), graph(candidate), grads=True, steps=3)
    divergence = result.first_divergence
    assert not result.passed and (divergence.step, divergence.phase) == (1, "update"), divergence
    assert f"The {side} never clears its gradients" in (divergence.hint or ""), divergence.hint


def test_graphs_that_accumulate_differently_are_refused(graph):
    with pytest.raises(VerificationError, match="reference 4, candidate 2"):
        lg.verify(graph("torch"), graph("paddle_two"), steps=2)


def test_fresh_inputs_draw_a_batch_per_step_and_micro_batch():
    specs = {"x": Input([3, 2]), "label": Input([3], dtype="int64", high=5)}
    base = make_inputs(specs, 7)
    same = Draws(specs, 7, base, accumulate=2)
    fresh = Draws(specs, 7, base, accumulate=2, fresh=True)
    assert same(0, 0) is base and same(5, 0) is base  # every step the same micro-batches
    assert np.array_equal(same(3, 1)["x"], same(0, 1)["x"]) and not np.array_equal(same(0, 1)["x"], base["x"])
    draws = [fresh(step, micro)["x"] for step in range(3) for micro in range(2)]
    assert fresh(0, 0) is base
    assert all(not np.array_equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1:])
    assert np.array_equal(fresh(2, 1)["x"], make_inputs(specs, 7, draw=5)["x"])  # reproducible


@pytest.mark.parametrize(("field", "value", "said"), [
    ("accumulate", "0", "Spec.accumulate must be a positive integer"),
    ("accumulate", "2.0", "Spec.accumulate must be a positive integer"),
    ("clear_grads", "'no'", "Spec.clear_grads must be True or False"),
])
def test_bad_accumulation_settings_are_one_line(write_spec, tmp_path, field, value, said):
    fields = {"k": 1, "divide": "", "clear": True, {"accumulate": "k", "clear_grads": "clear"}[field]: value}
    path = write_spec(SOURCE.format(**fields, **FRAMEWORKS["torch"]), "bad.py")
    with pytest.raises(lg.SpecError) as info:
        lg.export(f"{path}:spec", tmp_path / "out.onnx")
    assert said in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("extra", "said"), [
    ([], "--fresh-inputs draws inputs per training step: give --steps N as well."),
    (["--steps", "2", "--inputs", "x.npz"], "use one of them"),
])
def test_fresh_inputs_without_steps_or_with_an_inputs_file_is_bad_usage(graph, extra, said):
    from click.testing import CliRunner

    from lossgraph.cli import main

    path = str(graph("torch"))
    result = CliRunner().invoke(main, ["verify", path, path, "--fresh-inputs", *extra])
    assert result.exit_code == 2 and said in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_inputs_file_with_a_leading_axis_feeds_each_micro_batch(graph, tmp_path):
    """``--inputs`` arrays of shape [draws, *shape]: draw ``step * K + micro``; the eager loop
    gets the same ones, and a file too short for the steps is one line."""
    rng = np.random.default_rng(3)
    path = graph("torch")  # 4 micro-batches per step
    stepped = tmp_path / "stepped.npz"
    np.savez(stepped, x=rng.standard_normal((8, 6, 4)).astype(np.float32),
             y=rng.standard_normal((6, 2)).astype(np.float32))  # y: the same every draw
    result = lg.verify(path, path, steps=2, inputs=str(stepped), native=True, native_runner=native_runner())
    assert result.passed and not result.native_failures, result.native_failures
    plain = tmp_path / "plain.npz"
    with np.load(stepped) as data:
        np.savez(plain, x=data["x"][0], y=data["y"])
    fixed = lg.verify(path, path, steps=2, inputs=str(plain))
    assert fixed.steps[0].losses["loss"].reference != result.steps[0].losses["loss"].reference
    with pytest.raises(VerificationError, match="holds 8 draw"):
        lg.verify(path, path, steps=3, inputs=str(stepped))
