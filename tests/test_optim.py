"""Optimizer update graphs on ORT against the frameworks' own ``optimizer.step()``.

Each case steps a framework optimizer and its update graph side by side with the same random
gradients and compares parameters and state after every step: within 1e-6 in float32 and 1e-12
in float64, relative to max(1, |value|). The metadata comes from the exporters.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import lossgraph as lg
from lossgraph.exporters.paddle import _optimizer_infos as paddle_optimizer_infos
from lossgraph.exporters.torch import _optimizer_infos as torch_optimizer_infos
from lossgraph.graph import OptimizerInfo, ParamInfo
from lossgraph.optim import RULES, build_update

STEPS = 10
TOL = {"float32": 1e-6, "float64": 1e-12}


def rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref)), initial=0.0))


def gradients(rng, shapes: dict[str, tuple[int, ...]], dtype: str, step: int, skip: str | None):
    grads = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}
    if skip is not None and step % 3 == 1:
        grads[skip] = None
    return grads


def assert_skipped(grads, before, after) -> None:
    """Parameters without a gradient keep their value and their state."""
    for name, grad in grads.items():
        if grad is None:
            assert np.array_equal(after[0][name], before[0][name])
            for key in before[1]:
                if key.startswith(f"{name}:"):
                    assert np.array_equal(after[1][key], before[1][key]), key


def check(case: str, dtype: str, diffs: dict[str, float]) -> None:
    assert max(diffs.values()) <= TOL[dtype], (case, {k: v for k, v in diffs.items() if v > TOL[dtype]})


# ---------------------------------------------------------------------------------------- torch


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 8)  # sizes: 40 and 8 elements
        self.fc2 = torch.nn.Linear(8, 3)  # 24 and 3

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def torch_loss(model, x):
    return model(x).pow(2).mean()


TORCH_CASES = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_wd_maximize": lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.05, maximize=True),
    "sgd_momentum_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.3,
                                                         weight_decay=0.01),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_wd_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.5, 0.999), eps=1e-6,
                                                   weight_decay=1e-2, amsgrad=True),
    "adam_maximize_foreach": lambda ps: torch.optim.Adam(ps, lr=3e-3, betas=(0.6, 0.99),
                                                         maximize=True, foreach=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adamw_amsgrad_groups": lambda ps: torch.optim.AdamW(
        [{"params": ps[:2], "lr": 2e-2, "weight_decay": 0.5}, {"params": ps[2:]}],
        lr=1e-2, amsgrad=True),
    "adam_decoupled": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1,
                                                  decoupled_weight_decay=True),
}


def run_torch(spec: lg.Spec, info, case: str, dtype: str, skip: str | None = None) -> None:
    model, optimizer = spec.model, next(iter(spec.optimizers.values()))
    named = dict(model.named_parameters())
    params = {n: ParamInfo(list(p.shape), dtype, True) for n, p in named.items()}
    update = build_update(info, params, dtype=dtype)
    values = {n: p.detach().numpy().copy() for n, p in named.items()}
    state = update.init_state(values)
    rng = np.random.default_rng(7)
    for step in range(STEPS):
        grads = gradients(rng, {n: tuple(p.shape) for n, p in named.items()}, dtype, step, skip)
        lr = [group["lr"] for group in optimizer.param_groups]
        for name, p in named.items():
            p.grad = None if grads[name] is None else torch.from_numpy(grads[name].copy())
        optimizer.step()
        before = (values, state)
        values, state = update.step(values, grads, state, lr)
        assert_skipped(grads, before, (values, state))
        diffs = {n: rel_diff(values[n], p.detach().numpy()) for n, p in named.items()}
        for name, p in named.items():
            for key, ref in optimizer.state.get(p, {}).items():
                diffs[f"{name}:{key}"] = rel_diff(state[f"{name}:{key}"], ref.numpy())
        check(case, dtype, diffs)


def torch_spec(case: str, dtype: str) -> tuple[lg.Spec, object]:
    torch.manual_seed(0)
    model = TorchNet().to(getattr(torch, dtype))
    optimizer = TORCH_CASES[case](list(model.parameters()))
    spec = lg.Spec(model=model, loss=torch_loss, inputs={"x": lg.Input([4, 5])},
                   optimizers={"opt": optimizer})
    return spec, torch_optimizer_infos(spec, model)["opt"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_update_matches_torch_step(case, dtype):
    spec, info = torch_spec(case, dtype)
    run_torch(spec, info, f"torch {case}", dtype)


@pytest.mark.parametrize("case", ["sgd_nesterov", "adam_wd_amsgrad"])
def test_torch_parameter_without_gradient_is_skipped(case):
    spec, info = torch_spec(case, "float32")
    run_torch(spec, info, f"torch {case} (None grad)", "float32", skip="fc1.bias")


TORCH_SPEC = """
import torch
import lossgraph as lg

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

