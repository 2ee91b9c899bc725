"""Running LossGraphs on ONNX Runtime.

Parameters and buffers are fed, not baked in: :func:`~lossgraph.graph.weights_as_inputs` turns the initializers named
by the caller into graph inputs, so the same session serves every training step and the
candidate can receive the reference's weights. Extra outputs ("taps") expose intermediate values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from lossgraph.errors import GraphLoadError, UnsupportedOpError, VerificationError
from lossgraph.graph import (
    copy_model,
    large_initializers,
    live_nodes,
    over_protobuf_limit,
    weights_as_inputs,
)
from lossgraph.runtime.conv_transpose import lower_conv_transposes
from lossgraph.runtime.float64 import lower_float64
from lossgraph.runtime.nchwc import lower_convs
from lossgraph.runtime.types import ValueType, open_values, static_types

DEVICES = ("cpu", "cuda")
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
#: ONNX Runtime graph optimizers that compute wrong results. onnxruntime 1.32's
#: MatmulTransposeFusion folds a Transpose into the MatMul after it and then multiplies a 1-D
#: second operand wrongly (``W.t() @ v``, ``torch.mv(W.t(), u)``: a spectral norm's power
#: iteration, and the gradients of matrix-vector products; 0.45 off on a 3x4 matrix of values in
#: [0, 1]). Its own transpose optimizer moves Transposes next to MatMuls, so no rewrite of the
#: graph's own Transpose -> MatMul pairs keeps it away.
DISABLED_OPTIMIZERS = ["MatmulTransposeFusion"]
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def check_device(device: str) -> list[str]:
    """Return the ORT providers for a device, or explain why it is not available."""
    if device not in DEVICES:
        raise VerificationError(f"Unknown device {device!r}; use one of {', '.join(DEVICES)}.")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise VerificationError(
            f"--device cuda needs ONNX Runtime's CUDAExecutionProvider, but onnxruntime "
            f"{ort.__version__} here offers only {', '.join(available)}; install onnxruntime-gpu "
            f"on a machine with an NVIDIA GPU."
        )
    return PROVIDERS[device]


def check_ops(model: onnx.ModelProto) -> None:
    """Raise UnsupportedOpError naming every op ONNX does not define (custom domains included)."""
    local = {(f.domain, f.name) for f in model.functions}
    unknown = sorted(
        {
            f"{n.domain + '::' if n.domain else ''}{n.op_type}"
            for n in model.graph.node
            if (n.domain, n.op_type) not in local and not _is_known_op(n)
        }
    )
    if unknown:
        raise UnsupportedOpError(
            f"The graph uses op(s) that ONNX Runtime cannot run: {', '.join(unknown)}."
        )


def _is_known_op(node: onnx.NodeProto) -> bool:
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    if domain == "com.microsoft":
        return True  # ORT's contrib ops; a missing kernel surfaces when the session is built
    return onnx.defs.has(node.op_type, domain)


def lower_for_cpu(
    model: onnx.ModelProto, col2im: bool = True, nchwc: bool = True
) -> tuple[onnx.ModelProto, int, int]:
    """``model`` with the CPU session's rewrites, as asked: ConvTransposes with few positions per
    image as Gemm + Col2Im (lossgraph.runtime.conv_transpose), then Convs on the NCHWc kernels
    (lossgraph.runtime.nchwc); and how many nodes each rewrote. One type inference serves both:
    the first rewrite keeps every existing value's name and type, and the second reads only
    those (the Convs' inputs, outputs and weights)."""
    types = None
    if (col2im or nchwc) and any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node):
        types = static_types(model)
    conv_transposes = convs = 0
    if col2im:
        model, conv_transposes = lower_conv_transposes(model, types=types)
    if nchwc:
        model, convs = lower_convs(model, types=types)
    return model, conv_transposes, convs


