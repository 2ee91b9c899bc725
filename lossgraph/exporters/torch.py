"""PyTorch exporter: model + loss -> one ONNX graph through torch.onnx's dynamo exporter.

``optimize=False`` keeps BatchNorm as its own node (the optimizer folds it into Conv).
Initializers keep their state-dict names; node metadata from torch is kept and lossgraph adds
``lossgraph.scope`` (module path), ``lossgraph.source`` (innermost user frame) and marks
``.detach()`` as ``lossgraph.stop_gradient``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from lossgraph.errors import ExportError, SpecError, one_line
from lossgraph.exporters.common import (
    BufferSnapshot,
    changed_buffers,
    eager_losses,
    finish_export,
    format_source,
    framework_base,
    innermost_user_frame,
    is_library_file,
    json_safe_dict,
    loop_settings,
    optimizer_param_names,
    package_versions,
    spec_code_objects,
)
from lossgraph.exporters.custom_backward import carrying, watching
from lossgraph.exporters.grad_marker import exporting
from lossgraph.exporters.sequences import sequences_as_splits
from lossgraph.exporters.taps import TapRecorder, mark_taps, torch_taps
from lossgraph.exporters.torch_ops import no_grad_kept, traceable, translation_table
from lossgraph.exporters.training import (
    STATE_PREFIX,
    StepRecorder,
    TrainingTrace,
    draw_call_mask,
    torch_training,
)
from lossgraph.files import relative_to_cwd
from lossgraph.graph import (
    NO_GRAD_REWRITE_KEY,
    PADDING_IDX_KEY,
    SCOPE_KEY,
    SOURCE_KEY,
    STOP_GRADIENT_KEY,
    TIE_KEY,
    LossGraph,
    OptimizerInfo,
    ParamInfo,
    node_meta,
    rename_outputs,
    rename_values,
    set_node_meta,
)
from lossgraph.inputs import make_inputs
from lossgraph.runtime.precision import WIDE_MARK
from lossgraph.spec import Spec

ROOT = "model"  # attribute under which the wrapper holds the user's model
_STOP_GRADIENT_TARGETS = ("aten.detach.default", "aten.detach_.default")


def export_torch(spec: Spec, seed: int) -> LossGraph:
    """Export a torch Spec. Raises ExportError / SpecError with one-line messages."""
    import torch

    model = spec.model
    arrays = make_inputs(spec.inputs, seed)
    tensors = {name: torch.from_numpy(value) for name, value in arrays.items()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    versions = _buffer_versions(model)
    model.train(spec.train)
    recorder = StepRecorder(
        module_paths={id(m): path for path, m in model.named_modules()},
        draw=lambda call, k: torch.from_numpy(draw_call_mask(call, seed, 0, k)),
    )
    modes = torch_training(recorder) if spec.train else contextlib.nullcontext()
    try:
        with modes:
            eager_taps: dict[str, np.ndarray] = {}
            paths = {id(m): p for p, m in model.named_modules() if p}
            with watching("torch", model) as custom, torch_taps(model, TapRecorder(paths), eager_taps):
                losses, _ = eager_losses(spec, model, tensors, torch.is_tensor, lambda t: t.numel())
            rewritten = _changed_parameters(model, state)
            updated = _changed_buffers(model, versions, recorder.state)
            custom.refuse(spec.source or "the spec")
            eager = {name: float(value.detach().double()) for name, value in losses.items()}
            trace = TrainingTrace(
                list(recorder.dropouts),
                {k: v.detach().numpy().copy() for k, v in recorder.state.items()},
                dict(recorder.batch_norm),
            )
            masks = tuple(recorder.masks[: len(trace.dropouts)])
            wrapper = _LossModule(
                model, spec.loss, list(spec.inputs), list(losses), recorder, trace, list(updated)
            )
            wrapper.train(spec.train)
            model.load_state_dict(state)  # traced from the values the eager run started from
            _restore_buffers(model, versions, state)
            _register_stack_anchors(spec)
            recorder.taps = TapRecorder(paths)
            with exporting("torch"), carrying("torch") as carried, torch_taps(model, recorder.taps):
                proto = _run_exporter(
                    spec, wrapper, tuple(tensors.values()) + masks,
                    [*spec.inputs, *trace.input_names],
                )
            custom.check_carried(carried, spec.source or "the spec")
    finally:
        model.load_state_dict(state)  # eager and traced runs may have touched buffers
        _restore_buffers(model, versions, state)
    names = list(losses)
    _strip_root_prefix(proto)
    tied = _tied_names(model)
    _merge_tied(proto, tied)
    rename_outputs(proto.graph, names + trace.output_names + [f"{STATE_PREFIX}{b}" for b in updated])
    mark_taps(proto, recorder.taps.names)
    _annotate_nodes(proto)
    for param in _carry_no_grad_rewrites(proto, rewritten, spec.source or "the spec"):
        # a weight the first forward left alone (no row above max_norm yet) is rewritten later
        rewritten.setdefault(param, state[param].numpy().copy())
    sequences_as_splits(proto)
    return finish_export(
        spec,
        proto,
        framework="torch",
        versions=package_versions("torch", "onnxscript", "onnxruntime"),
        params=_param_infos(model, {t.name for t in proto.graph.initializer}, tied),
        optimizers=_optimizer_infos(spec, model),
        lr_schedulers=_lr_scheduler_infos(spec),
        eager=eager,
        eager_taps=eager_taps,
        inputs=arrays,
        seed=seed,
        training=trace if spec.train else None,
        custom_backward=carried,
        rewritten={**rewritten, **updated},
    )


def _changed_parameters(model: Any, before: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The parameters the eager forward pass changed in place (by state-dict name), with their
    values after it."""
    import torch

    params = dict(model.named_parameters(remove_duplicate=False))
    return {
        name: params[name].detach().numpy().copy()
        for name in params
        if name in before and not torch.equal(params[name].detach(), before[name])
    }