def spec():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam([{"params": model.fc1.parameters(), "weight_decay": 1e-3},
                            {"params": model.fc2.parameters(), "lr": 5e-3}],
                           lr=2e-3, betas=(0.5, 0.999))
    return lg.Spec(model=model, loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([4, 5])}, optimizers={"opt": opt})
"""


def test_torch_exported_metadata_drives_the_update(write_spec):
    spec = lg.load_spec(f"{write_spec(TORCH_SPEC, 'optim_torch_spec.py')}:spec")
    graph = lg.export(spec)
    update = build_update(graph.meta.optimizers["opt"], graph.meta.params)
    assert update.state_names[:3] == ["fc1.weight:step", "fc1.weight:exp_avg", "fc1.weight:exp_avg_sq"]
    node_names = {n.name for n in update.model.graph.node}
    assert {"fc1.weight/exp_avg", "fc1.weight/exp_avg_sq", "fc2.bias/denom"} <= node_names
    run_torch(spec, graph.meta.optimizers["opt"], "torch exported Adam groups", "float32")


# --------------------------------------------------------------------------------------- paddle


class PaddleNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = paddle.nn.Linear(5, 8)
        self.fc2 = paddle.nn.Linear(8, 3)
        self.fc3 = paddle.nn.Linear(3, 3, weight_attr=paddle.ParamAttr(
            learning_rate=0.5, regularizer=paddle.regularizer.L1Decay(1e-2)))

    def forward(self, x):
        return self.fc3(self.fc2(paddle.tanh(self.fc1(x))))


def paddle_loss(model, x):
    return model(x).pow(2).mean()


L2 = paddle.regularizer.L2Decay
PADDLE_CASES = {
    "sgd": lambda ps: paddle.optimizer.SGD(0.1, ps),
    "sgd_l2": lambda ps: paddle.optimizer.SGD(0.1, ps, weight_decay=L2(0.05)),
    "sgd_l1": lambda ps: paddle.optimizer.SGD(0.1, ps, weight_decay=paddle.regularizer.L1Decay(0.05)),
    "momentum": lambda ps: paddle.optimizer.Momentum(0.1, 0.9, ps),
    "momentum_float_decay": lambda ps: paddle.optimizer.Momentum(0.1, 0.9, ps, weight_decay=0.05),
    "momentum_nesterov_l2": lambda ps: paddle.optimizer.Momentum(0.05, 0.8, ps, use_nesterov=True,
                                                                 weight_decay=L2(0.01)),
    "momentum_groups": lambda ps: paddle.optimizer.Momentum(0.1, 0.9, [
        {"params": ps[:2], "weight_decay": 0.02, "momentum": 0.7, "learning_rate": 0.5},
        {"params": ps[2:], "use_nesterov": True}]),
    "adam": lambda ps: paddle.optimizer.Adam(1e-2, parameters=ps),
    "adam_l2_float": lambda ps: paddle.optimizer.Adam(1e-2, 0.5, 0.999, parameters=ps,
                                                      weight_decay=1e-2),
    "adam_l2_amsgrad": lambda ps: paddle.optimizer.Adam(1e-2, 0.8, 0.99, 1e-6, parameters=ps,
                                                        weight_decay=L2(1e-2), amsgrad=True),
    "adamw": lambda ps: paddle.optimizer.AdamW(1e-2, parameters=ps, weight_decay=0.1),
    "adamw_decay_fun": lambda ps: paddle.optimizer.AdamW(
        1e-2, parameters=ps, weight_decay=0.1, apply_decay_param_fun=lambda n: n.endswith("w_0")),
    "adamw_groups_amsgrad": lambda ps: paddle.optimizer.AdamW(1e-2, parameters=[
        {"params": ps[:2], "weight_decay": 0.3, "beta1": 0.8},
        {"params": ps[2:]}], amsgrad=True),
}


def run_paddle(spec: lg.Spec, info, case: str, dtype: str, skip: str | None = None) -> None:
    model, optimizer = spec.model, next(iter(spec.optimizers.values()))
    named = dict(model.named_parameters())
    params = {n: ParamInfo(list(p.shape), dtype, True) for n, p in named.items()}
    update = build_update(info, params, dtype=dtype)
    values = {n: p.numpy().copy() for n, p in named.items()}
    state = update.init_state(values)
    rng = np.random.default_rng(7)
    for step in range(STEPS):
        grads = gradients(rng, {n: tuple(p.shape) for n, p in named.items()}, dtype, step, skip)
        lr = optimizer.get_lr()
        for name, p in named.items():
            if grads[name] is not None:
                p._set_grad_ivar(paddle.to_tensor(grads[name]))
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        before = (values, state)
        values, state = update.step(values, grads, state, lr)
        assert_skipped(grads, before, (values, state))
        diffs = {n: rel_diff(values[n], p.numpy()) for n, p in named.items()}
        for key in update.state_names:
            name, slot = key.split(":")
            ref = optimizer._accumulators[slot].get(named[name].name)
            if ref is not None:
                diffs[key] = rel_diff(state[key], ref.numpy())
        check(case, dtype, diffs)


def paddle_spec(case: str, dtype: str) -> tuple[lg.Spec, object]:
    default = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        paddle.seed(0)
        model = PaddleNet()
        optimizer = PADDLE_CASES[case](list(model.parameters()))
    finally:
        paddle.set_default_dtype(default)
    spec = lg.Spec(model=model, loss=paddle_loss, inputs={"x": lg.Input([4, 5])},
                   optimizers={"opt": optimizer})
    return spec, paddle_optimizer_infos(spec, model)["opt"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", PADDLE_CASES)
def test_paddle_update_matches_paddle_step(case, dtype):
    spec, info = paddle_spec(case, dtype)
    run_paddle(spec, info, f"paddle {case}", dtype)


@pytest.mark.parametrize("case", ["momentum_nesterov_l2", "adam_l2_amsgrad"])
def test_paddle_parameter_without_gradient_is_skipped(case):
    spec, info = paddle_spec(case, "float32")
    run_paddle(spec, info, f"paddle {case} (None grad)", "float32", skip="fc1.bias")


PADDLE_SPEC = """
import paddle
import lossgraph as lg

