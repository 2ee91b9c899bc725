"""The spec-file contract: :class:`Spec`, :class:`Input` and loading ``FILE.py:NAME``.

A spec file is plain Python. ``FILE.py:NAME`` names a function (``spec`` by default) that returns
a :class:`Spec`: one model holding every parameter, a loss function taking the model and the named
inputs as keyword arguments, and how to draw those inputs. Nothing here imports torch or paddle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossgraph.errors import SpecError, one_line

#: Input dtypes lossgraph can generate and feed to ONNX Runtime.
INPUT_DTYPES = ("float32", "float64", "int32", "int64", "bool")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")
#: the values each integer dtype holds
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

#: Frameworks lossgraph can export, detected from the model's class hierarchy.
FRAMEWORKS = {"torch": ("torch.nn", "Module"), "paddle": ("paddle.nn", "Layer")}


@dataclass(frozen=True)
class Input:
    """How lossgraph draws one named input.

    Floats are standard normal unless ``low``/``high`` are given (then uniform in [low, high));
    integers are uniform in [low, high) with ``low`` defaulting to 0; ``choices`` draws uniformly
    from the listed values (e.g. ``choices=[-1.0, 1.0]`` for hinge-embedding targets), each of
    them at least once where the input has room for all; booleans are fair coin flips.
    """

    shape: Sequence[int]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None
    choices: Sequence[float] | None = None

    def __post_init__(self) -> None:
        shape = self.shape
        if isinstance(shape, int) or not isinstance(shape, Sequence) or isinstance(shape, str):
            raise SpecError(f"Input shape must be a list of positive integers, got {shape!r}.")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise SpecError(f"Input shape must be a list of positive integers, got {list(shape)!r}.")
        object.__setattr__(self, "shape", tuple(shape))
        if self.dtype not in INPUT_DTYPES:
            raise SpecError(
                f"Input dtype must be one of {', '.join(INPUT_DTYPES)}; got {self.dtype!r}."
            )
        if self.choices is not None:
            self._check_choices()
        elif self.dtype in INT_DTYPES:
            if self.high is None:
                raise SpecError(
                    f"Integer input {list(self.shape)} needs high= (values are drawn from [low, high))."
                )
            low = 0 if self.low is None else self.low
            if not (_is_int(low) and _is_int(self.high) and low < self.high):
                raise SpecError(
                    f"Integer input needs integer low < high; got low={low!r}, high={self.high!r}."
                )
            smallest, largest = INT_RANGES[self.dtype]
            if low < smallest or self.high - 1 > largest:
                raise SpecError(
                    f"Integer input [{low}, {self.high}) does not fit its dtype {self.dtype} "
                    f"([{smallest}, {largest}]); the values would wrap around."
                )
        elif self.dtype in FLOAT_DTYPES and (self.low is not None or self.high is not None):
            low, high = self.uniform_range
            if not (_is_finite(low) and _is_finite(high) and low < high and math.isfinite(high - low)):
                raise SpecError(
                    f"Float input needs finite low < high (and a finite high - low); got low={self.low!r}, "
                    f"high={self.high!r}."
                )
        elif self.dtype == "bool" and (self.low is not None or self.high is not None):
            raise SpecError("A bool input takes no low/high.")

    def _check_choices(self) -> None:
        choices = self.choices
        if (
            isinstance(choices, (str, bytes))
            or not isinstance(choices, Sequence)
            or not choices
            or not all(_is_finite(c) for c in choices)
        ):
            raise SpecError(f"Input choices must be a non-empty list of numbers, got {choices!r}.")
        if self.low is not None or self.high is not None:
            raise SpecError("An input takes either choices= or low=/high=, not both.")
        if self.dtype in INT_DTYPES and not all(_is_int(c) for c in choices):
            raise SpecError(f"Integer input choices must be integers, got {list(choices)!r}.")
        if self.dtype in INT_DTYPES:
            smallest, largest = INT_RANGES[self.dtype]
            outside = [c for c in choices if not smallest <= c <= largest]
            if outside:
                raise SpecError(f"Input choice {outside[0]} does not fit its dtype {self.dtype}; it would wrap around.")
        object.__setattr__(self, "choices", tuple(choices))

    @property
    def distribution(self) -> str:
        """``normal``, ``uniform``, ``integers``, ``choices`` or ``bernoulli``."""
        if self.choices is not None:
            return "choices"
        if self.dtype in INT_DTYPES:
            return "integers"
        if self.dtype == "bool":
            return "bernoulli"
        if self.low is None and self.high is None:
            return "normal"
        return "uniform"

    @property
    def uniform_range(self) -> tuple[float, float]:
        """[low, high) for uniform floats and integers, with the defaults filled in."""
        low = 0 if self.low is None else self.low
        high = 1.0 if self.high is None else self.high
        return low, high

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a LossGraph's metadata."""
        out: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        for key in ("low", "high"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Input:
        return cls(
            shape=data["shape"],
            dtype=data.get("dtype", "float32"),
            low=data.get("low"),
            high=data.get("high"),
            choices=data.get("choices"),
        )


@dataclass
class LRSchedule:
    """When a learning-rate scheduler steps, relative to its optimizer's steps.

    ``every``: optimizer steps per scheduler step; ``when``: ``"after"`` (the usual
    ``optimizer.step(); scheduler.step()``) or ``"before"`` the optimizer step. A bare scheduler
    in ``Spec.lr_schedulers`` means ``LRSchedule(scheduler)``.
    """

    scheduler: Any
    every: int = 1
    when: str = "after"

    def __post_init__(self) -> None:
        if not (isinstance(self.every, int) and self.every >= 1):
            raise SpecError(f"LRSchedule.every must be a positive integer, got {self.every!r}.")
        if self.when not in ("after", "before"):
            raise SpecError(f"LRSchedule.when must be 'after' or 'before', got {self.when!r}.")


@dataclass(frozen=True)
class ClipGradNorm:
    """Clip an optimizer's gradients by their global norm before its step, as the training
    loop's ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)`` (Paddle:
    ``paddle.nn.utils.clip_grad_norm_``): the ``norm_type``-norm of the per-parameter norms,
    gradients scaled by ``max_norm / (norm + 1e-6)`` where that is below 1. A Paddle optimizer's
    own ``grad_clip=`` is read from the optimizer and needs no Spec entry."""

    max_norm: float
    norm_type: float = 2.0

    def __post_init__(self) -> None:
        if not (_is_finite(self.max_norm) and self.max_norm > 0):
            raise SpecError(f"ClipGradNorm.max_norm must be a positive number, got {self.max_norm!r}.")
        order = self.norm_type
        if not (isinstance(order, (int, float)) and not isinstance(order, bool)
                and (order == math.inf or (math.isfinite(order) and order >= 0))):
            raise SpecError(f"ClipGradNorm.norm_type must be a number >= 0 or inf, got {order!r}.")
        object.__setattr__(self, "max_norm", float(self.max_norm))
        object.__setattr__(self, "norm_type", float(order))


@dataclass(frozen=True)
class ClipGradValue:
    """Clamp every element of an optimizer's gradients to ``[-clip_value, clip_value]`` before
    its step, as the training loop's ``torch.nn.utils.clip_grad_value_`` (Paddle:
    ``paddle.nn.utils.clip_grad_value_``)."""

    clip_value: float

    def __post_init__(self) -> None:
        if not (_is_finite(self.clip_value) and self.clip_value > 0):
            raise SpecError(f"ClipGradValue.clip_value must be a positive number, got {self.clip_value!r}.")
        object.__setattr__(self, "clip_value", float(self.clip_value))


CLIPS = (ClipGradNorm, ClipGradValue)

#: how an EMA of the weights is written: torch's ``AveragedModel`` with
#: ``get_ema_multi_avg_fn(decay)`` (its first update copies the weights, later ones
#: ``lerp(ema, w, 1 - decay)``), or by hand (the average starts as the initial weights and every
#: update is ``ema * decay + w * (1 - decay)``, as GAN, diffusion and detection code writes it)
EMA_STYLES = ("AveragedModel", "manual")


@dataclass(frozen=True)
class EMA:
    """An exponential moving average of an optimizer's parameters, updated after its steps:
    after the ``n``-th step with ``n > start`` and ``(n - start) % every == 0``. ``style``: one
    of :data:`EMA_STYLES`. The averaged weights are compared step by step like optimizer state
    (``<param>:ema``); a side without an EMA is compared by its weights themselves."""

    decay: float
    every: int = 1
    start: int = 0
    style: str = "manual"

    def __post_init__(self) -> None:
        if not (_is_finite(self.decay) and 0 <= self.decay <= 1):
            raise SpecError(f"EMA.decay must be a number in [0, 1], got {self.decay!r}.")
        for name in ("every", "start"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= (1 if name == "every" else 0)):
                raise SpecError(f"EMA.{name} must be an integer >= {1 if name == 'every' else 0}, got {value!r}.")
        if self.style not in EMA_STYLES:
            raise SpecError(f"EMA.style must be one of {', '.join(EMA_STYLES)}; got {self.style!r}.")
        object.__setattr__(self, "decay", float(self.decay))

    def updates_after(self, count: int) -> bool:
        """Whether the average is updated after the optimizer's ``count``-th step (1-based)."""
        return count > self.start and (count - self.start) % self.every == 0

    def to_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "every": self.every, "start": self.start, "style": self.style}


