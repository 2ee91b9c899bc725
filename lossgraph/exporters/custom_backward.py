"""Custom backward passes are never silent.

An exported graph holds the forward computation only; lossgraph differentiates it with its own
rules. A ``torch.autograd.Function`` or a Paddle ``PyLayer`` with a backward of its own (a
gradient-reversal layer), a tensor hook (``register_hook``) or a module backward hook changes
the gradient in ways the forward does not show, so the graph would train differently from the
user's code while every comparison agreed. The exporters run the loss eagerly under
:func:`watching`, which records each such construct, and refuse the export naming them.
Functions whose backward is the derivative of their forward (activation checkpointing) are
faithful to the graph and allowed.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lossgraph.errors import ExportError

#: autograd.Function / PyLayer classes whose backward differentiates their own forward.
FAITHFUL = {"CheckpointFunction", "RecomputeFunction"}


class Found:
    """What the eager run used that changes gradients, in order of first use."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, item: str) -> None:
        if item not in self.items:
            self.items.append(item)

    def refuse(self, source: str) -> None:
        if self.items:
            raise ExportError(
                f"{source}: the loss uses a custom backward that the exported graph cannot carry "
                f"({'; '.join(self.items)}); lossgraph would differentiate the forward instead "
                f"and could report a port as training the same when it does not. Export a spec "
                f"without it (or with the gradient it computes written as forward ops)."
            )


@contextlib.contextmanager
def watching(framework: str, model: Any) -> Iterator[Found]:
    """Record custom backward passes used while the block runs (the eager loss)."""
    found = Found()
    if framework == "torch":
        _torch_module_hooks(model, found)
        with _torch_patches(found):
            yield found
    else:
        _paddle_hooks(model, found)
        with _paddle_patches(found):
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


@contextlib.contextmanager
def _torch_patches(found: Found) -> Iterator[None]:
    import torch

    with _patched_apply(torch.autograd.function.Function, "torch.autograd.Function", found), \
            _patched_hooks(torch.Tensor, found):
        yield


def _paddle_hooks(model: Any, found: Found) -> None:
    for name, param in model.named_parameters():
        hooks = getattr(param, "_hooks", None) or getattr(param, "_backward_hooks", None)
        if hooks:
            found.add(f"a gradient hook (register_hook) on parameter {name}")


@contextlib.contextmanager
def _paddle_patches(found: Found) -> Iterator[None]:
    import paddle

    with _patched_apply(paddle.autograd.PyLayer, "paddle.autograd.PyLayer", found), \
            _patched_hooks(paddle.Tensor, found):
        yield


@contextlib.contextmanager
def _patched_apply(base: type, label: str, found: Found) -> Iterator[None]:
    """``base.apply`` (a classmethod, in Python or C) records subclasses with a backward."""
    owner = next(k for k in base.__mro__ if "apply" in vars(k))
    descriptor = vars(owner)["apply"]
    had_own = "apply" in vars(base)

    def apply(cls, *args, **kwargs):
        if cls.__name__ not in FAITHFUL and "backward" in _own_attributes(cls, base):
            found.add(f"{label} {cls.__qualname__}{_where(cls)}")
        return descriptor.__get__(None, cls)(*args, **kwargs)

    base.apply = classmethod(apply)
    try:
        yield
    finally:
        if had_own:
            base.apply = descriptor
        else:
            del base.apply


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
