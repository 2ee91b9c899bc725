"""PaddlePaddle exporter: ``paddle.jit.to_static`` + ``paddle2onnx`` (``dist_prim_all=True``).

paddle2onnx writes parameters as Constant nodes (outputs named ``<param.name>_<k>``) and
scatters Identity nodes; this module turns the constants back into initializers named by their
state-dict keys, removes the Identity noise (keeping ``.detach()`` as a stop-gradient marker),
and names the outputs after the losses. paddle2onnx runs in a subprocess: it aborts the process
on ops it cannot convert.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from lossgraph.errors import ExportError, SpecError, one_line
from lossgraph.exporters._p2o_worker import (
    ATTRIBUTES_PREFIX,
    POOLS,
    STOP_GRADIENT_PREFIX,
    UNSUPPORTED_PREFIX,
)
from lossgraph.exporters.adaptive_pool import mend_adaptive_pools
from lossgraph.exporters.common import (
    BufferSnapshot,
    changed_buffers,
    eager_losses,
    finish_export,
    framework_base,
    innermost_user_frame,
    json_safe,
    loop_settings,
    optimizer_param_names,
    package_versions,
)
from lossgraph.exporters.custom_backward import carrying, watching
from lossgraph.exporters.grad_marker import exporting
from lossgraph.exporters.paddle_ops import WRITES, carry_writes, convertible_ops
from lossgraph.exporters.taps import TapRecorder, mark_taps, paddle_taps
from lossgraph.exporters.training import (
    STATE_PREFIX,
    StepRecorder,
    TrainingTrace,
    draw_call_mask,
    paddle_training,
)
from lossgraph.files import relative_to_cwd
from lossgraph.graph import (
    PROTOBUF_LIMIT,
    STOP_GRADIENT_KEY,
    TIE_KEY,
    LossGraph,
    OptimizerInfo,
    ParamInfo,
    node_meta,
    rename_outputs,
    rename_values,
    set_node_meta,
    topological_sort,
)
from lossgraph.inputs import make_inputs
from lossgraph.spec import Spec

OPSET = 17
P2O_TIMEOUT_S = 900
#: BatchNorm running statistics are parameters in Paddle; lossgraph treats them as buffers.
BUFFER_ATTRIBUTES = ("_mean", "_variance")
_P2O_ERROR = re.compile(r"\[ERROR\]\[Paddle2ONNX\]\s*(?:\[OP: (?P<op>[\w.]+)\])?\s*(?P<msg>.*)")
_CRASH_CLUE = re.compile(r"Error|error|free\(\)|Abort|Segmentation")
_STOP_GRADIENT_VALUE = re.compile(r"^p2o\.pd_op\.share_data_?\.\d+\.\d+$")


def export_paddle(spec: Spec, seed: int) -> LossGraph:
    """Export a Paddle Spec. Raises ExportError / SpecError with one-line messages."""
    import paddle

    model = spec.model
    model.train() if spec.train else model.eval()
    arrays = make_inputs(spec.inputs, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    versions = _buffer_versions(model)
    recorder = StepRecorder(
        module_paths={id(layer): path for path, layer in model.named_sublayers(include_self=True)},
        draw=lambda call, k: paddle.to_tensor(draw_call_mask(call, seed, 0, k)),
    )
    modes = paddle_training(recorder) if spec.train else contextlib.nullcontext()
    try:
        with modes:
            # eager values from Paddle's own kernels; the convertible replacements only for tracing
            tensors = {name: paddle.to_tensor(value) for name, value in arrays.items()}
            eager_taps: dict[str, np.ndarray] = {}
            paths = {id(layer): p for p, layer in model.named_sublayers() if p}
            with watching("paddle", model) as custom, paddle_taps(model, TapRecorder(paths), eager_taps):
                losses, single = eager_losses(
                    spec, model, tensors, lambda t: isinstance(t, paddle.Tensor),
                    lambda t: int(np.prod(t.shape)),
                )
            updated = _changed_buffers(model, versions, recorder.state)
            custom.refuse(spec.source or "the spec")
            eager = {n: float(np.asarray(v.numpy(), np.float64)) for n, v in losses.items()}
            trace = TrainingTrace(
                list(recorder.dropouts), {k: v.numpy().copy() for k, v in recorder.state.items()},
                dict(recorder.batch_norm),
            )
            recorder.taps = TapRecorder(paths)
            model.set_state_dict(state)  # traced from the values the eager run started from
            WRITES.clear()
            with (
                convertible_ops(),
                exporting("paddle"),
                carrying("paddle") as carried,
                paddle_taps(model, recorder.taps),
                tempfile.TemporaryDirectory(prefix="lossgraph_paddle_") as tmp,
            ):
                proto = _convert(
                    spec, model, list(losses), single, trace, recorder, list(updated), Path(tmp)
                )
            custom.check_carried(carried, spec.source or "the spec")
    finally:
        model.set_state_dict(state)
    names = list(losses)
    param_names = _param_name_map(model)
    _constants_to_initializers(proto, param_names)
    _remove_identities(proto)
    rename_outputs(proto.graph, names + trace.output_names + [f"{STATE_PREFIX}{b}" for b in updated])
    mark_taps(proto, recorder.taps.names)
    rename_values(
        proto.graph, dict(zip(_mask_arguments(len(trace.dropouts)), trace.input_names))
    )
    return finish_export(
        spec,
        proto,
        framework="paddle",
        versions=package_versions("paddlepaddle", "paddle2onnx", "onnxruntime"),
        params=_param_infos(model, {t.name for t in proto.graph.initializer}),
        optimizers=_optimizer_infos(spec, model),
        lr_schedulers=_lr_scheduler_infos(spec),
        eager=eager,
        eager_taps=eager_taps,
        inputs=arrays,
        seed=seed,
        training=trace if spec.train else None,
        custom_backward=carried,
        rewritten=updated,
    )


def _buffer_versions(model: Any) -> dict[str, BufferSnapshot]:
    """Each state-dict buffer before the eager run, by state-dict name."""
    state = model.state_dict()
    return {
        name: BufferSnapshot(buffer, buffer.inplace_version, buffer.numpy().copy())
        for name, buffer in model.named_buffers()
        if buffer is not None and name in state
    }


def _changed_buffers(
    model: Any, before: Mapping[str, BufferSnapshot], recorded: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The state-dict buffers the eager forward pass wrote (a spectral norm's power iteration),
    with their values after it (``changed_buffers``)."""
    now = {name: (buffer, buffer.inplace_version)
           for name, buffer in model.named_buffers() if buffer is not None}
    return changed_buffers(now, before, recorded, lambda t: t.numpy())