def _buffer_versions(model: Any) -> dict[str, BufferSnapshot]:
    """Each buffer before the eager run, by state-dict name (non-persistent ones too)."""
    return {
        name: BufferSnapshot(buffer, buffer._version, _buffer_values(buffer).copy())
        for name, buffer in model.named_buffers(remove_duplicate=False)
        if buffer is not None
    }


def _changed_buffers(
    model: Any, before: Mapping[str, BufferSnapshot], recorded: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The buffers the eager forward pass wrote (a spectral norm's power iteration, a step
    counter), with their values after it (``changed_buffers``)."""
    now = {name: (buffer, buffer._version)
           for name, buffer in model.named_buffers(remove_duplicate=False) if buffer is not None}
    return changed_buffers(now, before, recorded, _buffer_values)


def _buffer_values(buffer: Any) -> np.ndarray:
    """A buffer's values as numpy (bfloat16, which numpy lacks, widened to float32)."""
    import torch

    value = buffer.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _restore_buffers(model: Any, before: Mapping[str, BufferSnapshot], state: Mapping[str, Any]) -> None:
    """Put back the values of the buffers ``load_state_dict`` does not restore (non-persistent
    ones), so that the trace starts where the eager run started."""
    import torch

    with torch.no_grad():
        for name, buffer in model.named_buffers(remove_duplicate=False):
            old = before.get(name)
            if name not in state and old is not None and buffer is old.tensor:
                buffer.copy_(torch.from_numpy(old.values).to(buffer.dtype))


_EMBEDDING_RENORM = "aten.embedding_renorm"


def _carry_no_grad_rewrites(proto: Any, rewritten: Mapping[str, np.ndarray], source: str) -> list[str]:
    """Carry the forward pass's in-place rewrites of parameters: ``nn.Embedding(max_norm=...)``
    renormalizes the rows it looks up in its weight under no_grad, exported as a ScatterND on
    the detached weight. The ScatterND is marked ``NO_GRAD_REWRITE_KEY`` (the gradient passes
    to the weight whole) and the detach before it passes the gradient; the rewritten weight
    becomes the graph output ``state:<parameter>``, which a training step takes as the value
    the optimizer updates, as the framework's optimizer updates the mutated weight. Any other
    parameter the eager forward changed is refused. Returns the rewritten parameters."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    params = {t.name for t in graph.initializer}
    rewrite_of: dict[str, str] = {}  # a rewrite's output -> its parameter
    last: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "ScatterND" or _EMBEDDING_RENORM not in (node_meta(node, "pkg.torch.onnx.fx_node") or ""):
            continue
        value = node.input[0]
        while value in producers and producers[value].op_type == "Identity":
            set_node_meta(producers[value], STOP_GRADIENT_KEY, "0")  # the rewrite's own detach
            value = producers[value].input[0]
        param = value if value in params else rewrite_of.get(value)
        if param is None:
            raise ExportError(f"{source}: an nn.Embedding(max_norm=...) renormalizes a weight lossgraph cannot find.")
        set_node_meta(node, NO_GRAD_REWRITE_KEY, "1")
        rewrite_of[node.output[0]] = param
        last[param] = node.output[0]
    others = sorted(set(rewritten) - set(last))
    if others:
        raise ExportError(
            f"{source}: the forward pass changes parameter(s) {', '.join(others)} in place; lossgraph "
            f"carries only nn.Embedding(max_norm=...)'s renormalization, so it cannot train them "
            f"as torch does."
        )
    for param, value in last.items():
        name = f"{STATE_PREFIX}{param}"
        graph.node.append(onnx.helper.make_node("Identity", [value], [name], name=f"{name}/output"))
        weight = next(t for t in graph.initializer if t.name == param)
        graph.output.append(onnx.helper.make_tensor_value_info(name, weight.data_type, list(weight.dims)))
    return list(last)


def _LossModule(
    model: Any,
    loss: Any,
    input_names: list[str],
    loss_names: list[str],
    recorder: StepRecorder,
    trace: TrainingTrace,
    updated: list[str],
) -> Any:
    """A module holding the user's model as ``model``; its forward takes the inputs (then the
    dropout masks) and returns the losses as scalars, then the buffers a training-mode
    BatchNorm updates, then the values of the buffers the forward changes itself (``updated``)."""
    import torch

    n_inputs = len(input_names)

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.__dict__["_loss"] = loss  # never registered as a submodule, even if a Module

        def forward(self, *args: Any) -> tuple[Any, ...]:
            recorder.reset(list(args[n_inputs:]))
            with no_grad_kept():
                out = self._loss(self.model, **dict(zip(input_names, args[:n_inputs])))
            if torch.is_tensor(out):
                out = {loss_names[0]: out}
            if list(recorder.state) != list(trace.state):
                raise ExportError(
                    "The traced forward updates other buffers than the eager one "
                    f"({', '.join(recorder.state)} vs {', '.join(trace.state)})."
                )
            losses = tuple(_scalar(out[name]) for name in loss_names)
            buffers = tuple(self.model.get_buffer(name) for name in updated)
            return losses + tuple(recorder.state.values()) + buffers

    return LossModule()


def _scalar(value: Any) -> Any:
    return value if value.dim() == 0 else value.reshape(())


def _run_exporter(spec: Spec, wrapper: Any, args: tuple[Any, ...], input_names: list[str]) -> Any:
    import torch

    for logger in ("torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), traceable():
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                optimize=False,
                verbose=False,
                input_names=input_names,
                external_data=False,
                custom_translation_table=translation_table(),
            )
    except Exception as exc:
        refused = _innermost(exc)
        if isinstance(refused, KeyboardInterrupt):  # Ctrl-C, wrapped by the exporter
            raise KeyboardInterrupt from None
        if isinstance(refused, ExportError):  # one of lossgraph's stand-ins refused: its own message
            raise ExportError(f"{spec.source or 'the spec'}: {one_line(refused)}") from exc
        raise ExportError(
            f"torch.onnx.export failed for {spec.source or 'the spec'}: {_export_cause(exc)}"
        ) from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program.")
    return program.model_proto


def _innermost(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc``'s chain (each cyclic chain walked once)."""
    root, seen = exc, {id(exc)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    return root


def _export_cause(exc: BaseException) -> str:
    """What made torch's exporter fail, in one line: the first line of the innermost exception
    of the chain (torch wraps the cause in a generic TorchExportError) and the user's code line
    torch names, if any."""
    root = _innermost(exc)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    where = re.search(r'The following call raised this error:\s*File "([^"]+)", line (\d+)', text)
    at = f" (at {where.group(1)}:{where.group(2)})" if where else _user_frame(root)
    cause = f"{type(root).__name__}: {first}" if first else type(root).__name__
    if "DataDependent" in type(root).__name__ or "data-dependent" in text or "DynamicOutputShape" in type(root).__name__:
        cause += "; torch.export cannot trace it (data-dependent control flow or shapes)"
    return one_line(RuntimeError(cause + at), limit=400)


def _user_frame(exc: BaseException) -> str:
    """" (at file:line)" of the innermost frame of the user's code the exception passed
    through, or ""."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_library_file(f.filename)]
    return f" (at {relative_to_cwd(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""


def _register_stack_anchors(spec: Spec) -> None:
    """Make torch record stack frames of the spec file's own functions (the loss and helpers).

    torch.export keeps only frames named ``forward`` unless a (file, function) pair is
    registered as an anchor; without this, source lines inside the loss function are lost.
    """
    try:
        from torch.fx import proxy
    except ImportError:
        return
    anchors = getattr(proxy, "_STACK_TRACE_ANCHORS", None)
    if isinstance(anchors, set):
        anchors.update((code.co_filename, code.co_name) for code in spec_code_objects(spec))


def _strip_root_prefix(proto: Any) -> None:
    prefix = ROOT + "."
    renames = {
        t.name: t.name[len(prefix) :] for t in proto.graph.initializer if t.name.startswith(prefix)
    }
    rename_values(proto.graph, renames)


#: the stack trace of a node torch's exporter traced again from a generated module: the body of
#: a ``torch.autocast`` block, whose module scopes are lost on the way (so the scope is unknown,
#: not the top level; the module outputs tapped inside still name the module)
_RETRACED = 'File "<eval_with_key>'


def _annotate_nodes(proto: Any) -> None:
    for node in proto.graph.node:
        scopes = node_meta(node, "pkg.torch.onnx.name_scopes")
        trace = node_meta(node, "pkg.torch.onnx.stack_trace") or ""
        if scopes and not trace.startswith(_RETRACED):
            # "" is the top level (the model's own forward, the loss function)
            set_node_meta(node, SCOPE_KEY, _scope_from_name_scopes(scopes))
        frame = innermost_user_frame(trace)
        if frame is not None:
            set_node_meta(node, SOURCE_KEY, format_source(frame))
        fx_node = node_meta(node, "pkg.torch.onnx.fx_node") or ""
        if node.op_type == "Identity" and any(t in fx_node for t in _STOP_GRADIENT_TARGETS):
            set_node_meta(node, STOP_GRADIENT_KEY, "1")
        tie = torch_tie(node.op_type, fx_node)
        if tie is not None:
            set_node_meta(node, TIE_KEY, tie)
        padding = embedding_padding_idx(node.op_type, fx_node)
        if padding is not None:
            set_node_meta(node, PADDING_IDX_KEY, str(padding))
        if node.op_type == "Cast" and "aten.scalar_tensor.default" in fx_node:
            # a Python scalar of a low-precision op (x * 0.1): torch's kernels use it at float32
            set_node_meta(node, WIDE_MARK, "1")


_EMBEDDING = re.compile(
    r"target=torch\.ops\.aten\.embedding\.default\]\(args = \(%\w+, %\w+(?:, (-?\d+))?(?:, (\w+))?"
)


def embedding_padding_idx(op_type: str, fx_node: str) -> int | None:
    """The ``padding_idx`` of a Gather exported from ``aten.embedding`` (None: none). An
    embedding that scales its gradient by word frequency is refused: the graph cannot say it."""
    match = _EMBEDDING.search(fx_node) if op_type == "Gather" else None
    if match is None:
        return None
    if match.group(2) == "True":
        raise ExportError(
            "An nn.Embedding with scale_grad_by_freq=True: its gradient depends on how often each "
            "index occurs in the batch, which lossgraph's gradient rules do not reproduce."
        )
    padding = int(match.group(1)) if match.group(1) is not None else -1
    return padding if padding >= 0 else None


#: (ONNX op, aten ops) -> the tie convention (``lossgraph.graph.TIE_KEY``) of those aten ops'
#: derivatives where it is not the ONNX op's default rule (measured against torch autograd).
_TORCH_TIES = {
    ("Clip", ("aten.hardtanh.", "aten.hardtanh_.", "aten.relu6.")): "open",
    ("Max", ("aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor",
             "aten.clamp_.Tensor")): "first",
    ("Min", ("aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor",
             "aten.clamp_.Tensor")): "first",
    ("ReduceMax", ("aten.max.dim",)): "one",
    ("ReduceMin", ("aten.min.dim",)): "one",
}
_FX_TARGET = re.compile(r"target=torch\.ops\.(aten\.[\w.]+)")


def torch_tie(op_type: str, fx_node: str) -> str | None:
    """The tie convention of a node exported from the aten op its ``fx_node`` metadata names."""
    match = _FX_TARGET.search(fx_node)
    if match is None:
        return None
    target = match.group(1)
    for (onnx_op, aten_ops), tie in _TORCH_TIES.items():
        if op_type == onnx_op and any(target.startswith(a) for a in aten_ops):
            return tie
    return None


def _scope_from_name_scopes(text: str | None) -> str:
    """``['', 'model', 'model.G_A', 'model.G_A.main.0', 'conv2d']`` -> ``G_A.main.0``."""
    try:
        scopes = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return ""
    modules = [s for s in scopes[1:-1] if isinstance(s, str)]
    if not modules:
        return ""
    scope = modules[-1]
    if scope == ROOT:
        return ""
    return scope[len(ROOT) + 1 :] if scope.startswith(ROOT + ".") else scope


def _tied_names(model: Any) -> dict[str, list[str]]:
    """Every tensor known by more than one name (tied weights): first name -> the others, in
    definition order (the first is the one ``named_parameters()`` and optimizers use)."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False),
                         *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    return {group[0]: group[1:] for group in names.values() if len(group) > 1}


def _merge_tied(proto: Any, tied: Mapping[str, list[str]]) -> None:
    """Name each tied tensor's initializer by its first name; copies under other names (one per
    name the exporter lifted) are dropped and their uses read the first."""
    graph = proto.graph
    present = {t.name for t in graph.initializer}
    renames, drop = {}, set()
    for first, others in tied.items():
        found = [n for n in (first, *others) if n in present]
        if not found:
            continue
        keep = found[0]
        renames.update({n: first for n in found[1:]})
        if keep != first:
            renames[keep] = first
        drop.update(found[1:])
    kept = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for info in list(graph.input):
        if info.name in drop:
            graph.input.remove(info)
    rename_values(graph, renames)


def _param_infos(
    model: Any, present: set[str], tied: Mapping[str, list[str]] | None = None
) -> dict[str, ParamInfo]:
    import torch

    infos: dict[str, ParamInfo] = {}
    entries = [(n, p, "parameter") for n, p in model.named_parameters()]
    entries += [(n, b, "buffer") for n, b in model.named_buffers()]
    for name, tensor, kind in entries:
        if name not in present:
            continue  # not reached by any loss: no initializer in the graph
        module_path, attribute = _parametrized_owner(model, name) or name.rpartition(".")[::2]
        module = model.get_submodule(module_path) if module_path else model
        infos[name] = ParamInfo(
            shape=list(tensor.shape),
            dtype=str(tensor.dtype).replace("torch.", ""),
            trainable=kind == "parameter" and bool(tensor.requires_grad),
            kind=kind,
            module=module_path,
            layer_type=type(module).__name__,
            base_type=framework_base(type(module), torch.nn, torch.nn.Module),
            attribute=attribute,
            aliases=list((tied or {}).get(name, [])),
        )
    return infos


_PARAMETRIZED = re.compile(r"^(?:(.+)\.)?parametrizations\.(\w+)\.(original\d*|\d+\.\w+)$")


def _parametrized_owner(model: Any, name: str) -> tuple[str, str] | None:
    """The module and attribute a tensor of a torch parametrization stands for, spelled as the
    hooks of ``torch.nn.utils.spectral_norm``/``weight_norm`` and Paddle's spectral_norm and
    weight_norm spell them (None for a tensor of no parametrization):
    ``fc.parametrizations.weight.original`` is ``fc``'s ``weight_orig``; a spectral norm's
    ``...weight.0._u``/``_v`` are ``weight_u``/``weight_v``; a weight norm's ``original0``/
    ``original1`` are ``weight_g``/``weight_v``; another parametrization's buffer ``...weight.k.b``
    is ``weight_b``. The pairing then finds the counterpart by name and knows the layer kind."""
    match = _PARAMETRIZED.match(name)
    if match is None:
        return None
    owner, tensor, rest = match.group(1) or "", match.group(2), match.group(3)
    kinds = [type(p).__name__ for p in model.get_submodule(f"{owner}.parametrizations.{tensor}".lstrip("."))]
    if rest == "original":
        return owner, f"{tensor}_orig"
    if rest in ("original0", "original1") and "_WeightNorm" in kinds:
        return owner, f"{tensor}_{'g' if rest == 'original0' else 'v'}"
    if rest.startswith("original"):
        return owner, f"{tensor}_{rest}"
    return owner, f"{tensor}_{rest.partition('.')[2].lstrip('_')}"


def _optimizer_infos(spec: Spec, model: Any) -> dict[str, OptimizerInfo]:
    import torch

    names = {id(p): n for n, p in model.named_parameters()}
    infos = {}
    for opt_name, optimizer in (spec.optimizers or {}).items():
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise SpecError(
                f"{spec.source}: optimizer {opt_name!r} must be a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}."
            )
        groups = []
        for group in optimizer.param_groups:
            entry = json_safe_dict(group, skip=("params",))
            entry["params"] = optimizer_param_names(spec, opt_name, group["params"], names)
            groups.append(entry)
        infos[opt_name] = OptimizerInfo(cls=type(optimizer).__name__, framework="torch", groups=groups)
    loop_settings(spec, infos, "torch")
    return infos


def _lr_scheduler_infos(spec: Spec) -> dict[str, dict[str, Any]]:
    from lossgraph.exporters.schedules import torch_schedule

    return {
        name: torch_schedule(value, spec.optimizers[name], f"{spec.source}: lr_schedulers[{name!r}]")
        for name, value in (spec.lr_schedulers or {}).items()
    }


