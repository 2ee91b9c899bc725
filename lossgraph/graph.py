"""LossGraph: an ONNX model whose outputs are named losses, plus lossgraph's metadata.

Everything downstream of the exporters needs only the .onnx file: the metadata (stored as JSON
under the model's ``lossgraph`` metadata key) records the framework and versions, the input specs,
every parameter and buffer (trainability, owning module, layer type), the optimizers and the
schedule. Nodes carry ``lossgraph.scope`` (module path), ``lossgraph.source`` (file:line) and
``lossgraph.stop_gradient`` metadata.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from lossgraph.errors import LossgraphError, SpecError, VerificationError
from lossgraph.files import relative_to_cwd, write_atomic
from lossgraph.spec import Input

META_KEY = "lossgraph"
META_VERSION = 1
SCOPE_KEY = "lossgraph.scope"
SOURCE_KEY = "lossgraph.source"
STOP_GRADIENT_KEY = "lossgraph.stop_gradient"
#: The tag value of a ``lossgraph.grad`` marker (exporters emit it, the autodiff expands it).
GRAD_MARKER_TAG = -2.718281e38
#: The tag value of a module-output tap marker, and the node metadata naming a tap.
TAP_TAG = -3.141592e38
TAP_KEY = "lossgraph.tap"
#: The tag values of a carried custom backward (an ``autograd.Function`` / ``PyLayer``): the
#: marker that packs the forward's output with the backward traced from a gradient placeholder,
#: and that placeholder (exporters emit both; the autodiff turns them into a node tagged
#: ``lossgraph.custom_vjp`` whose gradient is the traced backward).
VJP_MARKER_TAG = -1.618033e38
VJP_GRAD_TAG = -1.414213e38
CUSTOM_VJP_KEY = "lossgraph.custom_vjp"
#: The domain of the local functions that hold carried backward passes.
CUSTOM_VJP_DOMAIN = "lossgraph.custom_vjp"
#: How a piecewise node's gradient treats a tie or a kink, where the framework op it was exported
#: from differs from the ONNX op's default rule (the exporters set it; the autodiff reads it):
#: ``open`` (Clip: no gradient at the bounds, as hardtanh and relu6), ``first`` (Max/Min: input 0
#: takes a tie whole, as torch's clamp with tensor bounds), ``one`` (ReduceMax/ReduceMin: the first
#: tied element takes the gradient whole, as torch.max(x, dim)), ``positive`` (LeakyRelu: slope 1
#: at 0, as Paddle's leaky_relu).
TIE_KEY = "lossgraph.tie"
#: A Gather exported from an embedding lookup with ``padding_idx`` (torch's ``nn.Embedding``):
#: the row it names gets no gradient, as in the framework's embedding backward.
PADDING_IDX_KEY = "lossgraph.padding_idx"
#: A ScatterND that rewrites rows of a parameter in place under no_grad during the forward pass
#: (torch's ``nn.Embedding(max_norm=...)`` renormalizing the rows it looks up): the gradient
#: of its output passes to its data input whole, the rewritten rows included, and none to the
#: rewrite, as the framework's lookup of the mutated weight differentiates.
NO_GRAD_REWRITE_KEY = "lossgraph.no_grad_rewrite"
#: A node of the ops an op without a gradient rule was lowered into (GridSample): the original
#: op as JSON, ``{"op_type", "name", "attributes"}``, so that a divergence there names it and
#: its settings.
LOWERED_KEY = "lossgraph.lowered"
#: The Slice of an unrolled ONNX LSTM that takes the cell candidate's gate (ONNX's block 3 of
#: i, o, f, c): its value is that gate's block in the framework's weights (2: torch's and
#: Paddle's i, f, g, o, from which both exporters reorder the rows).
LSTM_CELL_GATE_KEY = "lossgraph.lstm_cell_gate"
TIES = ("open", "first", "one", "positive")
#: Without optimizers in the spec, training steps (on ORT and natively) use plain SGD, under
#: this name, with this learning rate, on every trainable parameter.
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_LR = 1e-3
#: Initializers up to this many elements can feed shapes (constant folding, shape inference);
#: larger ones are weights.
SHAPE_VALUE_LIMIT = 4096
#: Protobuf serializes no message over 2 GiB: a graph larger than this (less headroom for what
#: a run adds) is saved with its tensors in an external data file beside it, and a session
#: feeds such a graph's initializers instead of serializing them.
PROTOBUF_LIMIT = 2**31 - 2**27


@dataclass
class ParamInfo:
    """One parameter or buffer of the exported model, named by its state-dict key."""

    shape: list[int]
    dtype: str
    trainable: bool
    kind: str = "parameter"  # or "buffer"
    module: str = ""  # owning module path, e.g. "G_A.main.0"
    layer_type: str = ""  # owning module's class name, e.g. "Conv2d", "Linear"
    #: the framework layer class the owning module is or derives from, e.g. "Linear" for torch's
    #: NonDynamicallyQuantizableLinear; empty when it derives from none but the base class
    base_type: str = ""
    attribute: str = ""  # attribute on the module, e.g. "weight", "running_mean", "_mean"
    framework_name: str = ""  # paddle's param.name ("linear_0.w_0"); empty for torch
    #: the other names of the same tensor (tied weights: a language model's output head sharing
    #: its embedding); the entry is named by the first, as the framework's optimizers know it
    aliases: list[str] = field(default_factory=list)


@dataclass
class OptimizerInfo:
    """A framework optimizer as exported: its class and its parameter groups.

    Each group is ``{"params": [state-dict names], <hyper-parameter>: value, ...}`` with the
    framework's own hyper-parameter names (``lr``, ``betas``, ``weight_decay``, ``beta1``, ...).
    """

    cls: str
    framework: str
    groups: list[dict[str, Any]]
    #: parameters the optimizer holds that no loss reaches (absent from the graph): they get no
    #: gradient, and torch's and Paddle's optimizers skip a parameter without one
    unreached: list[str] = field(default_factory=list)
    #: gradient clipping before the update, stage after stage (``lossgraph.optim.clip``):
    #: the training loop's clip call, then a Paddle optimizer's own ``grad_clip``
    clip: list[dict[str, Any]] = field(default_factory=list)
    #: an exponential moving average of the parameters, updated after the optimizer's steps
    #: (``lossgraph.EMA.to_dict``), or None
    ema: dict[str, Any] | None = None

    @property
    def params(self) -> list[str]:
        return [name for group in self.groups for name in group["params"]]


@dataclass
class GraphMeta:
    """lossgraph's metadata of one exported graph."""

    framework: str
    losses: list[str]
    inputs: dict[str, Input]
    params: dict[str, ParamInfo]
    versions: dict[str, str] = field(default_factory=dict)
    source: str = ""
    train: bool = False
    optimizers: dict[str, OptimizerInfo] = field(default_factory=dict)
    schedule: list[tuple[str, str]] = field(default_factory=list)
    lr_schedulers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: micro-batches whose gradients each optimizer step accumulates (``Spec.accumulate``)
    accumulate: int = 1
    #: whether the loop clears gradients after each step (``Spec.clear_grads``)
    clear_grads: bool = True
    #: mixed precision (``torch.autocast``): the low element types the model computes in, each
    #: with the number of values rounded to it (``lossgraph.runtime.precision``); empty: float32
    low_precision: dict[str, int] = field(default_factory=dict)
    eager: dict[str, Any] = field(default_factory=dict)
    #: training mode: graph output name -> buffer it updates (BatchNorm running statistics)
    state_outputs: dict[str, str] = field(default_factory=dict)
    #: training mode: one entry per dropout, fed as graph input ``dropout:<k>`` (p, scale,
    #: shape, and the module path of the layer that called it as ``scope``)
    dropout: list[dict[str, Any]] = field(default_factory=list)
    #: training mode: running-variance buffer -> how its BatchNorm updates it: ``module``,
    #: ``momentum`` (the framework's own value; None: torch's cumulative average),
    #: ``convention`` ("unbiased" batch variance, torch; "biased", Paddle) and ``counts``
    #: (elements per channel of the batch, one per call of the layer in a forward pass)
    batch_norm: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["inputs"] = {k: v.to_dict() for k, v in self.inputs.items()}
        data["version"] = META_VERSION
        return json.dumps(data)  # key order kept: parameters stay in definition order

    @classmethod
    def from_json(cls, text: str) -> GraphMeta:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"it is a JSON {type(data).__name__}, not an object")
        if data.pop("version", None) != META_VERSION:
            raise LossgraphError("the lossgraph metadata has an unknown version; re-export it.")
        check_fields(cls, data, "")
        data["inputs"] = {k: Input.from_dict(v) for k, v in data["inputs"].items()}
        data["params"] = {k: ParamInfo(**v) for k, v in data["params"].items()}
        data["optimizers"] = {k: OptimizerInfo(**v) for k, v in data["optimizers"].items()}
        data["schedule"] = [tuple(e) for e in data["schedule"]]
        meta = cls(**data)
        check_training_values(meta)
        return meta