@dataclass
class Spec:
    """One side of a comparison: a model with its loss, its inputs and (optionally) its training.

    ``loss(model, **inputs)`` returns a scalar tensor (named ``loss``) or a dict of named scalars.
    ``optimizers`` maps names to framework optimizers over the model's parameters; ``schedule``
    lists ``(loss name, optimizer name)`` pairs that training steps cycle through.
    ``lr_schedulers`` maps optimizer names to the framework's learning-rate scheduler for it
    (or an :class:`LRSchedule` saying when it steps).
    ``train=True`` exports the model in training mode (batch statistics, dropout).
    ``clip`` clips gradients before an optimizer's step as the training loop does
    (:class:`ClipGradNorm`, :class:`ClipGradValue`): one for every optimizer, or a dict by
    optimizer name. ``accumulate=K``: each optimizer step accumulates the gradients of K
    micro-batches (K input draws; the loss is the user's, so a loop that divides it by K says so
    in the loss). ``clear_grads=False``: the loop never calls ``zero_grad()``/``clear_grad()``,
    so gradients add up across steps.
    """

    model: Any
    loss: Callable[..., Any]
    inputs: Mapping[str, Input]
    optimizers: Mapping[str, Any] | None = None
    schedule: Sequence[tuple[str, str]] | None = None
    train: bool = False
    lr_schedulers: Mapping[str, Any] | None = None
    clip: Any = None
    accumulate: int = 1
    clear_grads: bool = True
    ema: Any = None
    source: str = field(default="", compare=False)

    def emas(self) -> dict[str, EMA]:
        """The EMA of each optimizer's parameters, by optimizer name (a single one: every one)."""
        if self.ema is None:
            return {}
        if isinstance(self.ema, EMA):
            return dict.fromkeys(self.optimizers or {}, self.ema)
        return dict(self.ema)

    def clips(self) -> dict[str, ClipGradNorm | ClipGradValue]:
        """The loop's clipping by optimizer name (a single one applies to every optimizer)."""
        if self.clip is None:
            return {}
        if isinstance(self.clip, CLIPS):
            return dict.fromkeys(self.optimizers or {}, self.clip)
        return dict(self.clip)

    @property
    def framework(self) -> str:
        """``torch`` or ``paddle``, from the model's class hierarchy."""
        return detect_framework(self.model)

    def validate(self) -> None:
        """Check everything that can be checked without running the model."""
        where = f"{self.source}: " if self.source else ""
        self.framework  # noqa: B018 - raises SpecError for an unknown model type
        if not callable(self.loss):
            raise SpecError(f"{where}Spec.loss must be callable, got {type(self.loss).__name__}.")
        if not isinstance(self.inputs, Mapping) or not self.inputs:
            raise SpecError(f"{where}Spec.inputs must be a non-empty dict of name -> lossgraph.Input.")
        for name, inp in self.inputs.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise SpecError(f"{where}input name {name!r} is not a Python identifier.")
            if not isinstance(inp, Input):
                raise SpecError(
                    f"{where}input {name!r} must be a lossgraph.Input, got {type(inp).__name__}."
                )
        self._check_loss_signature(where)
        self._check_training(where)

    def _check_loss_signature(self, where: str) -> None:
        try:
            sig = inspect.signature(self.loss)
        except (TypeError, ValueError):
            return
        try:
            sig.bind(self.model, **dict.fromkeys(self.inputs))
        except TypeError as exc:
            params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
            accepted = [p.name for p in params[1:]] if params else []
            raise SpecError(
                f"{where}the loss function does not accept the spec's inputs "
                f"({', '.join(self.inputs)}): {exc}; it takes (model, {', '.join(accepted)})."
            ) from None

    def _check_training(self, where: str) -> None:
        optimizers = dict(self.optimizers or {})
        for name in optimizers:
            if not isinstance(name, str) or not name:
                raise SpecError(f"{where}optimizer names must be non-empty strings, got {name!r}.")
        for name in self.lr_schedulers or {}:
            if name not in optimizers:
                raise SpecError(
                    f"{where}lr_schedulers names optimizer {name!r}, but the optimizers are: "
                    f"{', '.join(optimizers) or 'none'}."
                )
        self._check_clip(where, optimizers)
        if not (isinstance(self.accumulate, int) and not isinstance(self.accumulate, bool) and self.accumulate >= 1):
            raise SpecError(f"{where}Spec.accumulate must be a positive integer, got {self.accumulate!r}.")
        if not isinstance(self.clear_grads, bool):
            raise SpecError(f"{where}Spec.clear_grads must be True or False, got {self.clear_grads!r}.")
        if self.schedule is None:
            return
        if isinstance(self.schedule, (str, bytes)) or not isinstance(self.schedule, Sequence):
            raise SpecError(f"{where}Spec.schedule must be a list of (loss, optimizer) pairs.")
        for entry in self.schedule:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                raise SpecError(
                    f"{where}each schedule entry must be a (loss, optimizer) pair, got {entry!r}."
                )
            if entry[1] not in optimizers:
                raise SpecError(
                    f"{where}schedule entry {tuple(entry)!r} names optimizer {entry[1]!r}, but the "
                    f"optimizers are: {', '.join(optimizers) or 'none'}."
                )


    def _check_clip(self, where: str, optimizers: Mapping[str, Any]) -> None:
        _check_by_optimizer(self.clip, "clip", CLIPS, "lossgraph.ClipGradNorm or lossgraph.ClipGradValue",
                            where, optimizers)
        _check_by_optimizer(self.ema, "ema", (EMA,), "lossgraph.EMA", where, optimizers)