class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc1 = paddle.nn.Linear(5, 8)
        self.fc2 = paddle.nn.Linear(8, 3, weight_attr=paddle.ParamAttr(learning_rate=2.0))

    def forward(self, x):
        return self.fc2(paddle.tanh(self.fc1(x)))

def spec():
    paddle.seed(0)
    model = Net()
    opt = paddle.optimizer.AdamW(2e-3, beta1=0.5, parameters=model.parameters(), weight_decay=0.05,
                                 apply_decay_param_fun=lambda name: name.endswith("w_0"))
    return lg.Spec(model=model, loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([4, 5])}, optimizers={"opt": opt})
"""


def test_paddle_exported_metadata_drives_the_update(write_spec):
    spec = lg.load_spec(f"{write_spec(PADDLE_SPEC, 'optim_paddle_spec.py')}:spec")
    graph = lg.export(spec)
    info = graph.meta.optimizers["opt"]
    assert info.groups[0]["decay_params"] == ["fc1.weight", "fc2.weight"]
    assert info.groups[0]["param_learning_rate"] == {"fc2.weight": 2.0}
    update = build_update(info, graph.meta.params)
    assert "fc1.bias:beta2_pow_acc" in update.state_names
    assert "fc2.weight/decay" in {n.name for n in update.model.graph.node}
    run_paddle(spec, info, "paddle exported AdamW", "float32")


def test_paddle_adamw_lr_ratio_matches_the_cpu_kernel():
    """Paddle's AdamW refuses lr_ratio on CPU, but its CPU kernel takes it: check against that."""
    rng = np.random.default_rng(3)
    value = rng.standard_normal((6, 7)).astype("float32")
    info = OptimizerInfo("AdamW", "paddle", [{
        "params": ["w"], "learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
        "coeff": 0.1, "lr_ratio": {"w": 0.5}, "weight_decay": None}])
    update = build_update(info, {"w": ParamInfo([6, 7], "float32", True)})
    values, state = {"w": value}, update.init_state()
    param, m1, m2 = paddle.to_tensor(value), paddle.zeros([6, 7]), paddle.zeros([6, 7])
    b1, b2, lr = paddle.full([1], 0.9), paddle.full([1], 0.999), paddle.full([], 0.01)
    for _ in range(STEPS):
        grad = rng.standard_normal((6, 7)).astype("float32")
        paddle._C_ops.adamw_(param, paddle.to_tensor(grad), lr, m1, m2, None, b1, b2, None, None,
                             0.9, 0.999, 1e-8, 0.5, 0.1, True, False, 1000, False, False, False)
        values, state = update.step(values, {"w": grad}, state, 0.01)
        check("paddle AdamW lr_ratio", "float32", {
            "w": rel_diff(values["w"], param.numpy()), "moment1": rel_diff(state["w:moment1"], m1.numpy()),
            "moment2": rel_diff(state["w:moment2"], m2.numpy()),
            "beta1_pow_acc": rel_diff(state["w:beta1_pow_acc"], b1.numpy())})