#: how JSON spells each Python type, for messages
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true or false", type(None): "null"}


#: what a graph's tensor can be: trained (or frozen) parameter, or buffer
PARAM_KINDS = ("parameter", "buffer")
#: optimizer settings that are numbers wherever they appear (either framework's spelling)
NUMERIC_HYPER = ("lr", "learning_rate", "eps", "epsilon", "momentum", "dampening", "beta1", "beta2",
                 "coeff", "lr_ratio", "rescale_grad")


def check_training_values(meta: GraphMeta) -> None:
    """Raise ValueError naming the first training value the steps could not use: a parameter of
    no known kind, an optimizer without parameter groups, a setting that is not a finite number
    (an lr of NaN trains every parameter into NaN, and NaN equals NaN in a comparison), a
    dropout rate or learning-rate schedule that is not numbers."""
    for name, param in meta.params.items():
        if param.kind not in PARAM_KINDS:
            raise ValueError(f"params.{name}.kind must be one of {', '.join(PARAM_KINDS)}, got {param.kind!r}")
    for name, info in meta.optimizers.items():
        if not info.groups:
            raise ValueError(f"optimizers.{name}.groups is empty: the optimizer trains nothing")
        for index, group in enumerate(info.groups):
            where = f"optimizers.{name}.groups[{index}]"
            if not isinstance(group.get("params"), list):
                raise ValueError(f"{where}.params must be a list of parameter names")
            for key in NUMERIC_HYPER:
                if key in group and group[key] is not None:
                    _finite(group[key], f"{where}.{key}")
            betas = group.get("betas")
            if betas is not None:
                if not isinstance(betas, list) or len(betas) != 2:
                    raise ValueError(f"{where}.betas must be a list of 2 numbers, got {betas!r}")
                for k, beta in enumerate(betas):
                    _finite(beta, f"{where}.betas[{k}]")
            decay = group.get("weight_decay")
            if isinstance(decay, dict):
                for kind, value in decay.items():
                    _finite(value, f"{where}.weight_decay.{kind}")
            elif decay is not None:
                _finite(decay, f"{where}.weight_decay")
    for name, schedule in meta.lr_schedulers.items():
        lrs = schedule.get("lrs") if isinstance(schedule, dict) else None
        if not isinstance(lrs, list) or not lrs:
            raise ValueError(f"lr_schedulers.{name}.lrs must be a non-empty list of learning rates per step")
        for step, rates in enumerate(lrs):
            for k, rate in enumerate(rates if isinstance(rates, list) else [rates]):
                _finite(rate, f"lr_schedulers.{name}.lrs[{step}][{k}]")
    for index, call in enumerate(meta.dropout):
        for key in ("p", "scale"):
            if key in call:
                _finite(call[key], f"dropout[{index}].{key}")


