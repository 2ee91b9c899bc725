"""PaddlePaddle's updates as its CPU kernels compute them (Paddle 3.x, phi kernels).

Regularizers run before the kernel: ``L2Decay(c)`` adds ``c * param`` to the gradient,
``L1Decay(c)`` adds ``c * sign(param)`` (a float ``weight_decay`` is an ``L2Decay``); Momentum
instead applies L2 decay inside its kernel. The learning rate reaches a kernel as a tensor of
the parameter's dtype, multiplied by the parameter's learning-rate multiplier. Float attributes
of kernels (Momentum's ``mu`` and decay coefficient, AdamW's ``coeff`` and ``lr_ratio``) are
float32 even for float64 parameters; Scalar ones (Adam's betas and epsilon) are not. The
exporter records per-parameter settings as ``param_learning_rate`` and ``param_weight_decay``
(ParamAttr), AdamW's as ``coeff``, ``decay_params`` and, if present, ``lr_ratio`` (a float or a
dict by parameter; Paddle's Python API allows it only on GPU, its CPU kernel takes it).

Adam's kernel works from its ``beta{1,2}_pow_acc`` accumulators, in the parameter's dtype:
``lr_t = lr * sqrt(1 - beta2_pow) / (1 - beta1_pow)`` and ``eps_t = epsilon * sqrt(1 - beta2_pow)``,
then ``param += -lr_t * moment1 / (sqrt(moment2) + eps_t)``. Float32 follows the AVX-512 JIT
kernels (x86 CPUs with AVX-512; others run the reference loop, differing by about one ulp);
float64 follows the reference loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lossgraph.optim.graph import ParamScope
from lossgraph.optim.update import Hyper, Slot, UpdateRule, unsupported, update_rule


def _f32(value: float) -> float:
    """A kernel's float attribute: rounded to float32 whatever the tensors' dtype."""
    return float(np.float32(value))


def _common(cls: str, group: Mapping[str, Any], param: str) -> Hyper:
    """Settings every Paddle optimizer shares: regularizer and learning-rate multiplier."""
    if group.get("grad_clip"):
        raise unsupported("paddle", cls, f"grad_clip={group['grad_clip']}",
                          "gradient clipping is not part of the update graphs")
    decay = group.get("param_weight_decay", {}).get(param, group.get("weight_decay"))
    if isinstance(decay, (int, float)) and not isinstance(decay, bool):
        decay = {"L2Decay": float(decay)}
    if decay is not None and not (
        isinstance(decay, dict) and len(decay) == 1 and set(decay) <= {"L2Decay", "L1Decay"}
    ):
        raise unsupported("paddle", cls, f"weight_decay={decay}",
                          "only a float, L2Decay or L1Decay is reproduced")
    if decay is not None and not next(iter(decay.values())):
        decay = None
    scale = float(group.get("param_learning_rate", {}).get(param, 1.0))
    return {"decay": decay, "lr_scale": scale}


def _regularized(g: ParamScope, hp: Hyper) -> str:
    """The gradient after ``append_regularization_ops`` (scale, then add_n)."""
    if hp["decay"] is None:
        return g.grad
    (kind, coeff), = hp["decay"].items()
    base = g.param if kind == "L2Decay" else g.sign(g.param, "regularization/sign")
    return g.add(g.grad, g.mul(base, coeff, "regularization/scale"), "regularization")


class _PaddleRule(UpdateRule):
    framework = "paddle"

    def prepare(
        self, hp: Hyper, lr: float, state: Mapping[str, np.ndarray], np_dtype: type[np.floating]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        # the global learning-rate tensor, times the parameter's multiplier (a scale op)
        lr_t = np_dtype(lr) * np_dtype(hp["lr_scale"]) if hp["lr_scale"] != 1.0 else np_dtype(lr)
        return {"lr": lr_t}, {}


@update_rule
class PaddleSGD(_PaddleRule):
    classes = ("SGD",)

    def hyper(self, cls: str, group: Mapping[str, Any], param: str) -> Hyper:
        return _common(cls, group, param)

    def build(self, g: ParamScope, hp: Hyper) -> None:
        grad, lr = _regularized(g, hp), g.scalar("lr")
        if g.numel % 8 == 0:
            # the AVX JIT kernel (sizes divisible by 8): multiply, then subtract
            g.set_param(g.sub(g.param, g.mul(grad, lr, "step"), "param"))
        else:
            # the reference loop, compiled with a fused multiply-subtract
            g.set_param(g.fma(g.neg(lr, "neg_lr"), grad, g.param, "param"))


@update_rule
class PaddleMomentum(_PaddleRule):
    classes = ("Momentum",)

    def hyper(self, cls: str, group: Mapping[str, Any], param: str) -> Hyper:
        if float(group.get("rescale_grad", 1.0)) != 1.0:
            raise unsupported("paddle", cls, f"rescale_grad={group['rescale_grad']}",
                              "Paddle's CPU kernel ignores it while its GPU kernel applies it")
        hp = _common(cls, group, param)
        l2 = hp["decay"] if hp["decay"] and "L2Decay" in hp["decay"] else None
        return {
            **hp,
            "decay": None if l2 else hp["decay"],  # L1Decay stays a regularizer
            "l2_coeff": _f32(l2["L2Decay"]) if l2 else 0.0,
            "mu": _f32(group.get("momentum", 0.9)),
            "nesterov": bool(group.get("use_nesterov", False)),
        }

    def slots(self, hp: Hyper) -> list[Slot]:
        return [Slot("velocity")]

    def build(self, g: ParamScope, hp: Hyper) -> None:
        grad, lr = _regularized(g, hp), g.scalar("lr")
        if hp["l2_coeff"]:
            grad = g.add(g.mul(g.param, hp["l2_coeff"], "l2_decay/scale"), grad, "l2_decay")
        velocity = g.add(g.mul(g.state("velocity"), hp["mu"], "velocity/decay"), grad, "velocity")
        g.set_state("velocity", velocity)
        if hp["nesterov"]:
            ahead = g.add(grad, g.mul(velocity, hp["mu"], "nesterov/scale"), "nesterov")
            g.set_param(g.sub(g.param, g.mul(ahead, lr, "step"), "param"))
        else:
            g.set_param(g.sub(g.param, g.mul(lr, velocity, "step"), "param"))


@update_rule
class PaddleAdam(_PaddleRule):
    classes = ("Adam", "AdamW")

    def hyper(self, cls: str, group: Mapping[str, Any], param: str) -> Hyper:
        hp = _common(cls, group, param)
        hp.update(
            beta1=float(group.get("beta1", 0.9)),
            beta2=float(group.get("beta2", 0.999)),
            epsilon=float(group.get("epsilon", 1e-8)),
            amsgrad=bool(group.get("amsgrad", False)),
            coeff=0.0,
        )
        if cls == "AdamW":
            if "coeff" not in group:
                raise unsupported("paddle", cls, "no recorded coeff",
                                  "re-export the graph with this version of lossgraph")
            ratio = group.get("lr_ratio", 1.0)
            ratio = ratio.get(param, 1.0) if isinstance(ratio, dict) else ratio
            if "decay_params" not in group or param in group["decay_params"]:
                hp.update(coeff=_f32(group["coeff"]), lr_ratio=_f32(ratio))
        return hp

    def slots(self, hp: Hyper) -> list[Slot]:
        slots = [Slot("moment1"), Slot("moment2")]
        slots += [Slot("moment2_max")] if hp["amsgrad"] else []
        return slots + [
            Slot("beta1_pow_acc", shape=(1,), init=hp["beta1"]),
            Slot("beta2_pow_acc", shape=(1,), init=hp["beta2"]),
        ]

    def build(self, g: ParamScope, hp: Hyper) -> None:
        grad, lr = _regularized(g, hp), g.scalar("lr")
        beta1, beta2 = g.cast(hp["beta1"]), g.cast(hp["beta2"])
        beta1_pow, beta2_pow = g.state("beta1_pow_acc", [1]), g.state("beta2_pow_acc", [1])
        g.set_state("beta1_pow_acc", g.mul(beta1, beta1_pow, "beta1_pow_acc"), [1])
        g.set_state("beta2_pow_acc", g.mul(beta2, beta2_pow, "beta2_pow_acc"), [1])
        root = g.sqrt(g.sub(1.0, beta2_pow, "bias_correction2"), "bias_correction2_sqrt")
        lr_t = g.mul(lr, g.div(root, g.sub(1.0, beta1_pow, "bias_correction1"), "lr_t/ratio"), "lr_t")
        eps_t = g.mul(hp["epsilon"], root, "epsilon_t")
        param = g.param
        if hp["coeff"]:
            decay = g.mul(g.mul(lr, hp["lr_ratio"], "decay/lr"), hp["coeff"], "decay/rate")
            param = g.fma(g.neg(decay, "decay/neg"), param, param, "decay")
        one = g.cast(1.0)
        moment1 = g.fma(beta1, g.state("moment1"), g.mul(one - beta1, grad, "moment1/grad"), "moment1")
        if g.float32:
            square = g.mul(one - beta2, g.mul(grad, grad, "moment2/square"), "moment2/grad")
            moment2 = g.fma(beta2, g.state("moment2"), square, "moment2")
        else:
            square = g.mul(g.mul(one - beta2, grad, "moment2/scaled"), grad, "moment2/grad")
            moment2 = g.add(g.mul(beta2, g.state("moment2"), "moment2/decay"), square, "moment2")
        g.set_state("moment1", moment1)
        g.set_state("moment2", moment2)
        second = moment2
        if hp["amsgrad"]:
            second = g.max(moment2, g.state("moment2_max"), "moment2_max")
            g.set_state("moment2_max", second)
        denom = g.add(g.sqrt(second, "denom/sqrt"), eps_t, "denom")
        ratio = g.div(moment1, denom, "step")
        g.set_param(g.fma(g.neg(lr_t, "neg_lr_t"), ratio, param, "param"))
