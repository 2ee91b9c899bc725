"""PyTorch's updates as ``torch.optim``'s single-tensor CPU path computes them (torch 2.x).

Python floats reach the kernels as float32 scalars (float64 for double tensors). The vectorized
CPU kernels fuse multiply-adds: ``a.add(b, alpha=s)`` is ``fma(b, s, a)``, ``lerp`` is
``fma(w, end - start, start)`` (``fma(w - 1, end - start, end)`` for ``w >= 0.5``), and
``addcmul(t1, t2, value=s)`` is ``fma(s * t1, t2, self)``; ``addcdiv`` is not fused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lossgraph.optim.graph import ParamScope
from lossgraph.optim.update import Hyper, Slot, UpdateRule, unsupported, update_rule

#: Flags that switch torch to another code path than the single-tensor CPU update.
_OTHER_PATHS = {
    "fused": "the fused kernel computes the update in another order",
    "capturable": "the capturable path computes bias corrections as tensors",
    "differentiable": "the differentiable path computes bias corrections as tensors",
}


def _check_paths(cls: str, group: Mapping[str, Any]) -> None:
    for flag, why in _OTHER_PATHS.items():
        if group.get(flag):
            raise unsupported("torch", cls, f"{flag}=True", why)


def _lerp(g: ParamScope, start: str, end: str, weight: float, label: str) -> str:
    w = g.cast(weight)
    diff = g.sub(end, start, f"{label}/diff")
    if abs(w) < 0.5:
        return g.fma(w, diff, start, label)
    return g.fma(w - g.cast(1.0), diff, end, label)


@update_rule
class TorchSGD(UpdateRule):
    framework = "torch"
    classes = ("SGD",)

    def hyper(self, cls: str, group: Mapping[str, Any], param: str) -> Hyper:
        _check_paths(cls, group)
        return {
            "momentum": float(group.get("momentum", 0.0)),
            "dampening": float(group.get("dampening", 0.0)),
            "nesterov": bool(group.get("nesterov", False)),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "maximize": bool(group.get("maximize", False)),
        }

    def slots(self, hp: Hyper) -> list[Slot]:
        return [Slot("momentum_buffer", lazy=True)] if hp["momentum"] else []

    def prepare(
        self, hp: Hyper, lr: float, state: Mapping[str, np.ndarray], np_dtype: type[np.floating]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        scalars = {"lr": lr}
        if hp["momentum"]:
            # torch's first step copies the gradient into the new buffer: scale 0 and 1 do that
            first = "momentum_buffer" not in state
            scalars["buffer_scale"] = 0.0 if first else hp["momentum"]
            scalars["grad_scale"] = 1.0 if first else 1.0 - hp["dampening"]
        return scalars, {}

    def build(self, g: ParamScope, hp: Hyper) -> None:
        grad = g.neg(g.grad, "maximize") if hp["maximize"] else g.grad
        if hp["weight_decay"]:
            grad = g.fma(g.param, hp["weight_decay"], grad, "weight_decay")
        if hp["momentum"]:
            kept = g.mul(g.state("momentum_buffer"), g.scalar("buffer_scale"), "momentum_buffer/decay")
            buf = g.fma(grad, g.scalar("grad_scale"), kept, "momentum_buffer")
            g.set_state("momentum_buffer", buf)
            grad = g.fma(buf, hp["momentum"], grad, "nesterov") if hp["nesterov"] else buf
        g.set_param(g.fma(grad, g.neg(g.scalar("lr"), "neg_lr"), g.param, "param"))


@update_rule
class TorchAdam(UpdateRule):
    framework = "torch"
    classes = ("Adam", "AdamW")

    def hyper(self, cls: str, group: Mapping[str, Any], param: str) -> Hyper:
        _check_paths(cls, group)
        beta1, beta2 = (float(b) for b in group.get("betas", (0.9, 0.999)))
        return {
            "beta1": beta1,
            "beta2": beta2,
            "eps": float(group.get("eps", 1e-8)),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "amsgrad": bool(group.get("amsgrad", False)),
            "maximize": bool(group.get("maximize", False)),
            "decoupled": bool(group.get("decoupled_weight_decay", cls == "AdamW")),
        }

    def slots(self, hp: Hyper) -> list[Slot]:
        slots = [Slot("step", shape=(), in_graph=False), Slot("exp_avg"), Slot("exp_avg_sq")]
        return slots + [Slot("max_exp_avg_sq")] if hp["amsgrad"] else slots

    def prepare(
        self, hp: Hyper, lr: float, state: Mapping[str, np.ndarray], np_dtype: type[np.floating]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        step_t = np.asarray(np.asarray(state.get("step", 0.0), np_dtype) + 1, np_dtype)
        step = float(step_t)  # torch: step_t += 1; step = step_t.item(); the rest in Python
        scalars = {
            "step_size": lr / (1 - hp["beta1"] ** step),
            "bias_correction2_sqrt": (1 - hp["beta2"] ** step) ** 0.5,
        }
        if hp["decoupled"] and hp["weight_decay"]:
            scalars["weight_decay_factor"] = 1 - lr * hp["weight_decay"]
        return scalars, {"step": step_t}

    def build(self, g: ParamScope, hp: Hyper) -> None:
        grad = g.neg(g.grad, "maximize") if hp["maximize"] else g.grad
        param = g.param
        if hp["weight_decay"] and hp["decoupled"]:
            param = g.mul(param, g.scalar("weight_decay_factor"), "weight_decay")
        elif hp["weight_decay"]:
            grad = g.fma(param, hp["weight_decay"], grad, "weight_decay")
        exp_avg = _lerp(g, g.state("exp_avg"), grad, 1 - hp["beta1"], "exp_avg")
        kept = g.mul(g.state("exp_avg_sq"), hp["beta2"], "exp_avg_sq/decay")
        exp_avg_sq = g.fma(g.mul(1 - hp["beta2"], grad, "exp_avg_sq/scaled_grad"), grad, kept, "exp_avg_sq")
        g.set_state("exp_avg", exp_avg)
        g.set_state("exp_avg_sq", exp_avg_sq)
        second = exp_avg_sq
        if hp["amsgrad"]:
            second = g.max(g.state("max_exp_avg_sq"), exp_avg_sq, "max_exp_avg_sq")
            g.set_state("max_exp_avg_sq", second)
        root = g.div(g.sqrt(second, "denom/sqrt"), g.scalar("bias_correction2_sqrt"), "denom/unbiased")
        denom = g.add(root, hp["eps"], "denom")
        step = g.div(g.mul(g.neg(g.scalar("step_size"), "neg_step_size"), exp_avg, "step/scaled"), denom, "step")
        g.set_param(g.add(param, step, "param"))
