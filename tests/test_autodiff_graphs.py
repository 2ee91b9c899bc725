"""Whole-graph gradients built by lossgraph's autodiff, run on ONNX Runtime, against each
framework's own autograd; second order through lossgraph.grad; stop-gradient honoured."""

import numpy as np
import paddle
import pytest
import torch
from conftest import DISCOGAN, LOSSES
from losses_paddle import SPECS as PADDLE_SPECS
from losses_torch import SPECS as TORCH_SPECS
from penalties_torch import SPECS as PENALTIES

import lossgraph as lg
from lossgraph.inputs import make_inputs
from lossgraph.spec import load_spec
from lossgraph.verify.pipeline import loss_gradients

#: Whole-graph gradients must match autograd within this fraction of the largest gradient of
#: the loss (float32; DiscoGAN measures 3.4e-6 and 9.1e-6, from one BatchNorm output whose sign
#: flips between float32 and float64 just before a ReLU).
RELATIVE = 1e-5


def ort_gradients(spec, graph, seed=0):
    inputs = make_inputs(spec.inputs, seed)
    params = graph.param_values()
    return inputs, {
        loss: loss_gradients(graph, loss, graph.trainable_params(), inputs, params, "cpu", "graph")
        for loss in graph.meta.losses
    }


def assert_close(ours: dict, theirs: dict, what: str):
    for loss, grads in ours.items():
        scale = max(float(np.abs(g).max()) for g in theirs[loss].values())
        for name, grad in grads.items():
            diff = float(np.abs(grad - theirs[loss][name]).max())
            assert diff <= RELATIVE * max(scale, 1e-12), (what, loss, name, diff, scale)


def torch_autograd(spec, inputs, losses):
    out = {}
    for loss in losses:
        spec.model.zero_grad()
        result = spec.loss(spec.model, **{k: torch.from_numpy(v) for k, v in inputs.items()})
        result = result if isinstance(result, dict) else {"loss": result}
        result[loss].backward()
        out[loss] = {n: p.grad.numpy().copy() if p.grad is not None else np.zeros(p.shape, np.float32)
                     for n, p in spec.model.named_parameters()}
    return out


def paddle_autograd(spec, inputs, losses):
    out = {}
    for loss in losses:
        spec.model.clear_gradients()
        result = spec.loss(spec.model, **{k: paddle.to_tensor(v) for k, v in inputs.items()})
        result = result if isinstance(result, dict) else {"loss": result}
        result[loss].backward()
        out[loss] = {n: p.grad.numpy().copy() if p.grad is not None else np.zeros(p.shape, np.float32)
                     for n, p in spec.model.named_parameters() if not p.stop_gradient}
    return out


TORCH_TARGETS = ([f"{LOSSES}/losses_torch.py:{n}" for n in TORCH_SPECS]
                 + [f"{LOSSES}/penalties_torch.py:{n}" for n in PENALTIES]
                 + [f"{DISCOGAN}/discogan_torch.py"])
PADDLE_TARGETS = ([f"{LOSSES}/losses_paddle.py:{n}" for n in PADDLE_SPECS]
                  + [f"{LOSSES}/penalties_paddle.py:{n}" for n in PENALTIES]
                  + [f"{DISCOGAN}/discogan_paddle.py"])


@pytest.mark.parametrize("target", TORCH_TARGETS, ids=lambda t: t.rsplit("/", 1)[-1])
def test_torch_graph_gradients_equal_torch_autograd(target):
    spec = load_spec(target)
    graph = lg.export(spec)
    inputs, ours = ort_gradients(spec, graph)
    assert_close(ours, torch_autograd(spec, inputs, graph.meta.losses), target)


@pytest.mark.parametrize("target", PADDLE_TARGETS, ids=lambda t: t.rsplit("/", 1)[-1])
def test_paddle_graph_gradients_equal_paddle_autograd(target):
    spec = load_spec(target)
    graph = lg.export(spec)
    spec.model.eval()
    inputs, ours = ort_gradients(spec, graph)
    assert_close(ours, paddle_autograd(spec, inputs, graph.meta.losses), target)