def _lr_scheduler_infos(spec: Spec) -> dict[str, dict[str, Any]]:
    from lossgraph.exporters.schedules import paddle_schedule, paddle_schedulers

    return {
        name: paddle_schedule(value, spec.optimizers[name], f"{spec.source}: lr_schedulers[{name!r}]")
        for name, value in paddle_schedulers(spec).items()
    }


def _mask_arguments(count: int) -> list[str]:
    """Argument names of the dropout masks in the generated forward (renamed after export)."""
    return [f"lossgraph_dropout_{k}" for k in range(count)]


_LOSS_LAYER_SOURCE = """\
import paddle


class LossLayer(paddle.nn.Layer):
    \"\"\"Holds the user's model as ``model`` and returns the losses as scalars.\"\"\"

    def __init__(self, model, loss, recorder, writes):
        super().__init__()
        self.model = model
        self.__dict__["_loss"] = loss  # never registered as a sublayer
        self.__dict__["_recorder"] = recorder
        self.__dict__["_writes"] = writes

    def forward(self, {args}):
        self._recorder.reset([{masks}])
        out = self._loss(self.model, {kwargs})
        written = self._writes(self.model)
        return ({outputs},)
"""


def _loss_layer(
    model: Any,
    loss: Any,
    input_names: list[str],
    loss_names: list[str],
    single: bool,
    trace: TrainingTrace,
    recorder: StepRecorder,
    updated: list[str],
    tmp: Path,
) -> Any:
    """A Layer whose forward takes the named inputs (then the dropout masks) and returns the
    losses as scalars, then the buffers a training-mode BatchNorm updates, then the last values
    the forward writes into the buffers ``updated`` (see :func:`carry_writes`).

    dy2static reads the forward's source, so it is written to a file with the input names as
    explicit arguments (to_static rejects ``*args``) and the loss lookups spelled out."""
    import importlib.util

    import paddle

    if single:
        outputs = ["out.reshape([])"]
    else:
        outputs = [f'out["{n}"].reshape([])' for n in loss_names]
    outputs += [f'self._recorder.state["{name}"]' for name in trace.state]
    outputs += [f"written[{index}]" for index in range(len(updated))]
    masks = _mask_arguments(len(trace.dropouts))
    source = _LOSS_LAYER_SOURCE.format(
        args=", ".join([*input_names, *masks]),
        masks=", ".join(masks),
        kwargs=", ".join(f"{n}={n}" for n in input_names),
        outputs=", ".join(outputs),
    )
    path = tmp / "lossgraph_loss_layer.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location(f"lossgraph_loss_layer_{id(path)}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    def writes(layer: Any) -> list[Any]:
        return carry_writes(layer, list(updated))

    paddle.jit.not_to_static(writes)
    return module.LossLayer(model, loss, recorder, writes)