def test_paddle_metadata_records_per_parameter_settings():
    _, info = paddle_spec("momentum_groups", "float32")
    first, second = info.groups
    assert first["weight_decay"] == {"L2Decay": 0.02} and first["momentum"] == 0.7
    assert first["param_learning_rate"] == {"fc1.weight": 0.5, "fc1.bias": 0.5}
    # a group's weight_decay and learning_rate replace fc3's ParamAttr, as in Paddle
    assert second["use_nesterov"] and "param_weight_decay" not in second
    assert "param_learning_rate" not in second
    _, info = paddle_spec("adam_l2_float", "float32")
    assert info.groups[0]["weight_decay"] == {"L2Decay": 1e-2}
    assert info.groups[0]["param_weight_decay"] == {"fc3.weight": {"L1Decay": 1e-2}}
    assert info.groups[0]["param_learning_rate"] == {"fc3.weight": 0.5}
    _, info = paddle_spec("adamw_decay_fun", "float32")
    assert info.groups[0]["coeff"] == 0.1 and info.groups[0]["weight_decay"] is None
    assert info.groups[0]["decay_params"] == ["fc1.weight", "fc2.weight", "fc3.weight"]


# ------------------------------------------------------------------------------ unsupported, API


@pytest.mark.parametrize(
    ("framework", "make", "message"),
    [
        ("torch", lambda ps: torch.optim.Adam(ps, fused=True),
         "torch Adam with fused=True is not supported: the fused kernel"),
        ("torch", lambda ps: torch.optim.RMSprop(ps),
         "No update rule for torch optimizer 'RMSprop'; rules exist for:"),
        ("paddle", lambda ps: paddle.optimizer.Momentum(parameters=ps, rescale_grad=0.5),
         "paddle Momentum with rescale_grad=0.5 is not supported:"),
    ],
)
def test_unsupported_settings_raise(framework, make, message):
    if framework == "torch":
        model = TorchNet()
        spec = lg.Spec(model=model, loss=torch_loss, inputs={"x": lg.Input([4, 5])},
                       optimizers={"opt": make(list(model.parameters()))})
        info = torch_optimizer_infos(spec, model)["opt"]
    else:
        model = PaddleNet()
        spec = lg.Spec(model=model, loss=paddle_loss, inputs={"x": lg.Input([4, 5])},
                       optimizers={"opt": make(list(model.parameters()))})
        info = paddle_optimizer_infos(spec, model)["opt"]
    params = {n: ParamInfo(list(p.shape), "float32", True) for n, p in model.named_parameters()}
    with pytest.raises(lg.UnsupportedOpError) as err:
        build_update(info, params)
    assert str(err.value).startswith(message), str(err.value)
    assert str(err.value).endswith(".") and str(err.value).count(". ") == 0


def test_rules_cover_the_required_optimizers():
    assert set(RULES) == {("torch", "SGD"), ("torch", "Adam"), ("torch", "AdamW"),
                          ("paddle", "SGD"), ("paddle", "Momentum"), ("paddle", "Adam"),
                          ("paddle", "AdamW")}


def test_lr_per_group_must_match_the_groups():
    spec, info = torch_spec("adamw_amsgrad_groups", "float32")
    params = {n: ParamInfo(list(p.shape), "float32", True) for n, p in spec.model.named_parameters()}
    update = build_update(info, params)
    values = {n: p.detach().numpy() for n, p in spec.model.named_parameters()}
    with pytest.raises(lg.VerificationError, match="2 parameter groups but got 3 learning rates"):
        update.step(values, values, update.init_state(values), [1e-3, 1e-3, 1e-3])


@pytest.mark.parametrize(
    ("torch_group", "paddle_cls", "paddle_group", "same"),
    [
        ({"lr": 0.1, "momentum": 0.9}, "Momentum", {"learning_rate": 0.1, "momentum": 0.9}, True),
        ({"lr": 0.1, "momentum": 0.0}, "SGD", {"learning_rate": 0.1}, True),
        ({"lr": 0.1, "momentum": 0.0}, "Momentum", {"learning_rate": 0.1, "momentum": 0.9}, False),
    ],
)
def test_the_optimizer_hint_names_sgd_with_momentum_alike_in_both_frameworks(
    torch_group, paddle_cls, paddle_group, same
):
    """torch's SGD(momentum=0.9) is Paddle's Momentum(0.9): "class: SGD vs SGD+momentum" was a
    false clause on every momentum port."""
    from lossgraph.verify.hints import _semantic_hyper

    ref = _semantic_hyper(OptimizerInfo("SGD", "torch", [{"params": ["w"], **torch_group}]))
    cand = _semantic_hyper(OptimizerInfo(paddle_cls, "paddle", [{"params": ["w"], **paddle_group}]))
    assert (ref["class"] == cand["class"]) is same