def _check_by_optimizer(value: Any, field_name: str, kinds: tuple[type, ...], names: str, where: str,
                        optimizers: Mapping[str, Any]) -> None:
    """A Spec field that takes one setting for every optimizer or a dict of them by name."""
    if value is None:
        return
    if isinstance(value, kinds):
        if not optimizers:
            raise SpecError(f"{where}Spec.{field_name} needs the optimizers it applies to.")
        return
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}Spec.{field_name} must be a {names}, or a dict of them by optimizer name; "
                        f"got {type(value).__name__}.")
    for name, item in value.items():
        if name not in optimizers:
            raise SpecError(f"{where}Spec.{field_name} names optimizer {name!r}, but the optimizers are: "
                            f"{', '.join(optimizers) or 'none'}.")
        if not isinstance(item, kinds):
            raise SpecError(f"{where}Spec.{field_name}[{name!r}] must be a {names}, got {type(item).__name__}.")


def detect_framework(model: Any) -> str:
    """Return ``torch`` or ``paddle`` for a model, without importing either framework."""
    for cls in type(model).__mro__:
        for framework, (module_prefix, class_name) in FRAMEWORKS.items():
            if cls.__name__ == class_name and cls.__module__.startswith(module_prefix):
                return framework
    raise SpecError(
        f"Spec.model must be a torch.nn.Module or a paddle.nn.Layer, got {type(model).__module__}."
        f"{type(model).__qualname__}."
    )


