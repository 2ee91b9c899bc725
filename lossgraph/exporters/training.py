"""Training mode for the exporters: BatchNorm with batch statistics and running-stat updates,
and dropout with masks lossgraph draws, identically in both frameworks.

Neither exporter keeps these faithfully (torch.onnx hard-codes BatchNorm's inference form and
drops buffer updates; paddle2onnx converts batch_norm in inference form only; dropout draws
from each runtime's own RNG). So while a training-mode model runs, eagerly and while traced,
BatchNorm layers and dropout functions are replaced by explicit computations, each in its own
framework's formula, that report to a :class:`StepRecorder`:

- a BatchNorm in training mode normalizes with the batch statistics and records its updated
  running statistics (torch: ``(1-m) r + m s`` with the unbiased variance, ``num_batches_tracked
  + 1``; Paddle: ``m r + (1-m) s`` with the biased variance). Each update becomes a graph output
  ``state:<buffer>``; a layer called twice chains its updates, as the frameworks do.
- a dropout multiplies by a mask that becomes a graph input ``dropout:<k>`` (values 0 or the
  framework's scale), recorded with the module path of the layer that called it. lossgraph
  feeds both graphs the same seeded masks, matched by scope and position
  (``lossgraph.verify.dropouts.match_dropouts``).

Each BatchNorm's running-variance update is recorded in the metadata too (its momentum, its
variance convention and the elements per channel of each batch), so that a torch graph and a
Paddle graph can be compared in one convention (``lossgraph.verify.steps``).

The eager run, with the same masks, tells how many dropouts and state updates a forward has;
the traced run then takes the masks as extra inputs.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lossgraph.errors import ExportError
from lossgraph.inputs import draw_mask

STATE_PREFIX = "state:"
DROPOUT_PREFIX = "dropout:"


@dataclass
class DropoutCall:
    """One dropout of a forward pass, as the eager run saw it."""

    p: float
    scale: float  # the value kept elements are multiplied by (1/(1-p) when upscaling)
    shape: list[int]  # the mask's shape (size-1 axes broadcast, e.g. dropout2d)
    scope: str = ""  # module path of the layer that called it ("" for the loss function)

    def to_dict(self) -> dict[str, Any]:
        return {"p": self.p, "scale": self.scale, "shape": list(self.shape), "scope": self.scope}


#: How far up the call stack a dropout looks for the layer that called it.
_SCOPE_FRAMES = 32


@dataclass
class StepRecorder:
    """What one forward pass in training mode did besides computing the losses."""

    module_paths: dict[int, str]
    masks: list[Any] = field(default_factory=list)  # the masks to apply, in call order
    #: draws the mask of a call the eager discovery run has not seen yet: (call, index) -> tensor
    draw: Any = None
    dropouts: list[DropoutCall] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # buffer name -> updated value
    #: running-variance buffer -> its BatchNorm's update (``GraphMeta.batch_norm``)
    batch_norm: dict[str, dict[str, Any]] = field(default_factory=dict)

    def reset(self, masks: list[Any]) -> None:
        self.masks = list(masks)
        self.dropouts = []
        self.state = {}
        self.batch_norm = {}

    def batch_norm_call(
        self, variance: str, module: str, momentum: float | None, convention: str, count: int
    ) -> None:
        """Record one running-variance update of a BatchNorm (a layer may run twice)."""
        entry = self.batch_norm.setdefault(
            variance,
            {"module": module, "momentum": momentum, "convention": convention, "counts": []},
        )
        entry["counts"].append(int(count))

    def caller_scope(self) -> str:
        """The module path of the innermost layer on the call stack (the layer whose forward
        called dropout), or "" outside every layer.

        Dropout functions do not know their layer, and the frameworks keep no module stack
        while running eagerly; the calling frames' ``self`` does know it."""
        frame = sys._getframe(1)
        for _ in range(_SCOPE_FRAMES):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if owner is not None and id(owner) in self.module_paths:
                return self.module_paths[id(owner)]
            frame = frame.f_back
        return ""

    def path(self, module: Any) -> str:
        path = self.module_paths.get(id(module))
        if path is None:
            raise ExportError(f"A {type(module).__name__} layer is used that is not part of Spec.model.")
        return path

    def current(self, name: str, default: Any) -> Any:
        """The latest value of a buffer in this forward pass (a layer may run twice)."""
        return self.state.get(name, default)

    def next_mask(self, p: float, scale: float, shape: list[int]) -> Any:
        index = len(self.dropouts)
        call = DropoutCall(p, scale, list(shape), self.caller_scope())
        self.dropouts.append(call)
        if index >= len(self.masks) and self.draw is not None:
            self.masks.append(self.draw(call, index))
        if index >= len(self.masks):
            raise ExportError(
                "The model calls dropout more often when traced than when run eagerly; "
                "lossgraph needs the same dropouts in every forward pass."
            )
        return self.masks[index]