def _convert(
    spec: Spec,
    model: Any,
    names: list[str],
    single: bool,
    trace: TrainingTrace,
    recorder: StepRecorder,
    updated: list[str],
    tmp: Path,
) -> onnx.ModelProto:
    import paddle

    layer = _loss_layer(
        model, spec.loss, list(spec.inputs), names, single, trace, recorder, updated, tmp
    )
    layer.train() if spec.train else layer.eval()
    input_spec = [
        paddle.static.InputSpec(list(inp.shape), inp.dtype, name) for name, inp in spec.inputs.items()
    ]
    input_spec += [
        paddle.static.InputSpec(call.shape, "float32", name)
        for call, name in zip(trace.dropouts, _mask_arguments(len(trace.dropouts)))
    ]
    prefix = tmp / "model"
    try:
        with _struct_paths(model) as struct_paths:
            static = paddle.jit.to_static(layer, input_spec=input_spec, full_graph=True)
            paddle.jit.save(static, str(prefix), skip_prune_program=False)
    except ExportError as exc:  # one of lossgraph's stand-ins refused: its own message
        said = re.search(r"lossgraph\.errors\.ExportError: (.+)", str(exc))
        raise ExportError(
            f"{spec.source or 'the spec'}: {said.group(1).strip() if said else one_line(exc)}"
        ) from exc
    except Exception as exc:
        if "is not involved in the target_vars calculation" in str(exc):
            raise ExportError(
                f"{spec.source or 'the spec'}: an input in Spec.inputs ({', '.join(spec.inputs)}) is not "
                f"used by the loss, and Paddle's static graph keeps no unused input: leave it out of the "
                f"spec (or use it)."
            ) from exc
        raise ExportError(
            f"paddle.jit.to_static could not trace {spec.source or 'the spec'}: {_to_static_cause(exc)}"
        ) from exc
    out = tmp / "model.onnx"
    env = dict(os.environ, GLOG_minloglevel="2", FLAGS_print_ir="0")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lossgraph.exporters._p2o_worker", f"{prefix}.json",
             f"{prefix}.pdiparams", str(out), str(OPSET)],
            capture_output=True, text=True, timeout=P2O_TIMEOUT_S, env=env,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"paddle2onnx did not finish within {P2O_TIMEOUT_S} s.") from None
    log = proc.stdout + proc.stderr
    if not out.exists() or out.stat().st_size == 0 or proc.returncode != 0:
        raise ExportError(_conversion_failure(log, Path(f"{prefix}.json"), spec, struct_paths))
    proto = onnx.load(str(out))
    _check_every_input_produced(proto)
    stops = [
        name
        for line in log.splitlines()
        if line.startswith(STOP_GRADIENT_PREFIX)
        for name in line[len(STOP_GRADIENT_PREFIX) :].split(",")
        if name
    ]
    _mark_stop_gradients(proto, stops)
    attributes = next(
        (json.loads(line[len(ATTRIBUTES_PREFIX):]) for line in log.splitlines()
         if line.startswith(ATTRIBUTES_PREFIX)),
        {},
    )
    _mend_kept_ops(proto, attributes, struct_paths)
    expected = len(names) + len(trace.state) + len(updated)
    if len(proto.graph.output) != expected or not proto.graph.node:
        raise ExportError(
            f"paddle2onnx produced a graph with {len(proto.graph.output)} output(s) for "
            f"{expected} loss(es) and buffer update(s); the conversion is incomplete."
        )
    return proto


