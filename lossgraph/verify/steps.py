"""Training steps on ONNX Runtime: forward, backward and optimizer update, step after step.

Each side trains on its own: its graph computes the losses, the updated buffers (training mode)
and the gradients of the step's loss; gradients are added into per-parameter buffers, the step's
optimizer updates its parameters from the buffers and clears them, and its learning-rate
schedule advances — the loop of ``shared/seeds/backward-alignment-discogan-paddle.md``:

    for step, (loss, optimizer) in cycle(schedule):
        losses = forward(); grad_buffers += d(loss)/d(params)
        optimizer.step(); optimizer.clear_grad()

A backward adds into the buffers of every parameter it reaches; a step clears only its own
optimizer's parameters (torch's ``zero_grad()`` leaves None, Paddle's ``clear_grad()`` zeros: a
parameter with a None gradient is skipped by the next update, one with zeros is not).

Comparing a torch graph with a Paddle graph step by step, one framework convention is not a
porting bug and is converted rather than reported: BatchNorm's running variance takes the
unbiased batch variance in torch and the biased one in Paddle. The candidate's running variance
is compared with the reference's converted to the candidate's convention (the batch variance is
recovered from the reference's values before and after the step and its momentum, and applied
to the candidate's own running variance before the step, which differs by the conventions of
the steps before); the raw diff is kept in :class:`~lossgraph.verify.results.ConventionDiff`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lossgraph.autodiff import build_gradients
from lossgraph.errors import VerificationError
from lossgraph.graph import (
    DEFAULT_LR,
    DEFAULT_OPTIMIZER,
    LossGraph,
    OptimizerInfo,
    training_schedule,
    weights_as_inputs,
)
from lossgraph.inputs import dropout_feeds, mask_index
from lossgraph.progress import say
from lossgraph.runtime.float64 import lower_float64
from lossgraph.runtime.session import OrtRunner
from lossgraph.spec import EMA
from lossgraph.verify.align import ParamMap, ParamPair
from lossgraph.verify.compare import Tolerance, compare_arrays, on_side
from lossgraph.verify.results import ConventionDiff, GradDiff, LossDiff, StepResult

#: How each framework's ``zero_grad()``/``clear_grad()`` leaves a gradient buffer by default.
CLEARED_TO_NONE = {"torch": True, "paddle": False}

#: ``inputs(step, micro)``: the feeds of one micro-batch (``lossgraph.inputs.Draws``)
InputsFor = Callable[[int, int], Mapping[str, np.ndarray]]


@dataclass
class StepOutcome:
    """What one training step on one side produced."""

    loss: str
    optimizer: str
    losses: dict[str, float]
    gradients: dict[str, np.ndarray]  # d(step loss)/d(param) of this step's backward
    params: dict[str, np.ndarray]  # parameters and buffers after the step
    opt_state: dict[str, np.ndarray]  # the step's optimizer's state after the update
    lr: list[float]
    #: what the step's gradient clipping measured, by stage (``GradientClip.apply``)
    clip: dict[str, float] = field(default_factory=dict)


def _frozen(value: np.ndarray) -> np.ndarray:
    """``value``, read-only. Parameters, buffers and optimizer state are replaced by each step,
    never changed in place, so the trajectories share the arrays instead of copying every value
    at every step (the copies took a tenth of a DiscoGAN verify); a write in place would fail."""
    value = np.asarray(value)
    value.flags.writeable = False
    return value


@dataclass
class Trainer:
    """Trains one exported graph on ONNX Runtime."""

    graph: LossGraph
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    side: str = "reference"  # or "candidate": named in errors about the graph
    params: dict[str, np.ndarray] = field(default_factory=dict)
    grad_buffers: dict[str, np.ndarray | None] = field(default_factory=dict)
    opt_states: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    opt_steps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from lossgraph.optim import build_update
        from lossgraph.optim.clip import GradientClip
        from lossgraph.optim.update import HYPER_FLOAT32

        meta = self.graph.meta
        self.trainable = self.graph.trainable_params()
        self.optimizers = dict(meta.optimizers) or {
            DEFAULT_OPTIMIZER: OptimizerInfo(
                cls="SGD", framework=meta.framework,
                groups=[{"params": self.trainable, "lr": DEFAULT_LR, "learning_rate": DEFAULT_LR}],
            )
        }
        self.schedule = training_schedule(meta.schedule, meta.losses, meta.optimizers)
        self._runners: dict[str, tuple[OrtRunner, dict[str, str | None]]] = {}
        #: loss -> its gradient graph (``build_gradients``) and the gradient of each parameter
        self._built: dict[str, tuple[Any, dict[str, str | None]]] = {}
        self._updates = {
            # the float64 re-run computes with the float32 hyper-parameters, the rest exact
            name: build_update(info, meta.params, dtype=self.dtype,
                               scalars=HYPER_FLOAT32 if self.dtype == "float64" else None)
            for name, info in self.optimizers.items()
        }
        shapes = {name: info.shape for name, info in meta.params.items()}
        self._clips = {
            name: GradientClip(info.clip, shapes, dtype=self.dtype, device=self.device,
                               hyper_float32=self.dtype == "float64")
            for name, info in self.optimizers.items() if info.clip
        }
        self.cleared_to_none = CLEARED_TO_NONE.get(meta.framework, True)

    def start(self, params: Mapping[str, np.ndarray]) -> None:
        """Begin training from these parameter and buffer values."""
        self.params = {k: _frozen(np.array(v)) for k, v in params.items()}
        self.grad_buffers = {name: None for name in self.trainable}
        self.opt_states = {
            name: update.init_state({p: self.params[p] for p in self._params_of(name)})
            for name, update in self._updates.items()
        }
        self.opt_steps = dict.fromkeys(self._updates, 0)
        self.ema_updates = dict.fromkeys(self._updates, 0)
        for name, info in self.optimizers.items():
            if info.ema is not None:  # the average starts as the initial weights
                self.opt_states[name].update({f"{p}:ema": self.params[p] for p in self._params_of(name)})

    def _ema_step(self, optimizer: str) -> None:
        """Update the optimizer's EMA of its parameters if its settings say so after this step
        (:func:`ema_update`)."""
        settings = self.optimizers[optimizer].ema
        if settings is None:
            return
        if not EMA(**settings).updates_after(self.opt_steps[optimizer]):
            return
        first = self.ema_updates[optimizer] == 0
        state = dict(self.opt_states[optimizer])
        for param in self._params_of(optimizer):
            key = f"{param}:ema"
            state[key] = _frozen(ema_update(state[key], self.params[param], settings, first, self.dtype))
        self.opt_states[optimizer] = state
        self.ema_updates[optimizer] += 1

    def _params_of(self, optimizer: str) -> list[str]:
        return [p for p in self.optimizers[optimizer].params if p in self.params]

    def _runner(self, loss: str) -> tuple[OrtRunner, dict[str, str | None]]:
        if loss not in self._runners:
            with on_side(self.side, self.graph.path):
                if loss not in self._built:  # built once: a schedule alternates its losses
                    result = build_gradients(self.graph.model, loss, self.trainable)
                    # kept without the weights, which every run feeds (half a float64 graph), and
                    # with the float64 convolutions the gradients were built over decomposed for
                    # ONNX Runtime (lower_float64), once: a schedule alternates its losses
                    model = lower_float64(weights_as_inputs(result.model, self.params))
                    self._built[loss] = (model, result.grads)
                model, grads = self._built[loss]
                # float64 graphs (noise floor) are several times larger: one session at a time
                # (keeping both of DiscoGAN's saved 12 s of 55 and cost 0.4 GB)
                if self.dtype != "float32":
                    self._runners.clear()
                runner = OrtRunner(model, fed=self.params, device=self.device, arena=self.dtype == "float32")
            self._runners[loss] = (runner, grads)
        return self._runners[loss]

    def lr(self, optimizer: str) -> list[float]:
        """The learning rate (per parameter group) of this optimizer's next step."""
        schedule = self.graph.meta.lr_schedulers.get(optimizer)
        step = self.opt_steps[optimizer]
        if schedule is None:
            return [
                float(g.get("lr", g.get("learning_rate", DEFAULT_LR)))
                for g in self.optimizers[optimizer].groups
            ]
        if step >= len(schedule["lrs"]):
            raise VerificationError(
                f"The learning-rate schedule of {optimizer!r} was recorded for "
                f"{len(schedule['lrs'])} steps; fewer steps can be verified."
            )
        return list(schedule["lrs"][step])

    def step(self, index: int, inputs: Mapping[str, np.ndarray] | InputsFor) -> StepOutcome:
        """Run training step ``index`` (its loss and optimizer come from the schedule): the
        forward and backward pass of each of its micro-batches (``meta.accumulate``; ``inputs``:
        the same feeds for all, or ``inputs(step, micro)``), then the clipping and the update.
        The step's losses and gradients are the sums over its micro-batches."""
        loss, optimizer = self.schedule[index % len(self.schedule)]
        if optimizer not in self._updates:
            raise VerificationError(
                f"The schedule names optimizer {optimizer!r}, which the graph does not have "
                f"({', '.join(self._updates)})."
            )
        runner, grad_names = self._runner(loss)
        meta = self.graph.meta
        inputs_for = inputs if callable(inputs) else (lambda step, micro: inputs)
        losses: dict[str, float] = dict.fromkeys(meta.losses, 0.0)
        gradients: dict[str, np.ndarray] = {}
        for micro in range(meta.accumulate):
            masks = dropout_feeds(meta.dropout, self.seed, mask_index(meta, index, micro), np.dtype(self.dtype))
            feeds = {**inputs_for(index, micro), **masks, **self.params}
            outputs = [*meta.losses, *meta.state_outputs, *[g for g in grad_names.values() if g]]
            with on_side(self.side, self.graph.path):
                values = runner.run(feeds, outputs=outputs)
            for name in meta.losses:
                losses[name] += float(values[name])
            for output, buffer in meta.state_outputs.items():
                self.params[buffer] = _frozen(values[output])
            for param, grad_name in grad_names.items():
                if grad_name is None:
                    continue  # the loss does not reach it: its buffer is left as it is
                grad = values[grad_name]
                gradients[param] = grad if param not in gradients else gradients[param] + grad
                buffer = self.grad_buffers.get(param)
                self.grad_buffers[param] = grad.copy() if buffer is None else buffer + grad
        lr = self.lr(optimizer)
        update = self._updates[optimizer]
        own = self._params_of(optimizer)
        grads, clipped = {p: self.grad_buffers.get(p) for p in own}, {}
        if optimizer in self._clips:  # the loop's clip call, then the optimizer's grad_clip
            grads, clipped = self._clips[optimizer].apply(grads)
        new_params, new_state = update.step(
            {p: self.params[p] for p in own},
            grads,
            self.opt_states[optimizer],
            lr if len(lr) > 1 else lr[0],
        )
        self.params.update({k: _frozen(v) for k, v in new_params.items()})
        new_state = {k: _frozen(v) for k, v in new_state.items()}
        self.opt_states[optimizer] = new_state
        self.opt_steps[optimizer] += 1
        self._ema_step(optimizer)
        new_state = self.opt_states[optimizer]
        for param in own if meta.clear_grads else ():
            buffer = self.grad_buffers.get(param)
            self.grad_buffers[param] = (
                None if self.cleared_to_none or buffer is None else np.zeros_like(buffer)
            )
        return StepOutcome(
            loss=loss,
            optimizer=optimizer,
            losses=losses,
            gradients=gradients,
            params=dict(self.params),
            opt_state=dict(new_state),
            lr=lr,
            clip=clipped,
        )


