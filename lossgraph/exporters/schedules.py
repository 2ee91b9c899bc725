"""Learning-rate schedules as lists: the exporters step a copy of each scheduler and record the
learning rate of every optimizer step, so that training steps on ONNX Runtime use exactly the
framework's values (any scheduler class, its own arithmetic)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

from lossgraph.errors import SpecError
from lossgraph.spec import LRSchedule

#: Optimizer steps recorded per schedule; ``verify --steps`` can run at most this many.
RECORDED_STEPS = 1000


def _as_schedule(value: Any) -> LRSchedule:
    return value if isinstance(value, LRSchedule) else LRSchedule(value)


def _simulate(schedule: LRSchedule, read_lrs: Any, step: Any) -> list[list[float]]:
    """Learning rates (one per parameter group) used by each optimizer step."""
    out = []
    for k in range(RECORDED_STEPS):
        if schedule.when == "before" and k % schedule.every == 0:
            step()
        out.append([float(lr) for lr in read_lrs()])
        if schedule.when == "after" and (k + 1) % schedule.every == 0:
            step()
    return out


def torch_schedule(schedule_value: Any, optimizer: Any, source: str) -> dict[str, Any]:
    """Record a torch scheduler bound to ``optimizer`` (its parameters are not copied)."""
    import torch

    schedule = _as_schedule(schedule_value)
    scheduler = schedule.scheduler
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise SpecError(f"{source}: {type(scheduler).__name__} is not a torch LR scheduler.")
    if scheduler.optimizer is not optimizer:
        raise SpecError(f"{source}: the LR scheduler is bound to another optimizer.")
    memo = {id(p): torch.zeros(1) for g in optimizer.param_groups for p in g["params"]}
    twin = copy.deepcopy(scheduler, memo)
    with warnings.catch_warnings():
        # the copy's optimizer never steps: torch's "optimizer.step() has been overridden" and
        # "lr_scheduler.step() before optimizer.step()" warnings are about lossgraph's copy
        warnings.filterwarnings("ignore", message=r".*optimizer\.step\(\)", category=UserWarning)
        lrs = _simulate(schedule, lambda: [g["lr"] for g in twin.optimizer.param_groups], twin.step)
    return _info(scheduler, "torch", schedule, lrs)


def paddle_schedule(schedule_value: Any, optimizer: Any, source: str) -> dict[str, Any]:
    """Record a Paddle LRScheduler (the optimizer's ``learning_rate``)."""
    import paddle

    schedule = _as_schedule(schedule_value)
    scheduler = schedule.scheduler
    if not isinstance(scheduler, paddle.optimizer.lr.LRScheduler):
        raise SpecError(f"{source}: {type(scheduler).__name__} is not a Paddle LRScheduler.")
    if optimizer._learning_rate is not scheduler:
        raise SpecError(
            f"{source}: the LR scheduler is not the learning_rate of its optimizer; pass the "
            f"same scheduler object to both."
        )
    twin = copy.deepcopy(scheduler)
    groups = len(optimizer._param_groups) if isinstance(optimizer._param_groups[0], dict) else 1
    lrs = _simulate(schedule, lambda: [twin.last_lr] * groups, twin.step)
    return _info(scheduler, "paddle", schedule, lrs)


def _info(scheduler: Any, framework: str, schedule: LRSchedule, lrs: list[list[float]]) -> dict[str, Any]:
    return {
        "cls": type(scheduler).__name__,
        "framework": framework,
        "every": schedule.every,
        "when": schedule.when,
        "lrs": lrs,
    }


def paddle_schedulers(spec: Any, optimizers: Any = None) -> dict[str, Any]:
    """Paddle schedulers: those the spec names, and any optimizer's ``learning_rate`` that is an
    LRScheduler (stepped after every optimizer step unless the spec says otherwise)."""
    import paddle

    out = dict(spec.lr_schedulers or {})
    for name, optimizer in (optimizers if optimizers is not None else spec.optimizers or {}).items():
        lr = getattr(optimizer, "_learning_rate", None)
        if name not in out and isinstance(lr, paddle.optimizer.lr.LRScheduler):
            out[name] = lr
    return out
