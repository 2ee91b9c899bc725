"""Update rules, their registry, and :class:`OptimizerUpdate`, which runs one optimizer on ORT."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lossgraph.errors import InternalError, UnsupportedOpError, VerificationError
from lossgraph.graph import OptimizerInfo, ParamInfo
from lossgraph.optim.graph import DTYPES, ParamScope, UpdateGraph
from lossgraph.runtime.session import OrtRunner

Hyper = dict[str, Any]


@dataclass(frozen=True)
class Slot:
    """One entry of a parameter's optimizer state, stored as ``<param>:<name>``."""

    name: str
    shape: tuple[int, ...] | None = None  # None: the parameter's shape
    init: float = 0.0
    in_graph: bool = True  # False: kept in Python, like torch's step counter
    lazy: bool = False  # absent until the parameter's first update (torch's momentum_buffer)


class UpdateRule(ABC):
    """How one framework's optimizer class updates a single parameter.

    ``hyper`` turns the recorded group (plus per-parameter settings) into the settings of one
    parameter and raises :class:`UnsupportedOpError` for what the rule cannot reproduce;
    ``prepare`` computes the per-step scalars the framework computes in Python and the state it
    keeps in Python; ``build`` emits the graph for one parameter.
    """

    framework: str = ""
    classes: tuple[str, ...] = ()

    @abstractmethod
    def hyper(self, cls: str, group: Mapping[str, Any], param: str) -> Hyper: ...

    def slots(self, hp: Hyper) -> list[Slot]:
        return []

    def prepare(
        self, hp: Hyper, lr: float, state: Mapping[str, np.ndarray], np_dtype: type[np.floating]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        return {"lr": lr}, {}

    @abstractmethod
    def build(self, g: ParamScope, hp: Hyper) -> None: ...


RULES: dict[tuple[str, str], UpdateRule] = {}


def update_rule(cls: type[UpdateRule]) -> type[UpdateRule]:
    """Register a rule for its framework and classes; registering a class twice fails."""
    rule = cls()
    for name in cls.classes:
        key = (cls.framework, name)
        if key in RULES:
            raise InternalError(f"two update rules for {cls.framework} {name}")
        RULES[key] = rule
    return cls


def unsupported(framework: str, cls: str, setting: str, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{framework} {cls} with {setting} is not supported: {why}.")


#: ``scalars`` of a float64 update whose hyper-parameters are float32 values and whose derived
#: scalars are exact (see :func:`build_update`).
HYPER_FLOAT32 = "hyper-float32"


def _rounded(value: Any) -> Any:
    """Every float in a hyper-parameter (dicts and lists included) rounded to float32."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rounded(v) for v in value)
    if isinstance(value, float):
        return float(np.float32(value))
    return value


@dataclass
class _Member:
    name: str
    group: int
    shape: list[int]
    rule: UpdateRule
    hp: Hyper
    slots: list[Slot]


class OptimizerUpdate:
    """One optimizer's update of all its parameters, as one ONNX graph on one ORT session."""

    def __init__(
        self,
        info: OptimizerInfo,
        params: Mapping[str, ParamInfo],
        dtype: str = "float32",
        device: str = "cpu",
        scalars: str | None = None,
    ) -> None:
        for name in (dtype, scalars or dtype):
            if name not in DTYPES and name != HYPER_FLOAT32:
                raise VerificationError(f"Unknown dtype {name!r}; use one of {', '.join(DTYPES)}.")
        rule = RULES.get((info.framework, info.cls))
        if rule is None:
            known = ", ".join(f"{f} {c}" for f, c in RULES)
            raise UnsupportedOpError(
                f"No update rule for {info.framework} optimizer {info.cls!r}; rules exist for: "
                f"{known}."
            )
        self.info = info
        self.dtype = dtype
        self.np_dtype = DTYPES[dtype][0]
        #: hyper-parameters (and learning rates) are rounded to float32 first, then everything
        #: derived from them is computed in ``dtype`` (see build_update)
        self.hyper_float32 = scalars == HYPER_FLOAT32
        scalars = dtype if self.hyper_float32 else scalars
        self.scalar_dtype = DTYPES[scalars or dtype][0]
        self.members: list[_Member] = []
        graph = UpdateGraph(dtype, scalars)
        for index, group in enumerate(info.groups):
            for name in group["params"]:
                if name not in params:
                    raise VerificationError(
                        f"{info.framework} {info.cls} updates parameter {name!r}, which the "
                        f"graph does not have."
                    )
                hp = rule.hyper(info.cls, group, name)
                hp = _rounded(hp) if self.hyper_float32 else hp
                member = _Member(name, index, list(params[name].shape), rule, hp, rule.slots(hp))
                rule.build(graph.scope(name, member.shape), hp)
                self.members.append(member)
        self.model: onnx.ModelProto = graph.model(f"{info.framework}_{info.cls}_update")
        self.state_names = [f"{m.name}:{s.name}" for m in self.members for s in m.slots]
        # ORT cannot load a graph without outputs; an optimizer without parameters needs none
        # without ONNX Runtime's arena: an update reads and writes every parameter (and its state),
        # and an arena keeps its peak for the session's life (DiscoGAN, 5 steps: 3.2 -> 2.4 GB)
        self._runner = OrtRunner(self.model, device=device, arena=False) if self.members else None

    @property
    def params(self) -> list[str]:
        return [m.name for m in self.members]

    def _initial(self, member: _Member, slot: Slot) -> np.ndarray:
        shape = member.shape if slot.shape is None else slot.shape
        return np.full(shape, self.scalar_dtype(slot.init), dtype=self.np_dtype)

    def init_state(self, params: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The framework's state before the first step; ``params`` (optional) are checked
        against the recorded shapes."""
        state = {}
        for member in self.members:
            given = None if params is None else params.get(member.name)
            if given is not None and list(np.shape(given)) != member.shape:
                raise VerificationError(
                    f"Parameter {member.name!r} has shape {list(np.shape(given))}, but the "
                    f"graph records {member.shape}."
                )
            for slot in member.slots:
                if not slot.lazy:
                    state[f"{member.name}:{slot.name}"] = self._initial(member, slot)
        return state

    def _group_lrs(self, lr: float | Sequence[float]) -> list[float]:
        lrs = [float(lr)] * len(self.info.groups) if np.isscalar(lr) else [float(x) for x in lr]
        if len(lrs) != len(self.info.groups):
            raise VerificationError(
                f"{self.info.cls} has {len(self.info.groups)} parameter groups but got "
                f"{len(lrs)} learning rates."
            )
        return [_rounded(x) for x in lrs] if self.hyper_float32 else lrs

    def step(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray | None],
        state: Mapping[str, np.ndarray],
        lr: float | Sequence[float],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One ``optimizer.step()``: the parameters and the state afterwards.

        ``lr`` is the learning rate of this step, one for all groups or one per group. A
        parameter whose gradient is None (or that is not in ``params``) is left as it is, and
        so is its state, as both frameworks skip parameters without a gradient.
        """
        lrs = self._group_lrs(lr)
        feeds: dict[str, np.ndarray] = {}
        new_state = dict(state)
        active = []
        for m in self.members:
            value, grad = params.get(m.name), grads.get(m.name)
            run = value is not None and grad is not None
            zeros = np.zeros(m.shape, self.np_dtype)
            feeds[m.name] = zeros if value is None else np.asarray(value, self.np_dtype)
            feeds[f"{m.name}:grad"] = np.asarray(grad, self.np_dtype) if run else zeros
            keys = {s.name: f"{m.name}:{s.name}" for s in m.slots}
            own = {slot: state[key] for slot, key in keys.items() if key in state}
            scalars, kept = m.rule.prepare(m.hp, lrs[m.group], own, self.scalar_dtype)
            kept = {k: np.asarray(v, self.np_dtype) for k, v in kept.items()}
            for key, scalar in scalars.items():
                feeds[f"{m.name}:{key}"] = np.asarray(self.scalar_dtype(scalar), self.np_dtype)
            for slot in m.slots:
                if slot.in_graph:
                    current = own.get(slot.name)
                    current = self._initial(m, slot) if current is None else current
                    feeds[f"{m.name}:{slot.name}"] = np.asarray(current, self.np_dtype)
            if run:
                active.append(m)
                new_state.update({f"{m.name}:{k}": v for k, v in kept.items()})
        out = self._runner.run(feeds) if active and self._runner is not None else {}
        new_params = dict(params)
        for m in active:
            new_params[m.name] = out[f"{m.name}:updated"]
            for slot in m.slots:
                if slot.in_graph:
                    new_state[f"{m.name}:{slot.name}"] = out[f"{m.name}:{slot.name}:updated"]
        return new_params, new_state


def build_update(
    info: OptimizerInfo,
    params: Mapping[str, ParamInfo],
    dtype: str = "float32",
    device: str = "cpu",
    scalars: str | None = None,
) -> OptimizerUpdate:
    """The update graph of an exported optimizer, ready to step (see :mod:`lossgraph.optim`).

    With ``dtype="float64"``, ``scalars`` says which values the update computes with:

    - ``None``: hyper-parameters and per-step scalars in float64, as given;
    - ``"float32"``: every scalar as the framework's float32 program holds it, the derived ones
      (torch's bias corrections, ``1 - beta``) rounded to float32 too: the float32 run's
      arithmetic exactly, rounding of each scalar included;
    - ``"hyper-float32"`` (the noise floor's re-run): the hyper-parameters and learning rates
      rounded to float32, which is how both frameworks' float32 programs hold them, and
      everything derived from them exact. Two frameworks that write one algorithm in different
      orders (torch's and Paddle's Adam) then compute the same update up to float64 rounding,
      while settings that differ in float32 stay different.
    """
    return OptimizerUpdate(info, params, dtype=dtype, device=device, scalars=scalars)