def _finite(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")


def check_fields(cls: type, data: Any, where: str) -> None:
    """Raise ValueError naming the first field of ``data`` (JSON of the dataclass ``cls``) that is
    missing, unknown, or of the wrong type, recursively (``params.fc.weight.shape must be a list
    of integers``)."""
    import dataclasses
    import typing

    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the metadata'} must be an object, got {_json_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise ValueError(f"{where}{name} is not a field lossgraph writes")
    for name, spec in fields.items():
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}{name} is missing")
            continue
        _check_value(data[name], hints[name], f"{where}{name}")


def _check_value(value: Any, annotation: Any, where: str) -> None:
    import collections.abc
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                _check_value(value, option, where)
                return
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if dataclasses.is_dataclass(annotation):
        check_fields(annotation, value, f"{where}.")
        return
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {_json_name(value)}")
        for key, item in value.items():
            _check_value(item, args[1] if args else Any, f"{where}.{key}")
        return
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {_json_name(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where} must be a list of {len(args)}, got {len(value)}")
            for index, (item, option) in enumerate(zip(value, args)):
                _check_value(item, option, f"{where}[{index}]")
            return
        for index, item in enumerate(value):
            _check_value(item, args[0] if args else Any, f"{where}[{index}]")
        return
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is type(None) or annotation is None:
        ok = value is None
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise ValueError(f"{where} must be {_json_names(annotation)}, got {_json_name(value)}")


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _json_names(annotation: Any) -> str:
    return _JSON_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def over_protobuf_limit(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large to be serialized as one protobuf message, by the size of
    its tensors (``ByteSize()`` itself serializes, and fails past 2 GB)."""
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    return sum(_tensor_bytes(t) for t in tensors) > PROTOBUF_LIMIT


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize if tensor.data_type else 0


def data_file(path: Path) -> Path:
    """Where a graph saved as ``path`` keeps its tensors when it is over 2 GB."""
    return path.with_name(f"{path.name}.data")


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` as ``path`` with the data of its initializers over 1 KB in
    :func:`data_file` (``path``'s name + ``.data``, beside it); ``model`` is left whole. Both files
    are written atomically, the data first."""
    data = data_file(path)
    light = _without_initializers(model)
    chunks = []
    offset = 0
    for tensor in model.graph.initializer:
        raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        if len(raw) <= 1024:
            light.graph.initializer.add().CopyFrom(tensor)
            continue
        ref = light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
        for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(raw)))):
            ref.external_data.add(key=key, value=value)
        ref.data_location = onnx.TensorProto.EXTERNAL
        chunks.append(raw)
        offset += len(raw)
    write_atomic(data, chunks)
    write_atomic(path, light.SerializeToString())


