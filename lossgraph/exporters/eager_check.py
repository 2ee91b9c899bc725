"""Where an exported graph and its framework's eager run part, when the export check fails.

The eager run keeps every submodule's output under its tap name (``path#call[.output]``, see
:mod:`lossgraph.exporters.taps`); the graph computes the same values at its tap Identities. The
first tap, in the order the eager run called the modules, whose values differ beyond the export
check's bound is where the two part. Known kernel quirks that make a faithful graph differ from
eager are named when the values show them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from lossgraph.graph import TAP_KEY, LossGraph, live_nodes, node_meta

#: Paddle's CPU softmax kernel (and the softmax inside ``cross_entropy``) computes
#: ``exp(max(x - max(x), -64))``: a class whose score lies more than 64 below the row's largest
#: gets probability e^-64 instead of about 0, so ``-log p`` is capped at 64. ONNX Runtime does
#: not clip; the exported graph is faithful to the op, not to this kernel.
PADDLE_SOFTMAX_CLIP = 64.0
#: Softmax-like ops and the attribute naming their class axis (None: axis 1).
SOFTMAX_OPS = {"Softmax": "axis", "LogSoftmax": "axis", "SoftmaxCrossEntropyLoss": None}


def tap_label(name: str) -> str:
    """``layer1.0.conv1#0`` -> "`layer1.0.conv1`"; later calls and outputs say so."""
    path, _, rest = name.partition("#")
    call, _, output = rest.partition(".")
    extra = [f"call {call}"] if call not in ("", "0") else []
    extra += [f"output {output}"] if output else []
    return f"`{path}`" + (f" ({', '.join(extra)})" if extra else "")


def where_they_part(
    graph: LossGraph,
    feeds: Mapping[str, np.ndarray],
    eager_taps: Mapping[str, np.ndarray],
    output: str,
    bound: float,
) -> tuple[str, str]:
    """``(where, quirk)``: where names the first module output at which ONNX Runtime's value
    differs from eager's by more than ``bound`` relative to the values' scale (or says that all
    agree, so the graphs part in the loss function after them); quirk names a known kernel
    quirk that explains the difference at that point ("" for none)."""
    from lossgraph.runtime.session import OrtRunner

    nodes = graph.model.graph.node
    taps = {node_meta(n, TAP_KEY): n.output[0] for n in nodes if node_meta(n, TAP_KEY)}
    names = [name for name in eager_taps if name in taps]
    softmax = [n for n in nodes if n.op_type in SOFTMAX_OPS] if graph.framework == "paddle" else []
    runner = OrtRunner(graph.model, extra_outputs=[taps[n] for n in names] + [n.input[0] for n in softmax])
    values = runner.run(feeds, outputs=[taps[n] for n in names] + [n.input[0] for n in softmax])
    first = None
    for index, name in enumerate(names):
        eager = np.asarray(eager_taps[name], np.float64)
        got = np.asarray(values[taps[name]], np.float64)
        if eager.shape != got.shape:
            first = (name, f"shapes {list(got.shape)} vs eager {list(eager.shape)}", index)
            break
        if not eager.size:
            continue
        diff = float(np.max(np.abs(got - eager)))
        scale = float(np.max(np.abs(eager)))
        if not diff <= bound * max(1.0, scale):  # NaN parts too
            first = (name, f"max |diff| {diff:.3g}, values up to {scale:.3g}", index)
            break
    if first is not None:
        name, size, index = first
        text = (f"eager and ONNX Runtime first part at the output of {tap_label(name)} ({size}); "
                f"the {index} module output(s) computed before it agree")
        end = taps[name]
    elif names:
        text = (f"all {len(names)} module outputs agree, so they part after the last module, in "
                f"the loss function")
        end = output
    else:
        text, end = "", output
    return text, _paddle_softmax_clip(graph.model.graph, softmax, values, end)


def _paddle_softmax_clip(
    graph: onnx.GraphProto, softmax: list[onnx.NodeProto], values: Mapping[str, np.ndarray], end: str
) -> str:
    """Paddle's softmax clip, where a softmax on the way to ``end`` has scores spread by more
    than 64 along its class axis."""
    upstream = {o for n in live_nodes(graph.node, {end}) for o in n.output}
    for node in softmax:
        if node.output[0] not in upstream:
            continue
        scores = np.asarray(values[node.input[0]], np.float64)
        key = SOFTMAX_OPS[node.op_type]
        axis = next((a.i for a in node.attribute if a.name == key), -1) if key else 1
        if scores.ndim == 0 or scores.size == 0:
            continue
        spread = float(np.max(np.max(scores, axis=axis) - np.min(scores, axis=axis)))
        if spread > PADDLE_SOFTMAX_CLIP:
            return (
                f"a known Paddle kernel quirk, not a mistranslation: Paddle's CPU softmax and cross_entropy clip "
                f"x - max(x) at -{PADDLE_SOFTMAX_CLIP:g} (so -log p at {PADDLE_SOFTMAX_CLIP:g}) "
                f"and ONNX Runtime does not, and the scores of {node.op_type} "
                f"{node.name!r} spread by up to {spread:.3g} here (give the model scores that "
                f"spread less, by its init or input ranges, so both compute the same)"
            )
    return ""