_RAISED = re.compile(r"^\s*(\w+(?:Error|Exception)): (.+)$", re.MULTILINE)


def _to_static_cause(exc: BaseException) -> str:
    """What made dy2static fail, in one line: the error its report ends with (the report starts
    with the generated forward's code, which says nothing) and the user's line that raised it."""
    text = str(exc)
    raised = list(_RAISED.finditer(text))
    said = re.sub(r"\s*Suggestions?:\s*$", "", raised[-1].group(2).strip()) if raised else ""
    cause = f"{raised[-1].group(1)}: {said}" if raised else (
        f"{type(exc).__name__}: {one_line(exc)}")
    frame = innermost_user_frame(text)
    where = f" (at {relative_to_cwd(frame['file'])}:{frame['line']}: {frame['code']})" if frame else ""
    return one_line(RuntimeError(cause + where), limit=400)


def _conversion_failure(
    log: str, program_json: Path, spec: Spec, struct_paths: Mapping[str, str]
) -> str:
    """One line naming the Paddle ops paddle2onnx rejected and the layers they belong to, by
    module path in the model where the trace recorded one (see :func:`_struct_paths`)."""
    failures: dict[str, str] = {}
    for line in log.splitlines():
        if line.startswith(UNSUPPORTED_PREFIX):
            for op in line[len(UNSUPPORTED_PREFIX):].split(","):
                failures.setdefault(op.strip(), "no converter")
    for match in _P2O_ERROR.finditer(log):
        if match.group("op"):
            failures.setdefault(match.group("op"), match.group("msg").strip().rstrip("."))
    params = program_json.with_suffix(".pdiparams")
    size = params.stat().st_size if params.is_file() else 0
    if not failures and size > PROTOBUF_LIMIT:
        # its PIR exporter serializes the whole model as one message, with no external data
        return (
            f"paddle2onnx cannot write {spec.source or 'the spec'}: its parameters take "
            f"{size / 2**30:.1f} GiB, and paddle2onnx's exporter of Paddle 3 programs writes no "
            f"graph over protobuf's 2 GB limit (lossgraph's torch exporter does, with external data)."
        )
    if not failures:
        clues = [
            line.strip()
            for line in log.splitlines()
            if _CRASH_CLUE.search(line) and "Warning" not in line
        ]
        return (
            f"paddle2onnx crashed converting {spec.source or 'the spec'} although every op has a "
            f"converter ({'; '.join(clues[-2:])[-300:] or 'no message'}); simplify the loss or "
            f"report it to paddle2onnx."
        )
    layers = _layers_of_ops(program_json, {op.split(".", 1)[-1] for op in failures})
    parts = []
    for op, message in failures.items():
        # a layer called twice has two struct names but one path: name it once
        where = list(dict.fromkeys(
            struct_paths.get(struct, struct) for struct in layers.get(op.split(".", 1)[-1], [])
        ))
        parts.append(f"{op} ({message})" + (f" in {', '.join(where)}" if where else ""))
    return (
        f"paddle2onnx cannot convert Paddle op(s) of {spec.source or 'the spec'}: "
        + "; ".join(parts)
        + "."
    )