def normalize_losses(
    out: Any, is_tensor: Callable[[Any], bool], numel: Callable[[Any], int], where: str = ""
) -> dict[str, Any]:
    """Turn a loss function's result into ``{name: scalar tensor}`` or raise SpecError."""
    if is_tensor(out):
        out = {"loss": out}
    if not isinstance(out, Mapping) or not out:
        raise SpecError(
            f"{where}the loss function must return a scalar tensor or a non-empty dict of named "
            f"scalar tensors, got {type(out).__name__}."
        )
    losses: dict[str, Any] = {}
    for name, value in out.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SpecError(f"{where}loss names must be Python identifiers, got {name!r}.")
        if not is_tensor(value):
            raise SpecError(
                f"{where}loss {name!r} must be a scalar tensor, got {type(value).__name__}."
            )
        if numel(value) != 1:
            shape = list(getattr(value, "shape", []))
            raise SpecError(
                f"{where}loss {name!r} must be a scalar, got a tensor of shape {shape}; reduce it "
                f"(e.g. .mean() or .sum())."
            )
        losses[name] = value
    return losses


def parse_target(target: str) -> tuple[Path, str]:
    """Split ``FILE.py[:NAME]`` into a path and a function name (default ``spec``)."""
    path_part, sep, name = target.rpartition(":")
    if not sep or not name.isidentifier() or not path_part:
        path_part, name = target, "spec"
    return Path(path_part), name


