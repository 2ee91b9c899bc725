"""``verify --native``: the same training steps in the framework itself, eagerly.

The spec file recorded in a graph's metadata is loaded again, its model is given the values
the ONNX Runtime run started from, and the spec's own optimizers and schedulers run the same
schedule on the same inputs. Dropout uses the masks lossgraph feeds the graphs (the frameworks'
RNGs would draw others); everything else — BatchNorm, the optimizers, ``zero_grad`` and
``clear_grad`` — is the framework's own. The schedule, and the SGD used without optimizers,
are the ONNX Runtime trainer's (``lossgraph.graph.training_schedule``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.errors import VerificationError
from lossgraph.exporters.schedules import paddle_schedulers
from lossgraph.exporters.training import StepRecorder, paddle_training, torch_training
from lossgraph.graph import DEFAULT_LR, DEFAULT_OPTIMIZER, GraphMeta, training_schedule
from lossgraph.inputs import dropout_feeds, mask_index
from lossgraph.spec import ClipGradNorm, LRSchedule, load_spec, parse_target


@dataclass
class NativeStep:
    """One eager training step: the losses before the update, the values after it."""

    losses: dict[str, float]
    params: dict[str, np.ndarray]


def run_native(
    meta: GraphMeta,
    start: Mapping[str, np.ndarray],
    steps: int,
    inputs: Mapping[str, np.ndarray],
    seed: int,
    dtype: str = "float32",
) -> list[NativeStep]:
    """Train the graph's spec eagerly for ``steps`` steps from the values ``start``, with the
    dropout masks ONNX Runtime gets (a candidate's dropout calls name their matched reference
    dropouts' masks). ``dtype="float64"``: the spec is built with the framework's default dtype
    set to float64 (model, optimizer state and learning-rate tensors alike) and trained on the
    same values widened: the exact-arithmetic run that tells ONNX Runtime's float32 rounding
    from a graph that trains otherwise."""
    path, _ = parse_target(meta.source) if meta.source else (None, "")
    if path is None or not Path(path).exists():
        raise VerificationError(
            f"--native needs the spec file the graph was exported from ({meta.source or 'unknown'}); "
            f"it is not there."
        )
    given = inputs if callable(inputs) else (lambda step, micro: inputs)
    inputs_for = (lambda step, micro: _widened(given(step, micro))) if dtype == "float64" else given
    if dtype == "float64":
        start = _widened(start)
    with _default_dtype(meta.framework, dtype):
        spec = load_spec(meta.source)
        if meta.framework == "torch":
            return _run_torch(spec, meta, start, steps, inputs_for, seed, dtype)
        return _run_paddle(spec, meta, start, steps, inputs_for, seed, dtype)


def _widened(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) if np.asarray(v).dtype == np.float32 else v
            for k, v in values.items()}


@contextlib.contextmanager
def _default_dtype(framework: str, dtype: str):
    if framework == "torch":
        import torch

        before = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            yield
        finally:
            torch.set_default_dtype(before)
    else:
        import paddle

        before = paddle.get_default_dtype()
        paddle.set_default_dtype(dtype)
        try:
            with _paddle_float64_clip_by_norm() if dtype == "float64" else contextlib.nullcontext():
                yield
        finally:
            paddle.set_default_dtype(before)


@contextlib.contextmanager
def _paddle_float64_clip_by_norm():
    """Paddle has no float64 CPU kernel of ``clip_by_norm`` (``ClipGradByNorm``): in the float64
    run the kernel's formula, ``x * (1 if norm <= max_norm else max_norm / norm)`` with
    ``norm = sqrt(sum(x**2))``, is computed with Paddle ops instead."""
    import paddle
    import paddle.nn.clip as clip

    kernel = clip.clip_by_norm

    def clip_by_norm(x, max_norm, name=None):
        if x.dtype != paddle.float64:
            return kernel(x, max_norm, name)
        norm = paddle.sqrt(paddle.sum(paddle.square(x)))
        limit = paddle.full([], max_norm, dtype=x.dtype)
        return x * paddle.where(norm <= limit, paddle.ones([], x.dtype), limit / norm)

    clip.clip_by_norm = clip_by_norm
    try:
        yield
    finally:
        clip.clip_by_norm = kernel


def _loop(spec, meta, steps, masks_for, forward, backward, step_optimizer, state_dict, schedulers, averages):
    """The training loop both frameworks share; the callables do the framework's part."""
    schedule = training_schedule(meta.schedule, meta.losses, spec.optimizers)
    counts: dict[str, int] = {}
    out = []
    for index in range(steps):
        loss, optimizer = schedule[index % len(schedule)]
        count = counts.get(optimizer, 0)
        planned = _as_schedule(schedulers.get(optimizer))
        if planned and planned.when == "before" and count % planned.every == 0:
            planned.scheduler.step()
        losses = dict.fromkeys(meta.losses, 0.0)
        for micro in range(meta.accumulate):  # each micro-batch's gradients add up
            values = forward(masks_for(mask_index(meta, index, micro)), index, micro)
            for name in meta.losses:
                losses[name] += float(values[name].item())
            backward(values[loss])
        step_optimizer(optimizer)
        counts[optimizer] = count + 1
        averages.step(optimizer, count + 1)
        if planned and planned.when == "after" and (count + 1) % planned.every == 0:
            planned.scheduler.step()
        out.append(NativeStep(losses, {**state_dict(), **averages.values()}))
    return out


class _Averages:
    """The spec's EMAs of its optimizers' parameters (``Spec.ema``), kept eagerly: ``params``
    by optimizer (name, tensor) pairs; ``copy``, ``lerp`` (torch's ``_foreach_lerp_``) and
    ``blend`` (``average * decay + weight * (1 - decay)``) are the framework's ops; ``numpy``
    reads a tensor."""

    def __init__(self, spec, params, copy, lerp, blend, numpy) -> None:
        self.settings = spec.emas()
        self.params = {name: params[name] for name in self.settings}
        self.averages = {name: [(n, copy(p)) for n, p in self.params[name]] for name in self.settings}
        self.updates = dict.fromkeys(self.settings, 0)
        self.lerp, self.blend, self.numpy, self.copy = lerp, blend, numpy, copy

    def step(self, optimizer: str, count: int) -> None:
        ema = self.settings.get(optimizer)
        if ema is None or not ema.updates_after(count):
            return
        pairs = zip(self.averages[optimizer], self.params[optimizer])
        if ema.style == "AveragedModel" and self.updates[optimizer] == 0:  # its first update copies
            self.averages[optimizer] = [(n, self.copy(p)) for (n, _), (_, p) in pairs]
        elif ema.style == "AveragedModel":
            self.lerp([a for _, a in self.averages[optimizer]], [p for _, p in self.params[optimizer]], ema.decay)
        else:
            self.averages[optimizer] = [(n, self.blend(a, p, ema.decay)) for (n, a), (_, p) in pairs]
        self.updates[optimizer] += 1

    def values(self) -> dict[str, np.ndarray]:
        return {f"{n}:ema": self.numpy(a) for averages in self.averages.values() for n, a in averages}


def _as_schedule(value: Any) -> LRSchedule | None:
    if value is None:
        return None
    return value if isinstance(value, LRSchedule) else LRSchedule(value)


def _masks(meta: GraphMeta, seed: int, index: int, dtype: str = "float32") -> list[np.ndarray]:
    """The dropout masks of step ``index``, as ONNX Runtime feeds them (see dropout_feeds)."""
    feeds = dropout_feeds(meta.dropout, seed, index, np.dtype(dtype))
    return [feeds[f"dropout:{k}"] for k in range(len(meta.dropout))]


def _run_torch(spec, meta, start, steps, inputs, seed, dtype) -> list[NativeStep]:
    import torch

    model = spec.model
    model.train(spec.train)
    if dtype == "float64":
        model.double()  # parameters the spec made float32 explicitly
    own = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.array(start[k])) if k in start else v for k, v in own.items()})
    optimizers = dict(spec.optimizers or {}) or {
        DEFAULT_OPTIMIZER: torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=DEFAULT_LR)
    }
    recorder = StepRecorder(module_paths={id(m): p for p, m in model.named_modules()})

    def masks_for(index):
        return [torch.from_numpy(m) for m in _masks(meta, seed, index, dtype)]

    def forward(masks, step, micro):
        recorder.reset(masks)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in inputs(step, micro).items()}
        with torch_training(recorder, batch_norm=False) if spec.train else contextlib.nullcontext():
            out = spec.loss(model, **tensors)
        return out if isinstance(out, dict) else {"loss": out}

    def step_optimizer(name):
        clip = spec.clips().get(name)
        if clip is not None:  # the loop's clip call, on the optimizer's parameters
            params = [p for group in optimizers[name].param_groups for p in group["params"]]
            if isinstance(clip, ClipGradNorm):
                torch.nn.utils.clip_grad_norm_(params, clip.max_norm, norm_type=clip.norm_type)
            else:
                torch.nn.utils.clip_grad_value_(params, clip.clip_value)
        optimizers[name].step()
        if meta.clear_grads:
            optimizers[name].zero_grad()

    def state_dict():
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

    def lerp(averages, weights, decay):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        with torch.no_grad():
            get_ema_multi_avg_fn(decay)(averages, weights, None)

    names = {id(p): n for n, p in model.named_parameters()}
    params = {name: [(names[id(p)], p) for g in opt.param_groups for p in g["params"]]
              for name, opt in optimizers.items()}
    averages = _Averages(
        spec, params, lambda p: p.detach().clone(), lerp,
        lambda a, p, decay: (a * decay + p.detach() * (1 - decay)), lambda a: a.detach().numpy().copy(),
    )
    return _loop(spec, meta, steps, masks_for, forward, lambda t: t.backward(),
                 step_optimizer, state_dict, dict(spec.lr_schedulers or {}), averages)