@contextlib.contextmanager
def _struct_paths(model: Any) -> Iterator[dict[str, str]]:
    """While the model is traced, map each Paddle struct name (``Sequential/Odd_1``) to the
    module path of the layer call it names (``heads.1``).

    Paddle tags every traced op with the class names of the layers it runs in, numbered per call
    under the same parent and never reset in a process (``Odd_6``): a user cannot tell which
    layer that is. A forward post-hook runs right after Paddle closed the layer's name node, so
    the node is the last child of the current one under the layer's class name. Where Paddle's
    (private) name tree is not there, nothing is recorded and messages keep the struct names."""
    from paddle.base import framework

    paths: dict[str, str] = {}

    def record(layer: Any, path: str) -> None:
        parent = getattr(framework, "_name_struct", None)
        calls = getattr(parent, "_children", {}).get(type(layer).__name__)
        if not calls:
            return
        names, node = [], calls[-1]
        while node is not None:
            names.append(node.name())
            node = node.parent()
        paths["/".join(reversed(names)).strip("/")] = path

    handles = [
        layer.register_forward_post_hook(lambda layer, _in, _out, path=path: record(layer, path))
        for path, layer in model.named_sublayers()
        if path
    ]
    try:
        yield paths
    finally:
        for handle in handles:
            handle.remove()


def _layers_of_ops(program_json: Path, op_types: set[str]) -> dict[str, list[str]]:
    """Paddle's struct names (``/DiscoGAN/Generator/...``) of the ops of the given types."""
    try:
        program = json.loads(program_json.read_text())
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
    except (OSError, KeyError, IndexError, json.JSONDecodeError):
        return {}
    found: dict[str, list[str]] = defaultdict(list)
    for op in ops:
        op_type = str(op.get("#", "")).split(".", 1)[-1]
        if op_type not in op_types:
            continue
        struct = "(loss function)"
        for attr in op.get("A", []) if isinstance(op.get("A"), list) else []:
            if isinstance(attr, dict) and attr.get("N") == "struct_name":
                struct = str(attr["AT"]["D"]).strip("/") or struct
        if struct not in found[op_type]:
            found[op_type].append(struct)
    return dict(found)


def _param_name_map(model: Any) -> dict[str, str]:
    """Paddle's ``param.name`` (``linear_0.w_0``) -> state-dict key (``fc.weight``)."""
    out = {}
    for key, tensor in model.state_dict().items():
        out.setdefault(tensor.name, key)
    return out


def _constants_to_initializers(proto: onnx.ModelProto, param_names: Mapping[str, str]) -> None:
    """Replace the Constant nodes holding parameters by initializers named by state-dict keys.

    paddle2onnx names a parameter constant's output ``<param.name>_<k>``; the name, not the
    value, identifies the parameter, so equal-valued parameters (BatchNorm scales of ones) stay
    apart. Every copy of one parameter is checked to hold the same value and merged.
    """
    graph = proto.graph
    renames: dict[str, str] = {}
    values: dict[str, np.ndarray] = {}
    keep = []
    for node in graph.node:
        key = _param_of_constant(node, param_names)
        if key is None:
            keep.append(node)
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if key in values and not np.array_equal(values[key], value):
            raise ExportError(
                f"paddle2onnx wrote two different values for parameter {key!r}; cannot tell "
                f"which one the model uses."
            )
        values[key] = value
        renames[node.output[0]] = key
    del graph.node[:]
    graph.node.extend(keep)
    rename_values(graph, renames)
    for key, value in values.items():
        graph.initializer.append(numpy_helper.from_array(value, key))


def _param_of_constant(node: onnx.NodeProto, param_names: Mapping[str, str]) -> str | None:
    if node.op_type != "Constant" or len(node.output) != 1 or not node.attribute:
        return None
    if node.attribute[0].name != "value":
        return None
    if node.output[0] in param_names:  # create_parameter's own name ("net_0.w_0")
        return param_names[node.output[0]]
    base, sep, suffix = node.output[0].rpartition("_")
    if sep and suffix.isdigit() and base in param_names:
        return param_names[base]
    return None