def load_spec(target: str) -> Spec:
    """Import ``FILE.py:NAME``, call NAME() and return its validated :class:`Spec`."""
    path, name = parse_target(target)
    module = import_spec_file(path)
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        available = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_")
        )
        what = "no function" if fn is None else "a non-callable"
        raise SpecError(
            f"{path} has {what} {name!r}; functions defined there: {', '.join(available) or 'none'}."
        )
    try:
        spec = fn()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's code (sys.exit too): report it in one line
        raise SpecError(f"{path}:{name}() raised {_raised(exc)}") from exc
    if not isinstance(spec, Spec):
        raise SpecError(
            f"{path}:{name}() must return a lossgraph.Spec, got {type(spec).__name__}."
        )
    spec.source = f"{path}:{name}"
    spec.validate()
    return spec


def import_spec_file(path: Path) -> Any:
    """Import a spec file as a module (registered in sys.modules, so its source is inspectable)."""
    if not path.exists():
        raise SpecError(f"Spec file {path} does not exist.")
    if path.suffix != ".py" or not path.is_file():
        raise SpecError(f"Spec file {path} is not a .py file.")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    mod_name = f"lossgraph_spec_{resolved.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    module_spec = importlib.util.spec_from_file_location(mod_name, resolved)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except KeyboardInterrupt:
        del sys.modules[mod_name]
        raise
    except BaseException as exc:  # sys.exit() at import is no success either
        del sys.modules[mod_name]
        raise SpecError(f"Importing spec file {path} failed: {_raised(exc)}") from exc
    return module


def _raised(exc: BaseException) -> str:
    """What user code raised, in one line (``SystemExit(0)``: the code exited instead of
    returning)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the code called sys.exit() instead of returning"
    return f"{type(exc).__name__}: {one_line(exc)}"



def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