def _recurrent_layers_differentiable(model: Any) -> None:
    """Paddle's recurrent layers (LSTM, GRU, SimpleRNN) cannot be differentiated in eval mode
    (its rnn kernel keeps no reserve for the backward: "Tensor holds no memory"). Without
    dropout between their layers train mode computes the same function, so they run in it;
    with dropout, eval mode is another function and there is no eager backward to compare with."""
    import paddle

    for name, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, paddle.nn.layer.rnn.RNNBase) and not layer.training:
            if layer.dropout:
                raise VerificationError(
                    f"--native cannot train {name or 'the model'} ({type(layer).__name__}, dropout "
                    f"{layer.dropout}) in eval mode: Paddle's recurrent layers have no eager "
                    f"backward in eval mode."
                )
            layer.train()


def _run_paddle(spec, meta, start, steps, inputs, seed, dtype) -> list[NativeStep]:
    import paddle

    model = spec.model
    model.train() if spec.train else model.eval()
    _recurrent_layers_differentiable(model)
    for key, tensor in model.state_dict().items():
        if key in start:  # in place: a recurrent layer's flattened weights share the memory
            tensor.set_value(np.asarray(start[key], dtype=tensor.numpy().dtype))
    optimizers = dict(spec.optimizers or {}) or {
        DEFAULT_OPTIMIZER: paddle.optimizer.SGD(DEFAULT_LR, parameters=[p for p in model.parameters() if not p.stop_gradient])
    }
    recorder = StepRecorder(module_paths={id(m): p for p, m in model.named_sublayers(include_self=True)})

    def masks_for(index):
        return [paddle.to_tensor(m) for m in _masks(meta, seed, index, dtype)]

    def forward(masks, step, micro):
        recorder.reset(masks)
        tensors = {k: paddle.to_tensor(v) for k, v in inputs(step, micro).items()}
        with paddle_training(recorder, batch_norm=False) if spec.train else contextlib.nullcontext():
            out = spec.loss(model, **tensors)
        return out if isinstance(out, dict) else {"loss": out}

    def step_optimizer(name):
        clip = spec.clips().get(name)
        if clip is not None:  # the loop's clip call; the optimizer's own grad_clip runs in step()
            groups = optimizers[name]._param_groups
            params = [p for g in groups for p in g["params"]] if groups and isinstance(groups[0], dict) else list(groups)
            if isinstance(clip, ClipGradNorm):
                paddle.nn.utils.clip_grad_norm_(params, clip.max_norm, norm_type=clip.norm_type)
            else:
                paddle.nn.utils.clip_grad_value_(params, clip.clip_value)
        optimizers[name].step()
        if meta.clear_grads:
            optimizers[name].clear_grad()

    def state_dict():
        return {k: v.numpy().copy() for k, v in model.state_dict().items()}

    def lerp(averages, weights, decay):
        for a, p in zip(averages, weights):
            a.set_value(paddle.lerp(a, p.detach(), paddle.full([], 1 - decay, a.dtype)))

    names = {id(p): n for n, p in model.named_parameters()}

    def grouped(opt):
        groups = opt._param_groups
        return [p for g in groups for p in g["params"]] if groups and isinstance(groups[0], dict) else list(groups)

    params = {name: [(names[id(p)], p) for p in grouped(opt)] for name, opt in optimizers.items()}
    averages = _Averages(
        spec, params, lambda p: p.detach().clone(), lerp,
        lambda a, p, decay: (a * decay + p.detach() * (1 - decay)), lambda a: a.numpy().copy(),
    )
    return _loop(spec, meta, steps, masks_for, forward, lambda t: t.backward(),
                 step_optimizer, state_dict, paddle_schedulers(spec, optimizers), averages)