def reshapes_as_views(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, tuple[str, np.ndarray]]]:
    """``model`` with each graph output that a Reshape computes (through Identities, from a
    constant shape) replaced by that Reshape's input, and for each such output the value the
    session now returns in its place and the Reshape's shape, to apply in numpy (a view).

    ONNX Runtime copies where a Reshape writes a graph output: a weight gradient (a GEMM's
    [O, I*kh*kw] product reshaped to the weight's shape) was copied on every run, 1 ms for
    each of DiscoGAN's 512x256x4x4 kernels. The model comes back as it is where no output
    qualifies."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output if o}
    constants = {t.name: t for t in graph.initializer}
    constants.update({
        n.output[0]: n.attribute[0].t for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    })
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    views: dict[str, tuple[str, np.ndarray]] = {}
    for output in graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        if node.input[1] not in constants or node.input[0] in sources:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if allowzero:
            continue  # numpy reads a 0 as "copy the dimension" only where allowzero is 0
        views[output.name] = (node.input[0], onnx.numpy_helper.to_array(constants[node.input[1]]))
    if not views:
        return model, {}
    out = copy_model(model)
    kept: dict[str, onnx.ValueInfoProto] = {}
    for output in out.graph.output:
        name = views[output.name][0] if output.name in views else output.name
        if name not in kept:
            kept[name] = onnx.ValueInfoProto(name=name)
            if output.name not in views:  # an output kept as it is keeps its declared type
                kept[name].CopyFrom(output)
    del out.graph.output[:]
    out.graph.output.extend(kept.values())
    live = live_nodes(list(out.graph.node), set(kept))
    del out.graph.node[:]
    out.graph.node.extend(live)
    return out, views


def _as_view(value: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """ONNX Reshape (allowzero 0) of ``value`` in numpy: a 0 keeps the input's dimension."""
    dims = [value.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
    return value.reshape(dims)


class OrtRunner:
    """One ONNX Runtime session over a prepared model.

    ``fed`` names the initializers that become inputs (parameters, buffers, optimizer state).
    On the CPU, ConvTransposes with few positions per image run as one GEMM and a Col2Im
    (``col2im``, see lossgraph.runtime.conv_transpose) and Convs on ONNX Runtime's NCHWc
    kernels where those apply (``nchwc``).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        fed: Iterable[str] = (),
        extra_outputs: Sequence[str] = (),
        device: str = "cpu",
        opt_level: str = "extended",
        arena: bool = True,
        nchwc: bool = True,
        views: bool = True,
        col2im: bool = True,
    ) -> None:
        providers = check_device(device)
        check_ops(model)
        fed = set(fed)
        #: initializers this session feeds itself: those of a graph too large to serialize
        self.constants: dict[str, np.ndarray] = {}
        if over_protobuf_limit(model):
            self.constants = {
                t.name: numpy_helper.to_array(t) for t in large_initializers(model) if t.name not in fed
            }
        prepared = weights_as_inputs(model, fed | set(self.constants), extra_outputs)
        # float64 convolutions a noise-floor graph kept whole for its gradients (to_float64's defer)
        prepared = lower_float64(prepared)
        #: how many ConvTransposes run as Gemm + Col2Im (see lossgraph.runtime.conv_transpose) and
        #: how many Convs on ORT's blocked-layout kernels (see lossgraph.runtime.nchwc)
        self.col2im_conv_transposes = self.nchwc_convs = 0
        if device == "cpu":
            prepared, self.col2im_conv_transposes, self.nchwc_convs = lower_for_cpu(prepared, col2im, nchwc)
        #: graph outputs computed by a Reshape: (the value the session returns, the shape)
        self.views: dict[str, tuple[str, np.ndarray]] = {}
        if views:
            prepared, self.views = reshapes_as_views(prepared)
        options = ort.SessionOptions()
        options.graph_optimization_level = OPT_LEVELS[opt_level]
        options.log_severity_level = 3
        # without the arena, memory goes back after each run (idle sessions do not each hold
        # their peak); the arena is ~20% faster, so it is the default
        options.enable_cpu_mem_arena = arena
        self.arena = arena
        try:
            self.session = ort.InferenceSession(
                prepared.SerializeToString(), options, providers=providers,
                disabled_optimizers=DISABLED_OPTIMIZERS,
            )
        except Exception as exc:
            raise _session_error(exc) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in model.graph.output]
        self.output_names += [n for n in extra_outputs if n not in self.output_names]
        self.device = device

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run with every graph input fed; return the requested outputs (all by default)."""
        feeds = {**feeds, **self.constants} if self.constants else feeds
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise VerificationError(f"No value given for graph input(s): {', '.join(missing)}.")
        names = list(outputs) if outputs is not None else self.output_names
        feed = {n: feeds[n] for n in self.input_names}
        fetched = list(dict.fromkeys(self.views[n][0] if n in self.views else n for n in names))
        try:
            values = dict(zip(fetched, self.session.run(fetched, feed)))
        except Exception as exc:
            raise GraphLoadError(f"ONNX Runtime failed: {_first_line(exc)}") from None
        if self.arena:
            # an output is a view of the session's memory: from the arena, one kept after the
            # session is gone held the whole arena (a DiscoGAN step kept for the localization,
            # 330 MB of values, held 1.7 GB); a copy lets the arena go with the session
            values = {name: np.array(value) for name, value in values.items()}
        return {
            n: _as_view(values[self.views[n][0]], self.views[n][1]) if n in self.views else values[n]
            for n in names
        }


def infer_types(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None
) -> dict[str, ValueType]:
    """Element type and static shape of the values of the main graph.

    ``feeds`` (inputs by name) lets lossgraph measure shapes that inference and folding
    (:func:`~lossgraph.runtime.types.static_types`) leave open, by running the graph once;
    without them such values are left out (a rule that needs one says so)."""
    types = static_types(model)
    missing = open_values(model, types)
    if missing and feeds is not None:
        types.update(_measure(model, missing, feeds))
    return types


def _measure(
    model: onnx.ModelProto, names: list[str], feeds: Mapping[str, np.ndarray] | None
) -> dict[str, ValueType]:
    runner = OrtRunner(model, extra_outputs=names, opt_level="disable", nchwc=False)
    values = runner.run(feeds, outputs=names)
    return {
        name: ValueType(
            onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), tuple(np.shape(v))
        )
        for name, v in values.items()
    }


def _session_error(exc: Exception) -> Exception:
    text = _first_line(exc)
    match = re.search(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'", text)
    if match:
        return UnsupportedOpError(
            f"ONNX Runtime has no kernel for op {match.group(1)} (opset {match.group(2)}) at node "
            f"{match.group(3)!r} with these input types."
        )
    return GraphLoadError(f"ONNX Runtime could not load the graph: {text}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
