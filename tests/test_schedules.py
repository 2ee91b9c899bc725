"""Learning-rate schedulers (``lossgraph.exporters.schedules``): the exporters record the
learning rate of every optimizer step, and training on ONNX Runtime gives exactly the parameters
the framework's own loop gives (``optimizer.step(); scheduler.step()``, or the scheduler first
with ``LRSchedule(when="before")``, or every k optimizer steps with ``every=k``)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import write_spec_files

from lossgraph.graph import LossGraph
from lossgraph.inputs import make_inputs
from lossgraph.verify.steps import Trainer

TOL = 1e-6
#: Three optimizers cycling: each takes this many steps in a test.
OPTIMIZER_STEPS = 6
STEPS = 3 * OPTIMIZER_STEPS

COMMON = '''
import lossgraph as lg

INPUTS = {"x": lg.Input([4, 3]), "y": lg.Input([4, 2], low=-1.0, high=1.0)}
SCHEDULE = [("a", "a"), ("b", "b"), ("c", "c")]


def losses(model, x, y):
    return {name: ((getattr(model, name)(x) - y) ** 2).mean() for name in ("a", "b", "c")}
'''

#: Each scheduler with both timings and with every > 1 across the two variants.
TORCH = COMMON + '''
import torch
from torch import nn
from torch.optim import lr_scheduler


class Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)
        self.c = nn.Linear(3, 2)


def _spec(timings):
    torch.manual_seed(0)
    model = Three()
    opts = {n: torch.optim.SGD(getattr(model, n).parameters(), lr=0.1) for n in "abc"}
    schedulers = {
        "a": lr_scheduler.StepLR(opts["a"], step_size=2, gamma=0.5),
        "b": lr_scheduler.MultiStepLR(opts["b"], milestones=[1, 3], gamma=0.3),
        "c": lr_scheduler.CosineAnnealingLR(opts["c"], T_max=4, eta_min=0.01),
    }
    return lg.Spec(
        model=model, loss=losses, inputs=INPUTS, optimizers=opts, schedule=SCHEDULE,
        lr_schedulers={n: lg.LRSchedule(s, **timings[n]) for n, s in schedulers.items()},
    )


def after():
    return _spec({"a": {}, "b": {"every": 2}, "c": {"when": "before"}})


def before():
    return _spec({"a": {"when": "before", "every": 2}, "b": {"when": "before"}, "c": {"every": 3}})


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


def one_loss(model, x, y):
    return ((model.fc(x) - y) ** 2).mean()


def pair():
    torch.manual_seed(0)
    model = One()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    return lg.Spec(
        model=model, loss=one_loss, inputs=INPUTS, optimizers={"sgd": sgd},
        lr_schedulers={"sgd": lr_scheduler.StepLR(sgd, step_size=2, gamma=0.5)},
    )
'''

PADDLE = COMMON + '''
import paddle
from paddle import nn
from paddle.optimizer import lr


class Three(nn.Layer):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)
        self.c = nn.Linear(3, 2)


def _spec(timings):
    paddle.seed(0)
    model = Three()
    schedulers = {
        "a": lr.StepDecay(0.1, step_size=2, gamma=0.5),
        "b": lr.MultiStepDecay(0.1, milestones=[1, 3], gamma=0.3),
        "c": lr.CosineAnnealingDecay(0.1, T_max=4, eta_min=0.01),
    }
    opts = {n: paddle.optimizer.SGD(schedulers[n], parameters=getattr(model, n).parameters())
            for n in "abc"}
    return lg.Spec(
        model=model, loss=losses, inputs=INPUTS, optimizers=opts, schedule=SCHEDULE,
        lr_schedulers={n: lg.LRSchedule(s, **timings[n]) for n, s in schedulers.items()},
    )


def after():
    return _spec({"a": {}, "b": {"every": 2}, "c": {"when": "before"}})


def before():
    return _spec({"a": {"when": "before", "every": 2}, "b": {"when": "before"}, "c": {"every": 3}})


class One(nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


def one_loss(model, x, y):
    return ((model.fc(x) - y) ** 2).mean()


def _pair(step_size):
    paddle.seed(0)
    model = One()
    schedule = lr.StepDecay(0.1, step_size=step_size, gamma=0.5)
    return lg.Spec(
        model=model, loss=one_loss, inputs=INPUTS,
        optimizers={"sgd": paddle.optimizer.SGD(schedule, parameters=model.parameters())},
        lr_schedulers={"sgd": schedule},
    )


def pair():
    return _pair(2)


def pair_mismatch():
    """StepDecay(step_size=3) where torch has StepLR(step_size=2): lr differs from step 2."""
    return _pair(3)
'''


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    paths = write_spec_files(tmp_path_factory, "schedule_specs",
                             {"schedules_torch": TORCH, "schedules_paddle": PADDLE})
    return {"torch": paths["schedules_torch"], "paddle": paths["schedules_paddle"]}


def _eager(spec, start, inputs, framework: str):
    """The framework's own loop: (lr used, parameters after) for every step."""
    model = spec.model
    if framework == "torch":
        import torch

        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in start.items()})
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    else:
        import paddle

        model.set_state_dict({k: paddle.to_tensor(v) for k, v in start.items()})
        tensors = {k: paddle.to_tensor(v) for k, v in inputs.items()}
    counts = dict.fromkeys(spec.optimizers, 0)
    out = []
    for index in range(STEPS):
        loss, name = spec.schedule[index % len(spec.schedule)]
        optimizer, planned = spec.optimizers[name], spec.lr_schedulers[name]
        count = counts[name]
        if planned.when == "before" and count % planned.every == 0:
            planned.scheduler.step()
        spec.loss(model, **tensors)[loss].backward()
        if framework == "torch":
            used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad()
        else:
            used = optimizer.get_lr()
            optimizer.step()
            optimizer.clear_grad()
        counts[name] = count + 1
        if planned.when == "after" and counts[name] % planned.every == 0:
            planned.scheduler.step()
        out.append((used, {k: np.array(v.detach().numpy() if framework == "torch" else v.numpy())
                           for k, v in model.state_dict().items()}))
    return out


