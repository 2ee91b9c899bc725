"""Framework-neutral pieces shared by the exporters."""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.errors import ExportError, SpecError, one_line
from lossgraph.graph import GraphMeta, LossGraph, OptimizerInfo, ParamInfo, check_training_values
from lossgraph.spec import Spec, normalize_losses, parse_target

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n(?P<code>[^\n]*)')


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (and lossgraph, onnx)."""
    out = {}
    for name in ("lossgraph", "onnx", *names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def json_safe(value: Any) -> Any:
    """A JSON-serializable copy of a hyper-parameter value, or None if it has none."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        items = [json_safe(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    item = getattr(value, "item", None)  # numpy scalars, one-element tensors
    if callable(item):
        try:
            return json_safe(item())
        except Exception:  # a tensor of several elements has no single value
            return None
    return None


def json_safe_dict(values: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """JSON-safe entries of a hyper-parameter dict; entries without a JSON form are dropped."""
    out = {}
    for key, value in values.items():
        if key in skip:
            continue
        safe = json_safe(value)
        if safe is not None or value is None:
            out[key] = safe
    return out


def framework_base(cls: type, namespace: types.ModuleType, root: type) -> str:
    """The name of the public layer class of ``namespace`` (``torch.nn``, ``paddle.nn``) that
    ``cls`` is or derives from, nearest first, ``""`` when none but ``root`` (Module, Layer)."""
    for klass in cls.__mro__:
        if klass is root:
            break
        if getattr(namespace, klass.__name__, None) is klass:
            return klass.__name__
    return ""


def spec_code_objects(spec: Spec) -> Iterator[types.CodeType]:
    """Every code object defined in the spec's file (functions, methods, nested functions)."""
    path, _ = parse_target(spec.source) if spec.source else (None, "")
    if path is None or not path.exists():
        return
    try:
        top = compile(path.read_text(), str(path.resolve()), "exec")
    except (SyntaxError, ValueError, OSError):
        return
    stack = [top]
    while stack:
        code = stack.pop()
        yield code
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


def library_roots() -> tuple[Path, ...]:
    """Folders whose files are library code, not a user's: the installed lossgraph package (found
    where it really is, so a user's folder named ``lossgraph`` is not mistaken for it), the
    standard library and every site-packages folder."""
    paths = sysconfig.get_paths()
    roots = {Path(__file__).resolve().parents[1]}
    roots.update(Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    roots.update(Path(p).resolve() for p in sys.path if p and Path(p).name in _SITE_FOLDERS)
    return tuple(sorted(roots))


_SITE_FOLDERS = ("site-packages", "dist-packages")


def is_library_file(file: str, roots: tuple[Path, ...] | None = None) -> bool:
    """Whether ``file`` (a path from a stack trace) is library code rather than a user's."""
    if file.startswith("<"):  # <frozen ...>, <string>: never a user's source line
        return True
    path = Path(file)
    if any(part in _SITE_FOLDERS for part in path.parts):
        return True
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in roots or library_roots())


def innermost_user_frame(stack_trace: str) -> dict[str, Any] | None:
    """The innermost frame of a Python stack trace that is user code (not a library)."""
    frames = [m.groupdict() for m in _FRAME.finditer(stack_trace or "")]
    roots = library_roots()
    user = [f for f in frames if not is_library_file(f["file"], roots)]
    if not user:
        return None
    frame = user[-1]
    return {
        "file": frame["file"],
        "line": int(frame["line"]),
        "function": frame["func"],
        "code": frame["code"].strip(),
    }


def format_source(source: Mapping[str, Any]) -> str:
    return json.dumps(dict(source), sort_keys=True)


def check_schedule(spec: Spec, losses: list[str]) -> list[tuple[str, str]]:
    """The spec's schedule with every loss name checked against the exported losses."""
    schedule = [tuple(entry) for entry in spec.schedule or []]
    for loss, _ in schedule:
        if loss not in losses:
            raise SpecError(
                f"{spec.source}: schedule names loss {loss!r}, but the loss function returns "
                f"{', '.join(losses)}."
            )
    return schedule  # type: ignore[return-value]


#: An exported loss must match the framework's eager value within this relative bound; float32
#: reordering stays orders of magnitude below it, a mistranslated op does not.
EAGER_MISMATCH = 1e-4


def record_eager_check(
    graph: LossGraph,
    eager: Mapping[str, float],
    inputs: Mapping[str, np.ndarray],
    seed: int,
    eager_state: Mapping[str, np.ndarray] | None = None,
    eager_taps: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Run the exported graph on ONNX Runtime and record its losses next to the eager ones
    (and, in training mode, its updated buffers next to the eager ones).

    Raises ExportError when they disagree: the graph would not be a faithful copy of the model.
    The message names the first module output where they part (``eager_taps``: the eager
    run's module outputs by tap name) and a known kernel quirk that explains it.
    """
    from lossgraph.inputs import dropout_feeds
    from lossgraph.runtime.session import OrtRunner

    runner = OrtRunner(graph.model)
    feeds = {**inputs, **dropout_feeds(graph.meta.dropout, seed, 0)}
    outputs = [*graph.meta.losses, *graph.meta.state_outputs]
    ort_values = runner.run(feeds, outputs=outputs)
    for output, buffer in graph.meta.state_outputs.items():
        expected = np.asarray((eager_state or {})[buffer], dtype=np.float64)
        got = np.asarray(ort_values[output], dtype=np.float64)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=EAGER_MISMATCH, atol=EAGER_MISMATCH):
            raise ExportError(
                f"The exported graph updates buffer {buffer!r} differently from "
                f"{graph.framework} eager (max |diff| {np.abs(got - expected).max():.3g})"
                + "".join(f"; {t}" for t in (_low_precision_cause(graph), *_parting(graph, feeds, eager_taps, output))
                          if t) + "."
            )
    ort = {name: float(np.asarray(ort_values[name]).reshape(())) for name in graph.meta.losses}
    graph.meta.eager = {
        "seed": seed,
        "losses": {name: float(eager[name]) for name in graph.meta.losses},
        "ort": ort,
    }
    for name in graph.meta.losses:
        expected, got = float(eager[name]), ort[name]
        if not math.isfinite(expected):
            raise ExportError(
                f"Loss {name!r} is {expected} when {graph.framework} computes it eagerly on the "
                f"inputs drawn with seed {seed}; check the inputs' ranges (Input low/high)."
            )
        if not abs(expected - got) <= EAGER_MISMATCH * max(1.0, abs(expected)):
            where, quirk = _parting(graph, feeds, eager_taps, name)
            cause = quirk or _low_precision_cause(graph) or (
                "the exporter mistranslated an op of this loss, or a kernel differs beyond "
                "rounding on these inputs (e.g. a sigmoid saturated to exactly 1 in one runtime "
                "only)"
            )
            raise ExportError(
                f"The exported graph computes loss {name!r} = {got:.9g} on ONNX Runtime, but "
                f"{graph.framework} eager gives {expected:.9g}: {cause}"
                + (f"; {where}" if where else "") + "."
            )


def _low_precision_cause(graph: LossGraph) -> str:
    """Why a mixed-precision graph may part from eager: a kernel rounds fewer intermediates."""
    if not graph.meta.low_precision:
        return ""
    return (
        f"the model computes in {' and '.join(graph.meta.low_precision)} (torch.autocast), and a "
        f"torch kernel here likely rounds fewer intermediate values than the ops it exports as (a fused "
        f"kernel such as scaled_dot_product_attention keeps them in float32), so lossgraph's "
        f"float32 emulation of the rounding is not faithful; export this side without autocast, "
        f"or with autocast around the other layers only"
    )


def _parting(
    graph: LossGraph, feeds: Mapping[str, np.ndarray], eager_taps: Mapping[str, np.ndarray] | None,
    output: str,
) -> tuple[str, str]:
    """Where eager and ONNX Runtime part, and a known quirk that explains it (see
    :func:`lossgraph.exporters.eager_check.where_they_part`)."""
    from lossgraph.exporters.eager_check import where_they_part

    if eager_taps is None:
        return "", ""
    return where_they_part(graph, feeds, eager_taps, output, EAGER_MISMATCH)


def absolute_source(source: str) -> str:
    """``FILE.py:NAME`` with FILE made absolute, so the graph can find its spec from anywhere."""
    if not source:
        return source
    path, name = parse_target(source)
    return f"{path.resolve()}:{name}"


def eager_losses(
    spec: Spec,
    model: Any,
    tensors: Mapping[str, Any],
    is_tensor: Any,
    numel: Any,
) -> tuple[dict[str, Any], bool]:
    """Run the spec's loss eagerly: ``({name: scalar tensor}, returned a single tensor)``."""
    try:
        out = spec.loss(model, **tensors)
    except Exception as exc:  # the user's code: one line
        raise SpecError(
            f"{spec.source}: the loss function raised {type(exc).__name__} when run eagerly: "
            f"{one_line(exc)}"
        ) from exc
    return normalize_losses(out, is_tensor, numel, f"{spec.source}: "), is_tensor(out)


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """The windows of an adaptive pool of ``size`` values into ``out``: from floor(i size / out)
    to ceil((i + 1) size / out), as torch and Paddle take them (uneven when out does not divide
    size; neighbours may overlap)."""
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_pool(x: Any, shape: Sequence[int], output_size: Any, first_axis: int,
                  take: Any, reduce: Any, concat: Any) -> Any:
    """An adaptive max or average pool of ``x`` (of ``shape``) over the axes from
    ``first_axis``, one axis at a time (a window is a box, so its max or mean is that of
    per-axis maxima or means): ``take(x, axis, start, end)`` slices, ``reduce(part, axis)``
    reduces keeping the axis, ``concat(parts, axis)`` joins. ``output_size`` is an int or one
    entry per axis, None keeping that axis's size."""
    sizes = list(shape[first_axis:])
    outs = list(output_size) if isinstance(output_size, (list, tuple)) else [output_size] * len(sizes)
    for k, (size, out) in enumerate(zip(sizes, outs)):
        out = size if out is None else int(out)
        axis = first_axis + k
        parts = [reduce(take(x, axis, start, end), axis) for start, end in adaptive_windows(size, out)]
        x = concat(parts, axis) if len(parts) > 1 else parts[0]
    return x


def rrelu_slope(lower: float, upper: float, training: bool) -> float:
    """The slope RReLU computes with in eval mode, (lower + upper) / 2; in training, where it
    draws a random slope per element that lossgraph cannot draw alike in both frameworks, the
    export is refused."""
    if training:
        raise ExportError(
            "RReLU in training mode draws a random slope per element, which lossgraph cannot draw alike in "
            "both frameworks; verify it in eval mode (slope (lower + upper) / 2)"
        )
    return (lower + upper) / 2


def prefix_scan(x: Any, size: int, shifted: Any, combine: Any) -> Any:
    """An inclusive scan along an axis of ``size`` in log2(size) steps (Hillis and Steele):
    each combines x with ``shifted(x, k)``, x moved k places along the axis with the
    combination's identity coming in."""
    k = 1
    while k < size:
        x = combine(x, shifted(x, k))
        k *= 2
    return x


def prefix_products(x: Any, size: int, shifted: Any) -> Any:
    """Cumulative products (ones coming in: see :func:`prefix_scan`)."""
    return prefix_scan(x, size, shifted, lambda a, b: a * b)


def fold_blocks(size: Sequence[int], kernel: Sequence[int], step: Sequence[int], pad: Sequence[int],
                dil: Sequence[int]) -> list[int] | None:
    """The blocks per axis of a Fold (col2im) of output ``size``; None where the last block
    does not reach the output's end (a margin the framework leaves zero, which a ConvTranspose
    without output padding would cut off)."""
    blocks = []
    for k in range(2):
        count = (size[k] + 2 * pad[k] - dil[k] * (kernel[k] - 1) - 1) // step[k] + 1
        if (count - 1) * step[k] - 2 * pad[k] + dil[k] * (kernel[k] - 1) + 1 != size[k]:
            return None
        blocks.append(count)
    return blocks


def fold_one_hot(channels: int, kernel: Sequence[int]) -> np.ndarray:
    """The ConvTranspose weight that computes Fold (col2im): [channels kh kw, 1, kh, kw], input
    channel c kh kw + i kw + j one at kernel position (i, j); with ``groups=channels`` each
    group's kh kw columns add up into their channel."""
    kh, kw = kernel
    eye = np.eye(kh * kw, dtype=np.float32).reshape(kh * kw, 1, kh, kw)
    return np.tile(eye, (channels, 1, 1, 1))


def pairs(value: Any, count: int = 2) -> list[int] | None:
    """An int or a sequence of ``count`` ints as a list; None for anything else."""
    if isinstance(value, int):
        return [value] * count
    if isinstance(value, (list, tuple)) and len(value) == count and all(isinstance(v, int) for v in value):
        return list(value)
    return None


@contextlib.contextmanager
def swapped(
    replacements: Mapping[tuple[str, str], Any], originals: dict[tuple[str, str], Any] | None = None
) -> Iterator[None]:
    """Set each ``(where, attribute)`` to its replacement while the block runs, then restore
    it; ``where`` is a module's name, or ``module:Class`` for a method. ``originals``, when
    given, holds the replaced values meanwhile (for replacements that call them)."""
    import importlib

    saved = []
    try:
        for (where, attr), replacement in replacements.items():
            module_name, _, cls = where.partition(":")
            owner = importlib.import_module(module_name)
            owner = getattr(owner, cls) if cls else owner
            saved.append((owner, attr, getattr(owner, attr)))
            if originals is not None:
                originals[(where, attr)] = getattr(owner, attr)
            setattr(owner, attr, replacement)
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def finish_export(
    spec: Spec,
    proto: Any,
    framework: str,
    versions: dict[str, str],
    params: dict[str, ParamInfo],
    optimizers: dict[str, OptimizerInfo],
    lr_schedulers: dict[str, dict[str, Any]],
    eager: Mapping[str, float],
    inputs: Mapping[str, np.ndarray],
    seed: int,
    training: Any = None,
    eager_taps: Mapping[str, np.ndarray] | None = None,
    custom_backward: Sequence[str] = (),
    rewritten: Mapping[str, np.ndarray] | None = None,
) -> LossGraph:
    """The LossGraph of an export, its metadata filled, its ``lossgraph.grad`` markers expanded
    into gradient subgraphs, and its losses checked against eager. ``training`` is the
    :class:`~lossgraph.exporters.training.TrainingTrace` of a training-mode export; ``eager_taps``
    the eager run's module outputs, which name where a failed check parts; ``custom_backward``
    the labels of the custom backward passes the trace carried, by marker index; ``rewritten``
    the parameters the forward pass rewrites in place (graph outputs ``state:<parameter>``),
    with their eager values after it."""
    from lossgraph.autodiff.custom_vjp import carry_custom_vjps
    from lossgraph.autodiff.markers import expand_grad_markers
    from lossgraph.exporters.grid_sample import lower_grid_sample
    from lossgraph.exporters.recurrent import unroll_recurrent

    optimizers = {name: reached_only(info, params) for name, info in optimizers.items()}
    low_precision = mixed_precision(proto, framework, spec.source or "the spec")
    unroll_recurrent(proto)  # LSTM/GRU/RNN have no gradient rule; the ops they unroll into do
    lower_grid_sample(proto)  # nor has GridSample
    carry_custom_vjps(proto, custom_backward, feeds=inputs)
    proto = expand_grad_markers(proto, feeds=inputs)
    names = list(eager)
    clash = [name for name in names if name in spec.inputs]
    if clash:
        raise ExportError(
            f"{spec.source or 'the spec'}: loss {clash[0]!r} has the name of an input; the graph names "
            f"its inputs and outputs alike, so rename the loss (the key of the loss function's dict)."
        )
    meta = GraphMeta(
        framework=framework,
        losses=names,
        inputs=dict(spec.inputs),
        params=params,
        versions=versions,
        source=absolute_source(spec.source),
        train=spec.train,
        optimizers=optimizers,
        schedule=check_schedule(spec, names),
        lr_schedulers=lr_schedulers,
        accumulate=spec.accumulate,
        clear_grads=spec.clear_grads,
        low_precision=low_precision,
        state_outputs={f"state:{b}": b for b in [*(training.state if training else ()), *(rewritten or ())]},
        dropout=[c.to_dict() for c in training.dropouts] if training else [],
        batch_norm=dict(training.batch_norm) if training else {},
    )
    try:
        check_training_values(meta)  # an lr of NaN, say: refused here, not at every verify
    except ValueError as exc:
        raise ExportError(f"{spec.source or 'the spec'}: {exc}.") from None
    graph = LossGraph(model=proto, meta=meta)
    eager_state = {**(training.state if training else {}), **(rewritten or {})}
    record_eager_check(graph, eager, inputs, seed, eager_state, eager_taps)
    return graph


def mixed_precision(proto: Any, framework: str, where: str) -> dict[str, int]:
    """Emulate a torch graph's mixed precision in float32 (:mod:`lossgraph.runtime.precision`);
    refuse a Paddle one. Paddle's ``auto_cast`` does nothing eagerly on a CPU (it warns so) while
    the program it traces casts to the low type, so the graph could not be checked against the
    eager training it stands for."""
    from lossgraph.runtime.precision import emulate_low_precision, low_precision_types

    if framework == "paddle":
        low = low_precision_types(proto)
        if low:
            raise ExportError(
                f"{where}: the traced program computes in {' and '.join(sorted(low))} "
                f"(paddle.amp.auto_cast), which Paddle's eager mode ignores on a CPU, so the graph "
                f"cannot be checked against eager training here; export the Paddle side without "
                f"auto_cast (lossgraph then reports the difference to a mixed-precision torch side "
                f"as rounding or real from its float64 re-run)."
            )
        return {}
    return emulate_low_precision(proto, where)


#: the training loop's clip functions, by framework
LOOP_CLIP_APIS = {
    "torch": ("torch.nn.utils.clip_grad_norm_", "torch.nn.utils.clip_grad_value_"),
    "paddle": ("paddle.nn.utils.clip_grad_norm_", "paddle.nn.utils.clip_grad_value_"),
}


def loop_settings(spec: Spec, infos: Mapping[str, OptimizerInfo], framework: str) -> None:
    """Give each optimizer what the training loop does around its step: the clip stage of
    ``Spec.clip`` (``lossgraph.optim.clip``), over all of its parameters, in front of the stages
    it has, and the EMA of ``Spec.ema``."""
    from lossgraph.spec import ClipGradNorm

    for name, ema in spec.emas().items():
        infos[name].ema = ema.to_dict()

    by_norm, by_value = LOOP_CLIP_APIS[framework]
    for name, clip in spec.clips().items():
        info = infos[name]
        if isinstance(clip, ClipGradNorm):
            stage = {"kind": "global_norm", "max_norm": clip.max_norm, "norm_type": str(clip.norm_type),
                     "api": by_norm}
        else:
            stage = {"kind": "value", "min": -clip.clip_value, "max": clip.clip_value, "api": by_value}
        info.clip.insert(0, {**stage, "framework": framework, "params": list(info.params)})


def reached_only(info: OptimizerInfo, params: Mapping[str, ParamInfo]) -> OptimizerInfo:
    """``info`` without the parameters the graph does not have: no loss reaches them, so they get
    no gradient, and torch's and Paddle's optimizers skip a parameter without one (a pooler a
    masked-LM loss never reads). They are kept in ``unreached``, for the report."""
    groups = []
    for group in info.groups:
        entry = {}
        for key, value in group.items():
            if key in ("params", "decay_params"):
                value = [n for n in value if n in params]
            elif key.startswith("param_") and isinstance(value, dict):
                value = {n: v for n, v in value.items() if n in params}
            entry[key] = value
        groups.append(entry)
    unreached = [n for n in info.params if n not in params]
    clip = [{**stage, "params": [n for n in stage["params"] if n in params]} for stage in info.clip]
    return OptimizerInfo(info.cls, info.framework, groups, [*info.unreached, *unreached], clip, info.ema)


def optimizer_param_names(
    spec: Spec, opt_name: str, params: list[Any], names: Mapping[int, str]
) -> list[str]:
    """State-dict names of an optimizer group's tensors; SpecError for foreign tensors."""
    unknown = [p for p in params if id(p) not in names]
    if unknown:
        raise SpecError(
            f"{spec.source}: optimizer {opt_name!r} holds {len(unknown)} tensor(s) that are not "
            f"parameters of Spec.model."
        )
    return [names[id(p)] for p in params]


@dataclass(frozen=True)
class BufferSnapshot:
    """A buffer as it was before the eager forward pass: the tensor itself (kept, so that a
    replaced buffer is never mistaken for one that took its freed id), its in-place version
    counter and a copy of its values (writes through ``.data`` leave the counter alone)."""

    tensor: Any
    version: int
    values: np.ndarray


def changed_buffers(
    now: Mapping[str, tuple[Any, int]], before: Mapping[str, BufferSnapshot],
    recorded: Mapping[str, Any], values: Callable[[Any], np.ndarray],
) -> dict[str, np.ndarray]:
    """The buffers the eager forward pass wrote in place or replaced, by state-dict name, with
    their values after it (``now``: name -> (tensor, version)); those a training-mode BatchNorm
    records already are left to it. A buffer counts as written when it was replaced, its version
    counter moved (a converged power iteration writes the same values in the first step and
    other ones after the optimizer has moved the weight) or its values changed."""
    out = {}
    for name, (tensor, version) in now.items():
        old = before.get(name)
        if old is None or name in recorded:
            continue
        current = values(tensor)
        if (tensor is not old.tensor or version != old.version
                or current.shape != old.values.shape
                or not np.array_equal(current, old.values, equal_nan=current.dtype.kind in "fc")):
            out[name] = current.copy()
    return out