def _check_every_input_produced(proto: onnx.ModelProto) -> None:
    """paddle2onnx leaves out ops it cannot convert without a word (SimpleRNN's ``rnn``): their
    outputs are read but never written. Say which op, instead of a broken graph."""
    graph = proto.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known.update(o for node in graph.node for o in node.output)
    missing = [i for node in graph.node for i in node.input if i not in known]
    if missing:
        ops = sorted({m.split(".")[2] if m.startswith("p2o.pd_op.") else m for m in missing})
        raise ExportError(
            f"paddle2onnx {package_versions('paddle2onnx').get('paddle2onnx', '')} left Paddle "
            f"op(s) {', '.join(ops)} out of the ONNX graph (value {missing[0]!r} is read but never "
            f"written): the model uses a layer it cannot convert."
        )


def _mark_stop_gradients(proto: onnx.ModelProto, values: list[str]) -> None:
    """Make each value where Paddle stops gradients the output of an Identity marked
    ``lossgraph.stop_gradient`` (paddle2onnx writes most values through an Identity already)."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    for value in values:
        node = producers.get(value)
        if node is None:
            continue
        if node.op_type != "Identity":
            inner = f"{value}/before_stop_gradient"
            node.output[:] = [inner if o == value else o for o in node.output]
            marker = onnx.helper.make_node("Identity", [inner], [value], name=f"{value}/stop_gradient")
            set_node_meta(marker, STOP_GRADIENT_KEY, "1")
            graph.node.append(marker)  # appending copies the node: its metadata is set before
        else:
            set_node_meta(node, STOP_GRADIENT_KEY, "1")
    topological_sort(graph)


def _mend_kept_ops(
    proto: onnx.ModelProto, attributes: Mapping[str, Mapping[str, Any]], paths: Mapping[str, str]
) -> None:
    """Set what paddle2onnx gets wrong in the ops the worker keeps whole, from the program's own
    attributes (``value -> {"op", attributes}``): LeakyRelu's alpha (paddle2onnx writes garbage)
    and marked ``positive`` (Paddle's slope at 0 is 1); hardtanh's bounds (paddle2onnx writes
    Clip(-1, 1) whatever they are); hardtanh's and relu6's Clip marked ``open`` (Paddle passes no
    gradient at the bounds); adaptive pools paddle2onnx writes with the wrong windows
    (:mod:`lossgraph.exporters.adaptive_pool`; ``paths``: struct names -> module paths)."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    pools = []
    for value, attrs in attributes.items():
        node = producers.get(value)
        while node is not None and node.op_type == "Identity" and node.input[0] in producers:
            node = producers[node.input[0]]
        if node is None:
            continue
        op = attrs.get("op")
        if op == "leaky_relu" and node.op_type == "LeakyRelu":
            slope = float(attrs.get("negative_slope", 0.01))
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("alpha", slope))
            set_node_meta(node, TIE_KEY, "positive")
        elif op in ("hardtanh", "relu6") and node.op_type == "Clip":
            if op == "hardtanh":
                for index, key in ((1, "t_min"), (2, "t_max")):
                    bound = numpy_helper.from_array(
                        np.asarray(attrs.get(key, (-1.0, 1.0)[index - 1]), np.float32),
                        f"{value}/{key}",
                    )
                    graph.initializer.append(bound)
                    while len(node.input) <= index:
                        node.input.append("")
                    node.input[index] = bound.name
            set_node_meta(node, TIE_KEY, "open")
        elif op in POOLS and node.op_type in ("AveragePool", "MaxPool"):
            pools.append((node, attrs))
    mend_adaptive_pools(graph, pools, paths)