@pytest.mark.parametrize("framework", ["torch", "paddle"])
@pytest.mark.parametrize("variant", ["after", "before"])
def test_ort_follows_the_framework_schedule(specs, exported, framework, variant):
    from lossgraph.spec import load_spec

    target = f"{specs[framework]}:{variant}"
    graph = LossGraph.load(exported(target))
    assert {info["cls"] for info in graph.meta.lr_schedulers.values()} == (
        {"StepLR", "MultiStepLR", "CosineAnnealingLR"} if framework == "torch"
        else {"StepDecay", "MultiStepDecay", "CosineAnnealingDecay"}
    )
    trainer = Trainer(graph)
    trainer.start(graph.param_values())
    inputs = make_inputs(graph.meta.inputs, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about scheduler.step() before step()
        eager = _eager(load_spec(target), graph.param_values(), inputs, framework)
    lrs = {name: [] for name in "abc"}
    for index, (used, params) in enumerate(eager):
        outcome = trainer.step(index, inputs)
        assert outcome.lr == [pytest.approx(used, rel=1e-12, abs=0)], (index, outcome.lr, used)
        lrs[outcome.optimizer].append(used)
        for name, value in params.items():
            diff = float(np.abs(outcome.params[name] - value).max())
            assert diff <= TOL, (index, name, diff)
    # the schedules really changed the learning rates within the steps run
    assert all(len(set(values)) > 1 for values in lrs.values()), lrs


def _verify(cli, exported, specs, tmp_path, candidate: str):
    report = tmp_path / "report.json"
    result = cli("verify", exported(f"{specs['torch']}:pair"),
                 exported(f"{specs['paddle']}:{candidate}"), "--steps", "4",
                 "--no-noise-floor", "--json", report)
    return result, json.loads(report.read_text())


def test_steplr_and_stepdecay_port_verifies(cli, exported, specs, tmp_path):
    result, report = _verify(cli, exported, specs, tmp_path, "pair")
    assert result.exit_code == 0, result.stdout
    lrs = [step["lr"] for step in report["steps"]]
    assert all(lr["passed"] for lr in lrs)


def test_mismatched_scheduler_diverges_at_its_step(cli, exported, specs, tmp_path):
    result, report = _verify(cli, exported, specs, tmp_path, "pair_mismatch")
    assert result.exit_code == 1, result.stdout
    found = report["first_divergence"]
    assert (found["step"], found["phase"]) == (2, "update"), found
    assert "learning rates differ" in found["hint"]
    assert [step["lr"]["passed"] for step in report["steps"]] == [True, True, False, True]