def ema_update(
    average: np.ndarray, weight: np.ndarray, settings: Mapping[str, Any], first: bool, dtype: str
) -> np.ndarray:
    """One update of an exponential moving average of ``weight`` (``lossgraph.EMA``), in float32
    as the frameworks compute it (``dtype="float64"``: the same with the settings rounded to
    float32). ``AveragedModel``: the first update copies the weight, later ones are torch's
    ``_foreach_lerp_(average, weight, 1 - decay)``, whose CPU kernel fuses the multiply-add
    (``fma(w, weight - average, average)``; ``fma(w - 1, weight - average, weight)`` for
    ``w >= 0.5``); ``manual``: ``average * decay + weight * (1 - decay)``, three roundings."""
    kind = np.float32 if dtype == "float32" else np.float64
    decay = kind(np.float32(settings["decay"]))
    rest = kind(np.float32(1.0 - float(settings["decay"])))
    average, weight = np.asarray(average, kind), np.asarray(weight, kind)
    if settings.get("style") == "AveragedModel":
        if first:
            return weight.copy()
        diff = (weight - average).astype(kind)
        if rest < 0.5:
            exact = rest.astype(np.float64) * diff + average.astype(np.float64)
        else:
            exact = (rest.astype(np.float64) - 1.0) * diff + weight.astype(np.float64)
        return exact.astype(kind)
    return ((average * decay).astype(kind) + (weight * rest).astype(kind)).astype(kind)


