"""Custom backward passes: carried into the graph, or refused; never silent.

An exported graph holds the forward computation; lossgraph differentiates it with its own rules.
A ``torch.autograd.Function`` or a Paddle ``PyLayer`` with a backward of its own (a
gradient-reversal layer, a straight-through estimator) trains differently from its forward's
derivative. While the exporters trace the loss, :func:`carrying` replaces each such ``apply``
by its forward and its backward, both traced: the backward runs on a placeholder for the
output's gradient, and a marker packs the output with the differentiable arguments, the
placeholder and the backward's results (``concat([tag, index, count, output, args...,
placeholder, grads...])``, the output picked back out). After export,
:func:`lossgraph.autodiff.custom_vjp.carry_custom_vjps` turns the marker into a node whose
gradient is that backward. A backward that cannot be traced (Python on tensor values, several
outputs) fails the export in one line naming the Function.

Tensor hooks (``register_hook``) and module backward hooks change the gradient in ways no traced
op shows: the exporters run the loss eagerly under :func:`watching`, which records each, and
refuse the export naming them. Functions whose backward is the derivative of their forward
(activation checkpointing) are traced through as the forward they are.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lossgraph.errors import ExportError
from lossgraph.graph import VJP_GRAD_TAG, VJP_MARKER_TAG

#: autograd.Function / PyLayer classes whose backward differentiates their own forward.
FAITHFUL = {"CheckpointFunction", "RecomputeFunction"}


class Found:
    """What the eager run used that changes gradients, in order of first use."""

    def __init__(self) -> None:
        self.items: list[str] = []
        #: Functions / PyLayers with a backward of their own, to be carried
        self.functions: list[str] = []

    def add(self, item: str) -> None:
        if item not in self.items:
            self.items.append(item)

    def refuse(self, source: str) -> None:
        if self.items:
            raise ExportError(
                f"{source}: the loss uses a custom backward that the exported graph cannot carry "
                f"({'; '.join(self.items)}); lossgraph would differentiate the forward instead "
                f"and could report a port as training the same when it does not. Export a spec "
                f"without it (write the gradient change as a torch.autograd.Function or Paddle "
                f"PyLayer, which lossgraph carries)."
            )


    def check_carried(self, carried: list[str], source: str) -> None:
        """Every Function the eager run applied was carried by the trace (torch's exporter may
        fall back to a tracer that inlines a Function's forward and drops its backward)."""
        missing = [f for f in self.functions if f not in carried]
        if missing:
            raise ExportError(
                f"{source}: the exporter traced {'; '.join(missing)} without its custom backward, "
                f"which lossgraph cannot carry then; the gradient would be the forward's."
            )


@contextlib.contextmanager
def watching(framework: str, model: Any) -> Iterator[Found]:
    """Record custom backward passes used while the block runs (the eager loss)."""
    found = Found()
    if framework == "torch":
        import torch

        _torch_module_hooks(model, found)
        with _patched_hooks(torch.Tensor, found), _patched_apply("torch", found.functions, None):
            yield found
    else:
        import paddle

        _paddle_hooks(model, found)
        with _patched_hooks(paddle.Tensor, found), _patched_apply("paddle", found.functions, None):
            yield found


def _torch_module_hooks(model: Any, found: Found) -> None:
    for path, module in model.named_modules():
        if getattr(module, "_backward_hooks", None) or getattr(module, "_backward_pre_hooks", None):
            found.add(f"a backward hook on module {path or type(module).__name__}")
    for name, param in model.named_parameters():
        if getattr(param, "_backward_hooks", None):
            found.add(f"a gradient hook (register_hook) on parameter {name}")
    from torch.nn.modules import module as torch_module

    if getattr(torch_module, "_global_backward_hooks", None) or getattr(
        torch_module, "_global_backward_pre_hooks", None
    ):
        found.add("a global module backward hook")


def _paddle_hooks(model: Any, found: Found) -> None:
    for name, param in model.named_parameters():
        hooks = getattr(param, "_hooks", None) or getattr(param, "_backward_hooks", None)
        if hooks:
            found.add(f"a gradient hook (register_hook) on parameter {name}")


@contextlib.contextmanager
def carrying(framework: str) -> Iterator[list[str]]:
    """Within this block (an exporter's trace) every ``apply`` of a Function / PyLayer with a
    backward of its own emits its forward and its traced backward, packed in a marker. Yields
    the labels of the carried classes, by the index their markers hold. A failure to trace one
    fails the export, even where the exporter recovered by another tracer."""
    labels: list[str] = []
    failed: list[ExportError] = []  # the exporters wrap what a trace raises; this is the cause
    with _patched_apply(framework, labels, failed):
        try:
            yield labels
        except ExportError as exc:
            if failed and exc is not failed[0]:
                raise failed[0] from None
            raise
    if failed:
        raise failed[0]


@contextlib.contextmanager
def _patched_apply(framework: str, labels: list[str], failed: list[ExportError] | None) -> Iterator[None]:
    """``apply`` of every Function / PyLayer with a backward of its own records its label;
    with ``failed`` (tracing) it also emits the carrying marker, recording trace failures."""
    if framework == "torch":
        import torch

        base, label, ops = torch.autograd.function.Function, "torch.autograd.Function", _TorchOps()
    else:
        import paddle

        base, label, ops = paddle.autograd.PyLayer, "paddle.autograd.PyLayer", _PaddleOps()
    owner = next(k for k in base.__mro__ if "apply" in vars(k))
    descriptor = vars(owner)["apply"]
    had_own = "apply" in vars(base)

    def apply(cls, *args, **kwargs):
        if not _carried(cls, base):
            return descriptor.__get__(None, cls)(*args, **kwargs)
        name = f"{label} {cls.__qualname__}{_where(cls)}"
        if name not in labels:
            labels.append(name)
        if failed is None:
            return descriptor.__get__(None, cls)(*args, **kwargs)
        try:
            return _traced(cls, name, labels.index(name), ops, args, kwargs)
        except ExportError as exc:
            failed.append(exc)
            raise

    base.apply = classmethod(apply)
    try:
        yield
    finally:
        if had_own:
            base.apply = descriptor
        else:
            del base.apply


def _traced(cls: type, name: str, index: int, ops: Any, args: tuple, kwargs: dict) -> Any:
    """The marker standing for ``cls.apply(*args)``: its forward's output, picked back out of
    a concatenation with the differentiable arguments, a placeholder for the output's gradient
    and the backward's gradients for those arguments."""
    ctx = _TraceContext(ops, args)
    out = cls.forward(ctx, *args, **kwargs)
    if isinstance(out, (tuple, list)):
        if len(out) != 1:
            raise ExportError(
                f"{name} returns {len(out)} outputs; lossgraph carries the custom backward of a "
                f"Function with one output only."
            )
        out = out[0]
    if not ops.is_float(out):
        return out
    tensors = [a for a in args if ops.is_tensor(a)]
    # torch's backward returns one gradient per forward argument, Paddle's one per tensor argument
    inputs = list(args) if ops.per_argument else tensors
    differentiable = [i for i, a in enumerate(inputs) if ops.is_float(a)]
    placeholder = ops.pick(ops.cat([ops.full(VJP_GRAD_TAG, out), ops.flat(out)]), 1, out)
    try:
        grads = cls.backward(ctx, placeholder)
    except Exception as exc:  # the user's backward, under the exporter's tracer
        raise ExportError(
            f"{name}: its backward could not be traced ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); lossgraph carries a "
            f"backward written in {ops.framework} tensor ops."
        ) from exc
    grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
    parts, gradients = [], []
    for i in differentiable:
        arg = inputs[i]
        grad = grads[i] if i < len(grads) else None
        if grad is None:
            grad = ops.zeros_like(arg)
        if ops.dtype(grad) != ops.dtype(out) or ops.dtype(arg) != ops.dtype(out):
            raise ExportError(
                f"{name}: its output, arguments and gradients differ in dtype; lossgraph carries "
                f"a custom backward whose tensors share one float dtype."
            )
        if list(ops.shape(grad)) != list(ops.shape(arg)):
            raise ExportError(
                f"{name}: its backward returns a gradient of shape {list(ops.shape(grad))} for "
                f"an argument of shape {list(ops.shape(arg))}."
            )
        parts.append(ops.flat(arg))
        gradients.append(ops.flat(grad))
    head = [ops.full(VJP_MARKER_TAG, out), ops.full(index, out), ops.full(len(parts), out)]
    packed = ops.cat([*head, ops.flat(out), *parts, ops.flat(placeholder), *gradients])
    return ops.pick(packed, len(head), out)


class _TraceContext:
    """The ``ctx`` a traced forward and backward share: saved tensors, attributes, flags."""

    def __init__(self, ops: Any, args: tuple) -> None:
        self._saved: tuple = ()
        self.needs_input_grad = tuple(ops.is_float(a) for a in args)
        self.materialize_grads = True

    def save_for_backward(self, *tensors: Any) -> None:
        self._saved = tensors

    @property
    def saved_tensors(self) -> tuple:
        return self._saved

    def saved_tensor(self) -> tuple:  # Paddle's spelling
        return self._saved

    def mark_non_differentiable(self, *tensors: Any) -> None:
        pass

    def mark_not_inplace(self, *tensors: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = value

    def mark_dirty(self, *tensors: Any) -> None:
        raise ExportError("a custom Function that modifies its input in place (mark_dirty) is not carried.")


class _Ops:
    """The tensor operations a traced marker needs, in one framework's spelling."""

    framework = ""
    per_argument = False  # whether backward returns a gradient per argument or per tensor

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    def dtype(self, x: Any) -> Any:
        return x.dtype

    def shape(self, x: Any) -> list[int]:
        return list(x.shape)

    def zeros_like(self, x: Any) -> Any:
        return self.lib.zeros_like(x)

    def pick(self, packed: Any, start: int, like: Any) -> Any:
        shape = self.shape(like)
        return packed[start : start + math.prod(shape)].reshape(shape)


class _TorchOps(_Ops):
    framework = "torch"
    per_argument = True

    def __init__(self) -> None:
        import torch

        super().__init__(torch)

    def is_tensor(self, x: Any) -> bool:
        return self.lib.is_tensor(x)

    def is_float(self, x: Any) -> bool:
        return self.lib.is_tensor(x) and x.is_floating_point()

    def full(self, value: float, like: Any) -> Any:
        return self.lib.full((1,), value, dtype=like.dtype)

    def flat(self, x: Any) -> Any:
        return x.reshape(-1)

    def cat(self, parts: list) -> Any:
        return self.lib.cat(parts)


class _PaddleOps(_Ops):
    framework = "paddle"

    def __init__(self) -> None:
        import paddle

        super().__init__(paddle)

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, (self.lib.Tensor, self.lib.pir.Value))

    def is_float(self, x: Any) -> bool:
        floats = (self.lib.float32, self.lib.float64, self.lib.float16, self.lib.bfloat16)
        return self.is_tensor(x) and x.dtype in floats

    def full(self, value: float, like: Any) -> Any:
        return self.lib.full([1], value, dtype=like.dtype)

    def flat(self, x: Any) -> Any:
        return x.reshape([-1])

    def cat(self, parts: list) -> Any:
        return self.lib.concat(parts)


@contextlib.contextmanager
def _patched_hooks(tensor: type, found: Found) -> Iterator[None]:
    original = tensor.register_hook

    def register_hook(self, hook):
        found.add(f"a tensor hook (Tensor.register_hook) calling {_name(hook)}")
        return original(self, hook)

    tensor.register_hook = register_hook
    try:
        yield
    finally:
        tensor.register_hook = original


def _carried(cls: type, base: type) -> bool:
    """Whether ``cls`` has a backward of its own to carry: not a framework's own Function (the
    exporters' decompositions apply some; their backward is the forward's derivative) and not
    activation checkpointing."""
    own = cls.__module__.split(".")[0] not in ("torch", "paddle")
    return own and cls.__name__ not in FAITHFUL and "backward" in _own_attributes(cls, base)


def _own_attributes(cls: type, base: type) -> set[str]:
    """Attributes defined by ``cls`` or its bases below ``base``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is base or klass is object:
            break
        names.update(vars(klass))
    return names


def _where(cls: type) -> str:
    try:
        lines, line = inspect.getsourcelines(cls)
        return f" at {Path(inspect.getsourcefile(cls) or '').name}:{line}"
    except (OSError, TypeError):
        return ""


def _name(hook: Any) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__name__
