"""An exponential moving average of the weights (``Spec.ema``, ``lg.EMA``): torch's
``AveragedModel`` with ``get_ema_multi_avg_fn`` and the hand-written ``ema * d + w * (1 - d)``
of GAN, diffusion and detection code, in torch and Paddle. The averaged weights are compared
step by step like optimizer state; ground truth is each framework's eager loop with the same
average (``--native``)."""

import pytest
from conftest import variant_exporter

import lossgraph as lg
from lossgraph.cli import native_runner

SOURCE = '''
    import {fw}
    import lossgraph as lg

    def spec():
        {fw}.{seed}(0)
        model = {fw}.nn.Sequential({fw}.nn.Linear(4, 8), {fw}.nn.Tanh(), {fw}.nn.Linear(8, 2))
        loss = lambda m, x, y: ((m(x) - y) ** 2).mean()
        opt = {sgd}
        return lg.Spec(model=model, loss=loss, inputs={{"x": lg.Input([6, 4]), "y": lg.Input([6, 2])}},
                       optimizers={{"opt": opt}}, ema={ema})
'''

FRAMEWORKS = {
    "torch": {"fw": "torch", "seed": "manual_seed", "sgd": "torch.optim.SGD(model.parameters(), lr=0.2)"},
    "paddle": {"fw": "paddle", "seed": "seed",
               "sgd": "paddle.optimizer.SGD(learning_rate=0.2, parameters=model.parameters())"},
}

#: name -> (framework, the Spec's ema)
VARIANTS = {
    "torch_manual": ("torch", "lg.EMA(0.9)"),
    "torch_averaged": ("torch", "lg.EMA(0.9, style='AveragedModel')"),
    "torch_every2": ("torch", "{'opt': lg.EMA(0.9, every=2, start=1)}"),
    "torch_none": ("torch", "None"),
    "paddle_manual": ("paddle", "lg.EMA(0.9)"),
    "paddle_averaged": ("paddle", "lg.EMA(0.9, style='AveragedModel')"),
    "paddle_swapped": ("paddle", "lg.EMA(0.1)"),
    "paddle_late": ("paddle", "lg.EMA(0.9, start=2)"),
}


def _source(variant: str) -> str:
    framework, ema = VARIANTS[variant]
    return SOURCE.format(ema=ema, **FRAMEWORKS[framework])


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return variant_exporter(tmp_path_factory, "ema", _source)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "torch_none"])
def test_the_average_is_the_framework_s_own(graph, variant):
    path = graph(variant)
    result = lg.verify(path, path, steps=4, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures
    compared = [k for k in result.steps[-1].optimizer_state if k.endswith(":ema")]
    assert len(compared) == 4  # every parameter's average, compared with itself


@pytest.mark.parametrize(("reference", "candidate"), [
    ("torch_manual", "paddle_manual"), ("torch_averaged", "paddle_averaged")])
def test_a_correct_port_of_the_average_passes(graph, reference, candidate):
    result = lg.verify(graph(reference), graph(candidate), grads=True, steps=5)
    assert result.passed, result.first_divergence
    assert any(k.endswith(":ema") for k in result.steps[0].optimizer_state)


@pytest.mark.parametrize(("reference", "candidate", "step", "said"), [
    ("torch_manual", "paddle_swapped", 0, "decay 0.9 vs 0.1: one side passes 1 - decay"),
    ("torch_manual", "paddle_late", 0, "updates start after optimizer step 0 vs 2"),
    ("torch_manual", "paddle_averaged", 0, "manual vs AveragedModel"),
    ("torch_none", "paddle_manual", 0, "the reference keeps no EMA"),
    ("torch_manual", "torch_none", 0, "the candidate keeps no EMA"),
    ("torch_every2", "torch_manual", 0, "updated every 2 vs 1"),
])
def test_an_ema_mistake_is_found_at_the_average(graph, reference, candidate, step, said):
    result = lg.verify(graph(reference), graph(candidate), grads=True, steps=3)
    divergence = result.first_divergence
    assert not result.passed and (divergence.step, divergence.phase) == (step, "update"), divergence
    assert divergence.reference_node.endswith(":ema"), divergence
    assert said in (divergence.hint or ""), divergence.hint


@pytest.mark.parametrize(("ema", "said"), [
    ("lg.EMA(1.5)", "EMA.decay must be a number in [0, 1]"),
    ("lg.EMA(0.9, every=0)", "EMA.every must be an integer >= 1"),
    ("lg.EMA(0.9, style='swa')", "EMA.style must be one of AveragedModel, manual"),
    ("{'gen': lg.EMA(0.9)}", "Spec.ema names optimizer 'gen'"),
])
def test_a_bad_ema_is_one_line(write_spec, tmp_path, ema, said):
    path = write_spec(SOURCE.format(ema=ema, **FRAMEWORKS["torch"]), "bad_ema.py")
    with pytest.raises(lg.SpecError) as info:
        lg.export(f"{path}:spec", tmp_path / "out.onnx")
    assert said in str(info.value) and "\n" not in str(info.value)