#: Optimizer state slots that mean the same thing in torch and Paddle (reference slot names
#: first). Slots without a counterpart (torch's step count, Paddle's beta powers) are compared
#: only between graphs of the same framework.
SLOT_ALIASES = {
    "moment1": "exp_avg",
    "moment2": "exp_avg_sq",
    "velocity": "momentum_buffer",
}


def canonical_slot(slot: str) -> str:
    return SLOT_ALIASES.get(slot, slot)


def split_state_key(key: str) -> tuple[str, str]:
    """``"fc.weight:exp_avg"`` -> ("fc.weight", "exp_avg")."""
    param, _, slot = key.rpartition(":")
    return param, slot


class Trajectory:
    """One side's training run in memory that does not grow with the number of steps.

    Kept whole (the values before the step and its :class:`StepOutcome`): the latest step and
    the steps marked with :meth:`keep` (the first that fails, which the localization reads).
    Every step also leaves a slim record (:meth:`records`: its losses, learning rates and
    clipping, and with ``slim_params`` its parameters and averaged weights, which ``--native``
    compares step by step). ``before[k]`` and ``outcomes[k]`` of a step not kept are made again
    by ``replay(k)``, which trains the side from the start up to step ``k``; training is
    deterministic, so the replayed values are the ones the run had. Keeping every step's
    parameters, gradients and optimizer state grew a DiscoGAN verify by about 330 MB a step.
    ``whole=False`` keeps no step whole (the float64 re-run: its slim records are all that is
    read), and :meth:`finish` lets the latest step go when the run ends."""

    def __init__(
        self,
        replay: Callable[[int], tuple[dict[str, np.ndarray], StepOutcome]] | None = None,
        slim_params: bool = False,
        whole: bool = True,
    ) -> None:
        self.replay = replay
        self.slim_params = slim_params
        self.whole_steps = whole
        self._before: dict[int, dict[str, np.ndarray]] = {}
        self._outcomes: dict[int, StepOutcome] = {}
        self._kept: set[int] = set()
        self._records: list[StepOutcome] = []
        self.before = _StepLookup(self, 0)
        self.outcomes = _StepLookup(self, 1)

    def record(self, index: int, before: dict[str, np.ndarray], outcome: StepOutcome) -> None:
        """Step ``index`` (the next one) finished; the step before it is let go unless kept."""
        if self.whole_steps:
            self._before[index], self._outcomes[index] = before, outcome
        params = dict(outcome.params) if self.slim_params else {}
        averages = {k: v for k, v in outcome.opt_state.items() if k.endswith(":ema")} if self.slim_params else {}
        self._records.append(StepOutcome(outcome.loss, outcome.optimizer, dict(outcome.losses), {}, params,
                                         averages, list(outcome.lr), dict(outcome.clip)))
        if index - 1 not in self._kept:
            self._before.pop(index - 1, None)
            self._outcomes.pop(index - 1, None)

    def keep(self, index: int) -> None:
        """Keep step ``index`` whole (it must be the latest step recorded)."""
        self._kept.add(index)

    def finish(self) -> None:
        """The run ended: let the latest step go unless kept (it is replayed if asked for)."""
        for index in [i for i in self._outcomes if i not in self._kept]:
            self._before.pop(index, None)
            self._outcomes.pop(index, None)

    def spill(self) -> None:
        """Move the values of the steps kept whole out of memory, into files read back
        (memory-mapped) where used: the float64 re-run runs while the localization's step waits
        (330 MB of a DiscoGAN step per side). Each file is unlinked once mapped, so the disk
        space goes with the arrays, whatever ends the run."""
        for index in list(self._outcomes):
            outcome = self._outcomes[index]
            self._before[index] = _spilled(self._before[index])
            self._outcomes[index] = replace(
                outcome, gradients=_spilled(outcome.gradients), params=_spilled(outcome.params),
                opt_state=_spilled(outcome.opt_state),
            )

    def records(self) -> list[StepOutcome]:
        """Every step's slim record, in order (no gradients; parameters only with ``slim_params``)."""
        return list(self._records)

    def whole(self, index: int) -> tuple[dict[str, np.ndarray], StepOutcome]:
        if index not in self._outcomes:
            if self.replay is None or not 0 <= index < len(self._records):
                raise IndexError(f"step {index} of this run is not kept")
            return self.replay(index)
        return self._before[index], self._outcomes[index]

    def held(self) -> list[int]:
        """The steps kept whole now (for the memory tests)."""
        return sorted(self._outcomes)