def _remove_identities(proto: onnx.ModelProto) -> None:
    """Drop Identity nodes, keeping the stop-gradient markers (``.detach()`` is share_data_)."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    renames: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and _STOP_GRADIENT_VALUE.match(node.output[0]):
            set_node_meta(node, STOP_GRADIENT_KEY, "1")
        if node.op_type == "Identity" and node_meta(node, STOP_GRADIENT_KEY) == "1":
            keep.append(node)
        elif node.op_type == "Identity" and node.output[0] not in outputs:
            renames[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    # resolve chains: a -> b -> c
    for name in list(renames):
        target = renames[name]
        while target in renames:
            target = renames[target]
        renames[name] = target
    del graph.node[:]
    graph.node.extend(keep)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]


def _param_infos(model: Any, present: set[str]) -> dict[str, ParamInfo]:
    import paddle

    infos: dict[str, ParamInfo] = {}
    layers = dict(model.named_sublayers(include_self=True))
    buffers = {name for name, _ in model.named_buffers()}
    state = model.state_dict()
    keys: dict[str, list[str]] = {}  # param.name -> every state-dict key of it (tied weights)
    for key, tensor in state.items():
        keys.setdefault(tensor.name, []).append(key)
    for key, tensor in state.items():
        if key not in present:
            continue
        module_path, _, attribute = key.rpartition(".")
        layer = layers.get(module_path, model)
        is_buffer = attribute in BUFFER_ATTRIBUTES or key in buffers
        infos[key] = ParamInfo(
            shape=list(tensor.shape),
            dtype=str(tensor.dtype).replace("paddle.", ""),
            trainable=not is_buffer and not tensor.stop_gradient,
            kind="buffer" if is_buffer else "parameter",
            module=module_path,
            layer_type=type(layer).__name__,
            base_type=framework_base(type(layer), paddle.nn, paddle.nn.Layer),
            attribute=attribute,
            framework_name=tensor.name,
            aliases=[k for k in keys[tensor.name] if k != key],
        )
    return infos


#: Paddle optimizer attributes recorded as hyper-parameters (framework spelling, no underscore);
#: a dict parameter group's own value (same name) takes precedence.
_OPTIMIZER_ATTRIBUTES = (
    "_beta1", "_beta2", "_epsilon", "_momentum", "_use_nesterov", "_coeff", "_lr_ratio",
    "_amsgrad", "_lazy_mode", "_multi_precision", "_rescale_grad", "_dampening",
)


def _optimizer_infos(spec: Spec, model: Any) -> dict[str, OptimizerInfo]:
    import paddle

    names = {id(p): n for n, p in model.named_parameters()}
    infos = {}
    for opt_name, optimizer in (spec.optimizers or {}).items():
        if not isinstance(optimizer, paddle.optimizer.Optimizer):
            raise SpecError(
                f"{spec.source}: optimizer {opt_name!r} must be a paddle.optimizer.Optimizer, got "
                f"{type(optimizer).__name__}."
            )
        groups = optimizer._param_groups
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        entries, stages = [], []
        for group in groups:
            params = list(group["params"])
            optimizer_param_names(spec, opt_name, params, names)  # all must be the model's
            entry = _optimizer_hyper(optimizer, group)
            # BatchNorm statistics are Paddle parameters without gradients: never updated
            params = [p for p in params if names[id(p)].rpartition(".")[2] not in BUFFER_ATTRIBUTES]
            entry["params"] = [names[id(p)] for p in params]
            decay_fun = getattr(optimizer, "_apply_decay_param_fun", None)
            if decay_fun is not None:
                entry["decay_params"] = [names[id(p)] for p in params if decay_fun(p.name)]
            # per-parameter settings (ParamAttr, or a group's): a learning-rate multiplier and a
            # regularizer, which replaces the optimizer's weight_decay for that parameter
            scales = {names[id(p)]: json_safe(p.optimize_attr.get("learning_rate", 1.0)) for p in params}
            if any(s != 1.0 for s in scales.values()):
                entry["param_learning_rate"] = {n: s for n, s in scales.items() if s != 1.0}
            decays = {
                names[id(p)]: _regularization(p.regularizer)
                for p in params if getattr(p, "regularizer", None) is not None
            }
            if any(d != entry["weight_decay"] for d in decays.values()):
                entry["param_weight_decay"] = {n: d for n, d in decays.items() if d != entry["weight_decay"]}
            entries.append(entry)
            # a dict group's own grad_clip (Paddle fills in the optimizer's), else the optimizer's
            stage = _grad_clip_stage(group.get("grad_clip", optimizer._grad_clip), params, names,
                                     f"{spec.source}: optimizer {opt_name!r}")
            stages += [stage] if stage else []
        infos[opt_name] = OptimizerInfo(cls=type(optimizer).__name__, framework="paddle", groups=entries,
                                        clip=stages)
    loop_settings(spec, infos, "paddle")
    return infos


def _grad_clip_stage(clip: Any, params: list[Any], names: Mapping[int, str], where: str) -> dict[str, Any] | None:
    """A Paddle optimizer's ``grad_clip`` over one parameter group as a clip stage
    (``lossgraph.optim.clip``): it clips each group on its own (a global norm is the group's),
    and leaves out the parameters with ``need_clip=False``."""
    import paddle

    if clip is None:
        return None
    clipped = [names[id(p)] for p in params if getattr(p, "need_clip", True) is not False]
    api = f"paddle.nn.{type(clip).__name__}"
    if isinstance(clip, paddle.nn.ClipGradByGlobalNorm):
        return {"kind": "paddle_global_norm", "max_norm": float(clip.clip_norm),
                "auto_skip_clip": bool(clip.auto_skip_clip), "api": api, "framework": "paddle",
                "params": clipped}
    if isinstance(clip, paddle.nn.ClipGradByNorm):
        return {"kind": "paddle_norm", "max_norm": float(clip.clip_norm), "api": api,
                "framework": "paddle", "params": clipped}
    if isinstance(clip, paddle.nn.ClipGradByValue):
        return {"kind": "value", "min": float(clip.min), "max": float(clip.max), "api": api,
                "framework": "paddle", "params": clipped}
    raise SpecError(
        f"{where} clips gradients with {type(clip).__name__}; lossgraph reproduces ClipGradByGlobalNorm, "
        f"ClipGradByNorm and ClipGradByValue."
    )


def _optimizer_hyper(optimizer: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    import paddle

    lr = optimizer._learning_rate
    hyper: dict[str, Any] = {
        "learning_rate": json_safe(lr) if not hasattr(lr, "step") else json_safe(lr.last_lr),
    }
    for attr in _OPTIMIZER_ATTRIBUTES:
        key = attr.lstrip("_")
        if key in group or hasattr(optimizer, attr):
            value = json_safe(group.get(key, getattr(optimizer, attr, None)))
            if value is not None:
                hyper[key] = value
    hyper["weight_decay"] = _regularization(group.get("weight_decay", getattr(optimizer, "regularization", None)))
    if isinstance(optimizer, paddle.optimizer.AdamW):
        # AdamW's weight_decay is its decoupled coefficient, not a regularizer
        hyper["coeff"] = json_safe(group.get("weight_decay", optimizer._weight_decay))
        hyper["weight_decay"] = None
    if group.get("regularization_method", getattr(optimizer, "_regularization_method", "")) == "l2_decay":
        # Momentum takes L2 decay out of `regularization` and applies it inside its kernel
        coeff = group.get("regularization_coeff", getattr(optimizer, "_regularization_coeff", 0.0))
        hyper["weight_decay"] = {"L2Decay": json_safe(coeff)}
    return hyper  # grad_clip becomes the optimizer's clip stages (_grad_clip_stage)


def _regularization(reg: Any) -> Any:
    """Paddle weight decay as exported: a float, ``{"L2Decay": c}``, ``{"L1Decay": c}`` or None."""
    if reg is None or isinstance(reg, (int, float)):
        return reg
    coeff = json_safe(getattr(reg, "_coeff", getattr(reg, "_regularization_coeff", None)))
    return {type(reg).__name__: coeff}