@dataclass
class TrainingTrace:
    """What the eager training-mode forward did: its dropouts and its buffer updates (eager
    values, by buffer name, in the order the graph outputs them)."""

    dropouts: list[DropoutCall]
    state: dict[str, np.ndarray]
    batch_norm: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return [f"{STATE_PREFIX}{name}" for name in self.state]

    @property
    def input_names(self) -> list[str]:
        return dropout_input_names(len(self.dropouts))


def dropout_input_names(count: int) -> list[str]:
    return [f"{DROPOUT_PREFIX}{k}" for k in range(count)]


def draw_call_mask(call: DropoutCall, seed: int, step: int, index: int) -> np.ndarray:
    return draw_mask(call.p, call.scale, call.shape, seed, step, index)


# --- torch ----------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_training(recorder: StepRecorder, batch_norm: bool = True) -> Iterator[None]:
    """Replace torch's BatchNorm forward (unless ``batch_norm`` is False: the native runs keep
    torch's own) and dropout functions while a training forward runs."""
    import torch.nn.functional as F
    from torch.nn.modules import batchnorm

    original_forward = batchnorm._BatchNorm.forward
    originals = {name: getattr(F, name) for name in ("dropout", "dropout1d", "dropout2d", "dropout3d",
                                                     "alpha_dropout", "feature_alpha_dropout")}

    def batch_norm_forward(module: Any, input: Any) -> Any:
        if not module.training:
            return original_forward(module, input)
        return _torch_batch_norm_train(module, input, recorder)

    def make_dropout(channelwise: bool):
        def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
            if not training or p == 0.0:
                return input
            shape = list(input.shape)
            if channelwise:
                shape = shape[:2] + [1] * (len(shape) - 2)
            scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
            return input * recorder.next_mask(p, scale, shape)

        return dropout

    def make_alpha_dropout(channelwise: bool):
        def alpha_dropout(input: Any, p: float = 0.5, training: bool = False, inplace: bool = False) -> Any:
            """ATen's alpha dropout: input * (keep a) + ((keep - 1) alpha a + alpha a p),
            keep the 0/1 mask lossgraph feeds (scale 1)."""
            if not training or p == 0.0 or p == 1.0:
                return originals[f"{'feature_' if channelwise else ''}alpha_dropout"](input, p, training, inplace)
            shape = list(input.shape)
            if channelwise:
                shape = shape[:2] + [1] * (len(shape) - 2)
            keep = recorder.next_mask(p, 1.0, shape)
            alpha = 1.7580993408473766
            a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
            return input * (keep * a) + ((keep - 1) * (alpha * a) + alpha * a * p)

        return alpha_dropout

    if batch_norm:
        batchnorm._BatchNorm.forward = batch_norm_forward
    F.dropout = make_dropout(False)
    for name in ("dropout1d", "dropout2d", "dropout3d"):
        setattr(F, name, make_dropout(True))
    F.alpha_dropout = make_alpha_dropout(False)
    F.feature_alpha_dropout = make_alpha_dropout(True)
    try:
        yield
    finally:
        batchnorm._BatchNorm.forward = original_forward
        for name, fn in originals.items():
            setattr(F, name, fn)


def _torch_batch_norm_train(module: Any, x: Any, recorder: StepRecorder) -> Any:
    """torch's training-mode BatchNorm: batch statistics, (1-m) r + m s updates, unbiased
    variance in the running estimate, ``num_batches_tracked`` counted."""
    import torch

    low = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else None
    if low is not None:  # torch.autocast: torch's kernel computes in float32, rounds the output
        x = x.float()
    axes = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(axes)
    var = x.var(axes, unbiased=False)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var + module.eps).reshape(shape)
    if module.affine:
        y = y * module.weight.reshape(shape) + module.bias.reshape(shape)
    if module.track_running_stats and module.running_mean is not None:
        path = recorder.path(module)
        count = x.numel() // x.shape[1]
        tracked = recorder.current(f"{path}.num_batches_tracked", module.num_batches_tracked) + 1
        factor = 1.0 / tracked.to(x.dtype) if module.momentum is None else module.momentum
        running_mean = recorder.current(f"{path}.running_mean", module.running_mean)
        running_var = recorder.current(f"{path}.running_var", module.running_var)
        recorder.state[f"{path}.running_mean"] = factor * mean + (1 - factor) * running_mean
        unbiased = var * (count / max(count - 1, 1))
        recorder.state[f"{path}.running_var"] = factor * unbiased + (1 - factor) * running_var
        recorder.state[f"{path}.num_batches_tracked"] = tracked
        recorder.batch_norm_call(f"{path}.running_var", path, module.momentum, "unbiased", count)
    return y if low is None else y.to(low)


# --- Paddle ---------------------------------------------------------------------------------