#: arrays smaller than this stay in memory when a trajectory spills its kept steps
SPILL_BYTES = 65536


def _spilled(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each array (of ``SPILL_BYTES`` or more) in a memory-mapped file of its
    own, read-only;
    as they are where the temporary folder cannot take them (a full disk: memory is only a
    cost, never a wrong answer)."""
    out: dict[str, Any] = dict(values)
    try:
        with tempfile.TemporaryDirectory(prefix="lossgraph-step-") as folder:
            for index, (name, value) in enumerate(values.items()):
                if isinstance(value, np.ndarray) and value.nbytes >= SPILL_BYTES:
                    path = os.path.join(folder, f"{index}.npy")
                    np.save(path, value)
                    out[name] = np.load(path, mmap_mode="r")  # the mapping outlives the unlinked file
    except OSError:
        return dict(values)
    return out


class _StepLookup:
    """``trajectory.before[k]`` / ``trajectory.outcomes[k]``, replayed where not kept."""

    def __init__(self, trajectory: Trajectory, part: int) -> None:
        self._trajectory, self._part = trajectory, part

    def __getitem__(self, index: int) -> Any:
        return self._trajectory.whole(index)[self._part]

    def __len__(self) -> int:
        return len(self._trajectory._records)


def run_steps(
    ref: LossGraph,
    cand: LossGraph,
    param_map: ParamMap,
    inputs: Mapping[str, np.ndarray] | InputsFor,
    ref_params: Mapping[str, np.ndarray],
    cand_params: Mapping[str, np.ndarray],
    tol: Tolerance,
    steps: int,
    device: str,
    seed: int,
    dtype: str = "float32",
    slim_params: bool = False,
    whole: bool = True,
) -> tuple[list[StepResult], Trajectory, Trajectory]:
    """Train both graphs ``steps`` steps and compare every step (the candidate's dropout calls
    name the masks they draw: :func:`~lossgraph.verify.dropouts.with_masks_of`). The
    trajectories keep the first failing step whole (``slim_params``: every step's parameters
    too, for ``--native``; ``whole=False``: no step, see :class:`Trajectory`)."""
    sides = ((ref, "reference", ref_params), (cand, "candidate", cand_params))
    trainers = tuple(_trainer(graph, side, start, device, dtype, seed) for graph, side, start in sides)
    check_schedules(*trainers)
    trajectories = tuple(
        Trajectory(_replayer(graph, side, start, device, dtype, seed, inputs), slim_params, whole)
        for graph, side, start in sides
    )
    results: list[StepResult] = []
    run = "float64 re-run, training step" if dtype == "float64" else "training step"
    for index in range(steps):
        say(f"{run} {index + 1}/{steps}")
        befores, outcomes = [], []
        for trainer, trajectory in zip(trainers, trajectories):
            befores.append(dict(trainer.params))
            outcomes.append(trainer.step(index, inputs))
            trajectory.record(index, befores[-1], outcomes[-1])
        passing = all(r.passed for r in results)
        if passing:  # after a divergence, whatever follows is reported
            first = inputs(index, 0) if callable(inputs) else inputs
            _check_not_both_non_finite(index, *outcomes, trainers[0], befores[0], first)
        results.append(compare_step(index, *outcomes, param_map, ref, cand, tol, *befores))
        if passing and not results[-1].passed:
            for trajectory in trajectories:  # the localization reads the first failing step
                trajectory.keep(index)
    for trajectory in trajectories:
        trajectory.finish()
    return results, *trajectories


def _trainer(graph: LossGraph, side: str, start: Mapping[str, np.ndarray], device: str, dtype: str,
             seed: int) -> Trainer:
    trainer = Trainer(graph, device=device, dtype=dtype, seed=seed, side=side)
    trainer.start(start)
    return trainer


def _replayer(
    graph: LossGraph, side: str, start: Mapping[str, np.ndarray], device: str, dtype: str, seed: int,
    inputs: Mapping[str, np.ndarray] | InputsFor,
) -> Callable[[int], tuple[dict[str, np.ndarray], StepOutcome]]:
    """Train one side again from ``start`` up to step ``k``: its values before and its outcome."""

    def replay(k: int) -> tuple[dict[str, np.ndarray], StepOutcome]:
        trainer = _trainer(graph, side, start, device, dtype, seed)
        for index in range(k + 1):
            before = dict(trainer.params)
            outcome = trainer.step(index, inputs)
        return before, outcome

    return replay


def _check_not_both_non_finite(
    index: int, a: StepOutcome, b: StepOutcome, ref: Trainer, before: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
) -> None:
    """NaN or Inf in a loss on both sides at a step where nothing has diverged yet is bad input
    (exit 2), named by the reference's first node that produces it; on one side only it is a
    divergence, which the comparison measures as a difference of size inf."""
    from lossgraph.verify.localize import Side, check_not_both_non_finite

    masks = dropout_feeds(ref.graph.meta.dropout, ref.seed, mask_index(ref.graph.meta, index), np.dtype(ref.dtype))
    check_not_both_non_finite(
        a.losses, b.losses, "loss", f" at step {index}",
        lambda: Side(ref.graph, {**inputs, **masks, **before}, ref.device),
    )


def check_schedules(ref: Trainer, cand: Trainer) -> None:
    if ref.schedule != cand.schedule:
        raise VerificationError(
            f"The graphs train on different schedules: reference {ref.schedule}, candidate "
            f"{cand.schedule}; give both specs the same optimizer names and schedule."
        )
    counts = (ref.graph.meta.accumulate, cand.graph.meta.accumulate)
    if any(not isinstance(k, int) or k < 1 for k in counts):
        raise VerificationError(f"The graphs' metadata give accumulate {counts}: each must be a positive integer.")
    if counts[0] != counts[1]:
        raise VerificationError(
            f"The graphs accumulate different numbers of micro-batches per step: reference "
            f"{counts[0]}, candidate {counts[1]} (Spec.accumulate); their steps see other data."
        )


def compare_step(
    index: int,
    a: StepOutcome,
    b: StepOutcome,
    param_map: ParamMap,
    ref: LossGraph,
    cand: LossGraph,
    tol: Tolerance,
    ref_before: Mapping[str, np.ndarray] | None = None,
    cand_before: Mapping[str, np.ndarray] | None = None,
) -> StepResult:
    """Compare one training step of both sides: losses, gradients, parameters and buffers after
    the update, optimizer state and learning rate. ``ref_before``/``cand_before``: each side's
    values before the step (needed to compare running variances across frameworks)."""
    losses = {
        name: LossDiff(name, a.losses[name], b.losses[name],
                       compare_arrays(np.asarray(a.losses[name]), np.asarray(b.losses[name]), tol))
        for name in a.losses
    }
    gradients = {}
    parameters = {}
    state = {}
    conventions = []
    b_state = {split_state_key(k): v for k, v in b.opt_state.items()}
    b_state = {(p, canonical_slot(s)): v for (p, s), v in b_state.items()}
    for pair in param_map.pairs:
        if ref.meta.params[pair.reference].trainable:
            ga = a.gradients.get(pair.reference)
            zeros = np.zeros_like(a.params[pair.reference])
            gb = pair.gather(b.gradients, like=zeros)
            if ga is not None or any(c in b.gradients for c in pair.candidates):
                ga = ga if ga is not None else zeros
                gb = gb if gb is not None else np.zeros_like(ga)
                gradients[pair.reference] = GradDiff({a.loss: compare_arrays(ga, gb, tol)})
        ours = pair.gather(b.params)
        raw = parameters[pair.reference] = compare_arrays(a.params[pair.reference], ours, tol)
        converted = running_variance_convention(pair, a.params, ref_before, cand_before, ref, cand)
        if converted is not None:
            expected, note = converted
            parameters[pair.reference] = compare_arrays(expected, ours, tol)
            conventions.append(ConventionDiff(**note, raw=raw, converted=parameters[pair.reference]))
    pairs = param_map.by_reference()
    for key, value in a.opt_state.items():
        param, slot = split_state_key(key)
        pair = pairs.get(param)
        other = None
        if pair is not None:
            same = canonical_slot(slot)
            other = pair.gather({c: b_state[(c, same)] for c in pair.candidates if (c, same) in b_state})
        if other is None and slot == "ema" and pair is not None and not _has_ema(b_state, pair.candidates):
            other = pair.gather(b.params)  # a side without an EMA is evaluated with its weights
        if other is None:
            continue  # no counterpart in the candidate's optimizer (e.g. step vs beta powers)
        if other.shape == np.shape(value):
            state[key] = compare_arrays(np.asarray(value), other, tol)
    for pair in param_map.pairs:  # the candidate's EMA, where the reference keeps none
        key = f"{pair.reference}:ema"
        if key not in a.opt_state and _has_ema(b_state, pair.candidates) and pair.reference in a.params:
            other = pair.gather({c: b_state[(c, "ema")] for c in pair.candidates if (c, "ema") in b_state})
            if other is not None and other.shape == np.shape(a.params[pair.reference]):
                state[key] = compare_arrays(np.asarray(a.params[pair.reference]), other, tol)
    return StepResult(
        step=index,
        losses=losses,
        loss=a.loss,
        optimizer=a.optimizer,
        gradients=gradients,
        parameters=parameters,
        optimizer_state=state,
        lr=compare_arrays(*_group_lrs(a.lr, b.lr), tol),
        conventions=conventions,
    )


def _group_lrs(a: list[float], b: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' learning rates, one per parameter group, made comparable where the ports
    group the parameters otherwise (torch's no-decay group against Paddle's one group with
    ``apply_decay_param_fun``): a single rate stands for every group of the other side; two
    different groupings are compared by the rates they use."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape == y.shape:
        return x, y
    if x.size == 1 or y.size == 1:
        return np.broadcast_arrays(x, y)
    x, y = np.unique(x), np.unique(y)
    if x.shape != y.shape:
        x, y = np.array([x.min(), x.max()]), np.array([y.min(), y.max()])
    return x, y


def _has_ema(state: Mapping[tuple[str, str], np.ndarray], names: list[str]) -> bool:
    return any((name, "ema") in state for name in names)


#: Each framework's batch variance in its BatchNorm's running-variance update.
VARIANCE_CONVENTIONS = {"torch": "unbiased", "paddle": "biased"}


def running_variance_convention(
    pair: ParamPair,
    ref_after: Mapping[str, np.ndarray],
    ref_before: Mapping[str, np.ndarray] | None,
    cand_before: Mapping[str, np.ndarray] | None,
    ref: LossGraph,
    cand: LossGraph,
) -> tuple[np.ndarray, dict] | None:
    """The reference's updated running variance in the candidate's convention, and what was
    converted; None when the pair is no running variance or both sides share the convention.

    The running variance after a forward pass is ``D r_before + C``: ``D`` the product of the
    retention factors of the layer's calls (torch ``1 - m``, Paddle ``m``), ``C`` the batch
    variances' contribution. The candidate's convention multiplies each batch variance by
    ``(n-1)/n`` (unbiased to biased, n elements per channel) or ``n/(n-1)``, so ``C`` scales by
    that factor; the reference's momentum is kept (a momentum that differs is a porting bug).
    ``D`` applies to the candidate's own value before the step (carried into the reference's
    layout), which after the first step already differs by the convention."""
    info = ref.meta.batch_norm.get(pair.reference)
    if info is None or ref_before is None or pair.reference not in ref_before:
        return None
    other = cand.meta.batch_norm.get(pair.candidate, {})
    ours = info.get("convention") or VARIANCE_CONVENTIONS.get(ref.framework)
    theirs = other.get("convention") or VARIANCE_CONVENTIONS.get(cand.framework)
    counts = list(info.get("counts") or other.get("counts") or [])
    if ours == theirs or theirs is None or not counts or len(set(counts)) != 1 or counts[0] < 2:
        return None  # one convention, or batches of different sizes: not exactly recoverable
    before = np.asarray(ref_before[pair.reference], np.float64)
    after = np.asarray(ref_after[pair.reference], np.float64)
    own = before
    if cand_before is not None and pair.candidate in cand_before:
        own = np.asarray(pair.gather(cand_before), np.float64)
    retention = _retention(info, ref.framework, len(counts), ref_before)
    if retention is None:
        return None
    n = counts[0]
    factor = (n - 1) / n if ours == "unbiased" else n / (n - 1)
    expected = retention * own + factor * (after - retention * before)
    note = {
        "name": pair.reference,
        "candidate": pair.candidate,
        "kind": "running variance",
        "reference_convention": ours,
        "candidate_convention": theirs,
        "counts": counts,
    }
    return expected, note


def _retention(
    info: Mapping, framework: str, calls: int, before: Mapping[str, np.ndarray]
) -> float | None:
    """The factor the running statistics keep of their old value over ``calls`` updates."""
    momentum = info.get("momentum")
    if framework == "paddle":
        return float(momentum) ** calls if momentum is not None else None
    if momentum is not None:
        return (1.0 - float(momentum)) ** calls
    # momentum=None: torch's cumulative average, factor 1/t for the t-th batch tracked
    tracked = before.get(f"{info.get('module')}.num_batches_tracked")
    if tracked is None:
        return None
    t0 = int(np.asarray(tracked))
    return float(np.prod([1.0 - 1.0 / (t0 + j) for j in range(1, calls + 1)]))