def copy_graph_file(source: Path, target: Path) -> None:
    """Copy a saved graph to ``target`` (atomically), with its data file when it has one (renamed
    after ``target``, which names it)."""
    data = data_file(source)
    if not data.is_file():
        write_atomic(target, source.read_bytes())
        return
    light = onnx.load(str(source), load_external_data=False)
    for tensor in light.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_file(target).name
    with open(data, "rb") as f:
        write_atomic(data_file(target), iter(lambda: f.read(1 << 24), b""))
    write_atomic(target, light.SerializeToString())


def _missing_external_data(path: Path) -> str | None:
    """The external data file a saved graph names and that is not beside it, if any."""
    try:
        light = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file at all: the caller says so
        return None
    for tensor in light.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and not (path.parent / entry.value).is_file():
                return entry.value
    return None


@dataclass
class LossGraph:
    """An ONNX model with named loss outputs and lossgraph metadata."""

    model: onnx.ModelProto
    meta: GraphMeta
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> LossGraph:
        """Load and check a .onnx file written by ``lossgraph export``."""
        path = Path(path)
        if not path.exists():
            raise VerificationError(f"Graph file {path} does not exist.")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises a variety of errors
            missing = _missing_external_data(path)
            if missing:
                raise VerificationError(
                    f"{path} keeps its tensors in {missing}, which is missing: a graph over 2 GB is "
                    f"written as two files; copy or move them together."
                ) from None
            raise VerificationError(f"{path} is not a readable ONNX file ({type(exc).__name__}).") from None
        props = {p.key: p.value for p in model.metadata_props}
        if META_KEY not in props:
            raise VerificationError(
                f"{path} has no lossgraph metadata; create it with `lossgraph export SPEC.py`."
            )
        try:
            meta = GraphMeta.from_json(props[META_KEY])
        except (KeyError, TypeError, ValueError, AttributeError, SpecError) as exc:
            raise VerificationError(f"{path} has broken lossgraph metadata ({exc}).") from None
        except RecursionError:
            raise VerificationError(f"{path} has broken lossgraph metadata (nested too deeply).") from None
        invalid = invalid_windows(model.graph)
        if invalid:
            raise VerificationError(
                f"{path} is not a valid ONNX graph: {'; '.join(invalid[:3])} (must be positive)."
            )
        return cls(model=model, meta=meta, path=str(path))

    def save(self, path: str | Path) -> None:
        """Write the graph with its metadata (atomically: a failed write leaves the file as it was);
        a graph over protobuf's 2 GB limit as ``PATH`` and its tensors' data in ``PATH.data``."""
        set_metadata(self.model, META_KEY, self.meta.to_json())
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if over_protobuf_limit(self.model):
            save_external(self.model, path)
        else:
            write_atomic(path, self.model.SerializeToString())
        self.path = str(path)

    @property
    def framework(self) -> str:
        return self.meta.framework

    def initializers(self) -> dict[str, np.ndarray]:
        """Every initializer of the main graph as a numpy array."""
        return {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}

    def param_values(self) -> dict[str, np.ndarray]:
        """The values of the parameters and buffers listed in the metadata."""
        values = self.initializers()
        return {name: values[name] for name in self.meta.params if name in values}

    def trainable_params(self) -> list[str]:
        return [n for n, p in self.meta.params.items() if p.trainable and p.kind == "parameter"]

    def op_histogram(self) -> Counter[str]:
        return Counter(node.op_type for node in self.model.graph.node)