@pytest.mark.parametrize("name", PENALTIES)
def test_gradient_penalty_pairs_verify_with_gradients(exported, name):
    result = lg.verify(exported(f"{LOSSES}/penalties_torch.py:{name}"),
                       exported(f"{LOSSES}/penalties_paddle.py:{name}"), tol=1e-6, grads=True)
    assert result.passed, {k: d.max_abs_diff for k, d in result.steps[0].gradients.items()}
    penalty = result.steps[0].gradients["fc.weight"].losses["penalty"]
    assert penalty.shape == (1, 36)
    assert result.steps[0].losses["penalty"].reference > 0.01, "a degenerate (zero) penalty"


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_detach_stops_gradients(framework):
    """The GAN D losses see the generator's output detached: no generator gradient."""
    spec = load_spec(f"{LOSSES}/losses_{framework}.py:gan")
    graph = lg.export(spec)
    _, grads = ort_gradients(spec, graph)
    for loss in ("d_vanilla", "d_lsgan", "d_wgan", "d_hinge"):
        assert not np.any(grads[loss]["generator.weight"]), loss
        assert np.any(grads[loss]["discriminator.weight"]), loss
    for loss in ("g_vanilla", "g_lsgan"):
        assert np.any(grads[loss]["generator.weight"]), loss


@pytest.mark.slow  # DiscoGAN's gradients through the CLI (28 s); the README's check runs its forward
def test_cli_grads_discogan_torch_vs_paddle(cli, exported, tmp_path):
    import json

    report = tmp_path / "report.json"
    result = cli("verify", exported(f"{DISCOGAN}/discogan_torch.py"),
                 exported(f"{DISCOGAN}/discogan_paddle.py"), "--grads", "--json", report)
    assert result.exit_code == 0, result.stdout
    gradients = json.loads(report.read_text())["steps"][0]["gradients"]
    assert len(gradients) == 62
    entry = gradients["discriminator_A.conv3.weight"]
    assert entry["passed"] and set(entry["losses"]) == {"gen_loss", "dis_loss"}
    assert "Gradients: 62/62 parameters within tolerance" in " ".join(result.stdout.split())


@pytest.mark.slow  # 50-90 s, most of it the float64 re-run of both DiscoGAN gradient graphs
def test_cli_grads_catch_what_forward_losses_miss(cli, exported, tmp_path):
    import json

    report = tmp_path / "report.json"
    ref = exported(f"{DISCOGAN}/discogan_torch.py")
    cand = exported(f"{DISCOGAN}/discogan_paddle_planted.py:generators_swapped")
    # forward only: the losses agree, the module outputs (compared node by node) do not
    forward = tmp_path / "forward.json"
    assert cli("verify", ref, cand, "--json", forward).exit_code == 1
    steps = json.loads(forward.read_text())["steps"]
    assert all(d["passed"] for d in steps[0]["losses"].values())
    assert not all(d["passed"] for d in steps[0]["module_outputs"].values())
    result = cli("verify", ref, cand, "--grads", "--json", report)
    assert result.exit_code == 1
    data = json.loads(report.read_text())
    assert all(d["passed"] for d in data["steps"][0]["losses"].values())
    assert not all(d["passed"] for d in data["steps"][0]["gradients"].values())
    # the losses agree, but the module taps show where the graphs part: the generators
    divergence = data["first_divergence"]
    assert divergence["localized"] and divergence["phase"] == "forward"
    assert divergence["scope"].startswith("generator_")


STOP_GRADIENT = """
import paddle
import lossgraph as lg

class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, 3)

def loss(model, x):
    h = model.fc(x)
    frozen = h * 2.0
    frozen.stop_gradient = True
    return {"product": (frozen * h).mean(), "detached": (h.detach() * h).mean()}

def spec():
    paddle.seed(0)
    return lg.Spec(model=Net(), loss=loss, inputs={"x": lg.Input([2, 3])})
"""


def test_paddle_stop_gradient_assignment_is_honoured(write_spec):
    """``t.stop_gradient = True`` leaves no op in Paddle's program; lossgraph finds the value
    from the program's stop-gradient flags and marks it, so gradients match Paddle's."""
    spec = load_spec(str(write_spec(STOP_GRADIENT, "stop_gradient_spec.py")))
    graph = lg.export(spec)
    inputs, ours = ort_gradients(spec, graph)
    theirs = paddle_autograd(spec, inputs, graph.meta.losses)
    assert_close(ours, theirs, "stop_gradient")
    # without the marker, d/dW of (2h * h) would be twice what Paddle computes
    assert np.allclose(ours["product"]["fc.weight"], ours["detached"]["fc.weight"] * 2.0, atol=1e-6)