@contextlib.contextmanager
def paddle_training(recorder: StepRecorder, batch_norm: bool = True) -> Iterator[None]:
    """Replace Paddle's BatchNorm forward (unless ``batch_norm`` is False) and dropout while a
    training forward runs."""
    import paddle.nn.functional as F
    from paddle.nn.layer import norm

    original_forward = norm._BatchNormBase.forward
    original_legacy = norm.BatchNorm.forward
    original_dropout = F.dropout
    import paddle.nn.functional.common as common

    def batch_norm_forward(layer: Any, input: Any) -> Any:
        if not layer.training or layer._use_global_stats:
            return original_forward(layer, input)
        return _paddle_batch_norm_train(layer, input, recorder)

    def legacy_batch_norm_forward(layer: Any, input: Any) -> Any:
        """``paddle.nn.BatchNorm`` (the fluid-era layer, with ``act``; not a _BatchNormBase)."""
        if not layer.training or layer._use_global_stats:
            return original_legacy(layer, input)
        y = _paddle_batch_norm_train(layer, input, recorder)
        return getattr(F, layer._act)(y) if layer._act else y

    def dropout(x: Any, p: float = 0.5, axis: Any = None, training: bool = True,
                mode: str = "upscale_in_train", name: Any = None, **kwargs: Any) -> Any:
        if not training or p == 0.0:
            return original_dropout(x, p=p, axis=axis, training=training, mode=mode, **kwargs)
        shape = list(x.shape)
        if axis is not None:
            axes = [axis] if isinstance(axis, int) else list(axis)
            axes = [a % len(shape) for a in axes]
            shape = [d if i in axes else 1 for i, d in enumerate(shape)]
        scale = (1.0 / (1.0 - p) if p < 1.0 else 0.0) if mode == "upscale_in_train" else 1.0
        return x * recorder.next_mask(p, scale, shape)

    def make_alpha_dropout(feature: bool):
        original = getattr(F, f"{'feature_' if feature else ''}alpha_dropout")

        def alpha_dropout(x: Any, p: float = 0.5, training: bool = True, name: Any = None) -> Any:
            """Paddle's alpha dropout: (x keep + (1 - keep) alpha_p) a + b, keep the 0/1 mask
            lossgraph feeds (scale 1)."""
            if not training or p == 0.0 or p == 1.0:
                return original(x, p, training, name)
            shape = list(x.shape)
            if feature:
                shape = shape[:2] + [1] * (len(shape) - 2)
            keep = recorder.next_mask(p, 1.0, shape)
            alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
            a = ((1 - p) * (1 + p * alpha_p**2)) ** -0.5
            return (x * keep + (1.0 - keep) * alpha_p) * a + (-a * alpha_p * p)

        return alpha_dropout

    alpha_originals = {name: getattr(F, name) for name in ("alpha_dropout", "feature_alpha_dropout")}
    if batch_norm:
        norm._BatchNormBase.forward = batch_norm_forward
        norm.BatchNorm.forward = legacy_batch_norm_forward
    F.dropout = dropout
    common.dropout = dropout
    F.alpha_dropout = make_alpha_dropout(False)
    F.feature_alpha_dropout = make_alpha_dropout(True)
    try:
        yield
    finally:
        norm._BatchNormBase.forward = original_forward
        norm.BatchNorm.forward = original_legacy
        F.dropout = original_dropout
        common.dropout = original_dropout
        for name, fn in alpha_originals.items():
            setattr(F, name, fn)


def _paddle_batch_norm_train(layer: Any, x: Any, recorder: StepRecorder) -> Any:
    """Paddle's training-mode BatchNorm: batch statistics, m r + (1-m) s updates with the
    biased variance (Paddle's kernel; torch uses the unbiased one)."""
    import paddle

    layout = getattr(layer, "_data_format", None) or getattr(layer, "_data_layout", "NCHW")
    if layout not in ("NCHW", "NCL", "NC", "NCDHW"):
        raise ExportError(
            f"lossgraph exports training-mode BatchNorm in channels-first layout only, got "
            f"{layout!r}."
        )
    axes = [0, *range(2, len(x.shape))]
    shape = [1, -1] + [1] * (len(x.shape) - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    y = (x - mean.reshape(shape)) * paddle.rsqrt(var + layer._epsilon).reshape(shape)
    if layer.weight is not None:
        y = y * layer.weight.reshape(shape)
    if layer.bias is not None:
        y = y + layer.bias.reshape(shape)
    path = recorder.path(layer)
    momentum = layer._momentum
    running_mean = recorder.current(f"{path}._mean", layer._mean)
    running_var = recorder.current(f"{path}._variance", layer._variance)
    recorder.state[f"{path}._mean"] = running_mean * momentum + mean * (1.0 - momentum)
    recorder.state[f"{path}._variance"] = running_var * momentum + var * (1.0 - momentum)
    channels = max(int(x.shape[1]), 1)
    recorder.batch_norm_call(
        f"{path}._variance", path, float(momentum), "biased", int(np.prod(x.shape)) // channels
    )
    return y