def training_schedule(
    schedule: list[tuple[str, str]] | None, losses: list[str], optimizers: Any
) -> list[tuple[str, str]]:
    """The ``(loss, optimizer)`` pairs training steps cycle through: the spec's schedule; without
    one, the first loss with the first optimizer (:data:`DEFAULT_OPTIMIZER` when there are none).

    The ONNX Runtime trainer and the native (eager) runs both take their schedule from here, so
    that they train the same steps."""
    if schedule:
        return [(str(loss), str(opt)) for loss, opt in schedule]
    return [(losses[0], next(iter(optimizers or {}), DEFAULT_OPTIMIZER))]


def node_meta(node: onnx.NodeProto, key: str) -> str | None:
    """The value of a node metadata entry, or None."""
    for prop in node.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def source_line(node: onnx.NodeProto | None) -> str | None:
    """Where a node was written, as ``file:line: code`` (the file relative to the working
    directory), or None when the exporter recorded no source line."""
    text = node_meta(node, SOURCE_KEY) if node is not None else None
    if not text:
        return None
    source = json.loads(text)
    return f"{relative_to_cwd(source['file'])}:{source['line']}: {source.get('code', '')}".rstrip(": ")


def set_node_meta(node: onnx.NodeProto, key: str, value: str) -> None:
    """Set (or replace) a node metadata entry."""
    for prop in node.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    node.metadata_props.add(key=key, value=value)


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or replace) a model-level metadata entry."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename values (initializers, inputs, outputs, node edges) throughout a graph."""
    if not renames:
        return
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for collection in (graph.input, graph.output, graph.value_info):
        for info in collection:
            info.name = renames.get(info.name, info.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                rename_values(attr.g, renames)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    rename_values(sub, renames)


def derived_node(
    op_type: str, inputs: Sequence[str], name: str, names: set[str], like: onnx.NodeProto,
    **attrs: Any,
) -> onnx.NodeProto:
    """A node replacing part of ``like``: named ``name``, writing one fresh value (``name``, or
    ``name_<k>`` where taken; added to ``names``), carrying ``like``'s metadata (scope, source)."""
    out, k = name, 0
    while out in names:
        k += 1
        out = f"{name}_{k}"
    names.add(out)
    node = onnx.helper.make_node(op_type, list(inputs), [out], name=name, **attrs)
    node.metadata_props.extend(like.metadata_props)
    return node


def lowered_from(node: onnx.NodeProto | None) -> onnx.NodeProto | None:
    """The op ``node`` was lowered from (``LOWERED_KEY``), without inputs or outputs; None when
    it was not."""
    text = node_meta(node, LOWERED_KEY) if node is not None else None
    if not text:
        return None
    origin = json.loads(text)
    return onnx.helper.make_node(origin["op_type"], [], [], name=origin.get("name", ""),
                                 **origin.get("attributes", {}))


def shown_op_type(node: onnx.NodeProto | None) -> str:
    """The op a report names for ``node``: the op it was lowered from, or its own."""
    if node is None:
        return ""
    origin = lowered_from(node)
    return origin.op_type if origin is not None else node.op_type


def value_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name defined in a graph (inputs, initializers, node outputs)."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


def rename_outputs(graph: onnx.GraphProto, names: list[str]) -> None:
    """Give the graph's outputs the given names, moving any other value that holds one aside."""
    if len(names) != len(graph.output):
        raise ValueError(f"{len(graph.output)} outputs cannot take {len(names)} names")
    current = [o.name for o in graph.output]
    taken = value_names(graph)
    wanted = set(names)
    renames: dict[str, str] = {}
    for name in sorted(taken & wanted):
        if name in current and names[current.index(name)] == name:
            continue  # already the right output
        new, i = f"{name}__value", 0
        while new in taken or new in wanted:
            i += 1
            new = f"{name}__value{i}"
        renames[name] = new
        taken.add(new)
    rename_values(graph, renames)
    current = [renames.get(n, n) for n in current]
    rename_values(graph, {old: new for old, new in zip(current, names) if old != new})


#: Windowed ops and their attributes that must be positive: ONNX's own shape inference (onnx
#: 1.17) divides by a zero stride and kills the process with SIGFPE instead of raising.
WINDOW_OPS = ("AveragePool", "MaxPool", "LpPool", "Conv", "ConvTranspose", "ConvInteger",
              "QLinearConv", "DeformConv", "Col2Im")
WINDOW_ATTRIBUTES = ("strides", "dilations", "kernel_shape")


def invalid_windows(graph: onnx.GraphProto) -> list[str]:
    """The windowed nodes whose strides, dilations or kernel are not all positive, described
    ("AveragePool 'pool.0' strides [0, 0]"); ONNX forbids them, and native shape inference
    crashes on them, so they are found before any native code sees the graph."""
    found = []
    for node in graph.node:
        if node.op_type not in WINDOW_OPS:
            continue
        for attr in node.attribute:
            if attr.name in WINDOW_ATTRIBUTES and any(v <= 0 for v in attr.ints):
                found.append(f"{node.op_type} {node.name!r} {attr.name} {list(attr.ints)}")
    return found


def weights_as_inputs(
    model: onnx.ModelProto, names: Iterable[str] = (), extra_outputs: Sequence[str] = ()
) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``names`` are typed graph inputs instead,
    and whose outputs include ``extra_outputs``. Those initializers are never copied: a protobuf
    message keeps the memory of what is deleted from it until it is freed itself, so a whole
    copy emptied afterwards would hold the weights as long as it lives."""
    names = set(names)
    out = _without_initializers(model)
    graph = out.graph
    graph.initializer.extend(t for t in model.graph.initializer if t.name not in names)
    declared = {i.name for i in graph.input}
    graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in model.graph.initializer
        if t.name in names and t.name not in declared
    )
    existing = {o.name for o in graph.output}
    for name in extra_outputs:
        if name not in existing:
            graph.output.add(name=name)
            existing.add(name)
    return out


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model``, made part by part: a message's ``CopyFrom`` serializes it whole, which
    fails past protobuf's 2 GB (each tensor stays under it)."""
    return weights_as_inputs(model)


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its initializers, made without ever copying them."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    return out


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Copy every set field of the protobuf message ``source`` into ``target``, except ``skip``."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if isinstance(value, (str, bytes, int, float)):
            setattr(target, descriptor.name, value)
        elif hasattr(value, "CopyFrom"):
            getattr(target, descriptor.name).CopyFrom(value)
        else:  # a repeated field
            getattr(target, descriptor.name).extend(value)


def without_large_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers of more than :data:`SHAPE_VALUE_LIMIT` elements are
    typed graph inputs instead: what shape inference and constant folding need (types; only
    small values can feed a shape), without serializing the weights (DiscoGAN's 66 MB took
    0.34 s a call, and past 2 GB a model cannot be serialized at all)."""
    return weights_as_inputs(model, [t.name for t in large_initializers(model)])


def large_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers of more than :data:`SHAPE_VALUE_LIMIT` elements: weights, not shapes."""
    return [t for t in model.graph.initializer if int(np.prod(t.dims, dtype=np.int64)) > SHAPE_VALUE_LIMIT]


def inferred_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` (its large initializers as typed inputs, see
    :func:`without_large_weights`) with the value types ONNX shape inference finds; inference is
    best effort: on a graph it fails on (or would crash on, see :func:`invalid_windows`), the
    copy as it is."""
    light = without_large_weights(model)
    if invalid_windows(light.graph):
        return light
    try:
        return onnx.shape_inference.infer_shapes(light, data_prop=data_prop)
    except Exception:  # onnx raises several kinds of errors
        return light


def live_nodes(nodes: Sequence[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` (in topological order) without those whose results nothing reads on the way to
    ``outputs``; ONNX ops have no side effects, and ONNX Runtime runs every node it is given."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder a graph's nodes so that every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    consumers: dict[str, list[int]] = {}
    missing: dict[int, int] = {}
    for index, node in enumerate(pending):
        needs = {name for name in node.input if name not in available}
        missing[index] = len(needs)
        for name in needs:
            consumers.setdefault(name, []).append(index)
    ready = [i for i, count in missing.items() if count == 0]
    while ready:
        index = ready.pop(0)
        node = pending[index]
        ordered.append(node)
        for name in node.output:
            for consumer in consumers.pop(name, []):
                missing[consumer] -= 1
                if missing[consumer] == 0:
                    ready.append(consumer)
    if len(ordered) != len(pending):
        raise ValueError("the graph has a cycle or an input nobody produces")
    del graph.node[:]
    graph.node.extend(ordered)


def remove_dead_nodes(graph: onnx.GraphProto, keep: Iterable[str] = ()) -> None:
    """Drop nodes none of whose outputs is used (by another node, as a graph output or in
    ``keep``)."""
    keep = set(keep)
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output} | keep
        alive = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(alive) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(alive)
