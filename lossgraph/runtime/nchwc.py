"""Convolutions with fed weights on ONNX Runtime's blocked-layout (NCHWc) CPU kernels.

ONNX Runtime has two CPU convolutions: im2col + SGEMM for any Conv, and direct kernels over a
channel-blocked layout (NCHWc: channels in blocks of 16 with AVX-512, 8 with AVX2), 1.3-2x faster
on ResNet-sized layers. Its graph optimizer uses the second only where the weight is a constant,
because it reorders the weight once, at load time. lossgraph feeds every weight (the same
session serves every step and both sides' weights), and a backward graph computes the weights of
its dX convolutions, so none of them qualifies.

:func:`lower_convs` rewrites such Convs to ONNX Runtime's own NCHWc ops (domain
``com.microsoft.nchwc``) with the weight reordered inside the graph, on every run, by the same
``ReorderInput`` kernel that reorders activations: the weight is viewed twice as a 4-D tensor
whose "channels" are the block being moved innermost. The ONNX graphs lossgraph writes, exports
and differentiates never contain these ops; they exist only in the session.

A convolution stays as it is where the kernels do not apply: not 2-D, float64, grouped, shapes not
static, ``auto_pad``, input channels at or above the block size that are not a multiple of 4 (the
reorder kernel's limit), a kernel larger than its output (the correlation form of a weight
gradient, where the direct kernel is 3x slower than im2col), or too few output positions to pay
for reordering the weight (:data:`MIN_POSITIONS`).

The dX convolution of a unit-stride Conv reads the weight flipped and in/out exchanged, which the
autodiff writes as a Transpose and a MatMul by the exchange matrix (standard ONNX). Lowered, its
blocked weight is built from the forward convolution's instead, by whole block x block tiles
(16x16 with AVX-512, 8x8 with AVX2; :meth:`_Lowering.flipped_weight`), and the flip, no longer
read, is dropped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lossgraph.graph import copy_model, live_nodes
from lossgraph.runtime.rewrite import NodeWriter

DOMAIN = "com.microsoft.nchwc"

#: Output positions (batch x output height x width) below which a Conv stays on im2col: the weight
#: is reordered on every run, and with few positions to use it at that costs more than the faster
#: kernel saves. Measured with fed weights (one conv per session, 2-core AVX-512 Xeon): 64
#: positions 1.4-2.5x slower, 128 1.4x, 256 1.00-1.06x, 392 0.85x, 1024 and up 0.6-0.75x.
MIN_POSITIONS = 320


@functools.cache
def block_size() -> int:
    """ONNX Runtime's NCHWc channel block on this CPU, or 0 where its build has no NCHWc kernels."""
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("ReorderInput", ["x"], ["y"], domain=DOMAIN)],
        "block_size",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    )
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        (out,) = session.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})
    except Exception:  # a build without the contrib ops (minimal builds): plain kernels
        return 0
    block = int(out.shape[1])
    return block if block > 1 else 0


@dataclass(frozen=True)
class _Conv:
    """The static geometry of one Conv the NCHWc kernels take."""

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    block: int

    @property
    def padded_out(self) -> int:
        return _round_up(self.out_channels, self.block)

    @property
    def nchw_input(self) -> bool:
        """Fewer input channels than a block: the kernel reads NCHW input (an image's RGB)."""
        return self.in_channels < self.block

    @property
    def padded_in(self) -> int:
        return self.in_channels if self.nchw_input else _round_up(self.in_channels, self.block)


def _round_up(count: int, block: int) -> int:
    return -(-count // block) * block


def _plan(node: onnx.NodeProto, types, block: int) -> _Conv | None:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    x, w, y = (types.get(name) for name in (node.input[0], node.input[1], node.output[0]))
    if x is None or w is None or y is None or x.elem_type != TensorProto.FLOAT:
        return None
    if len(x.shape) != 4 or len(w.shape) != 4 or len(y.shape) != 4:
        return None
    out_channels, in_channels, kh, kw = w.shape
    if kh > y.shape[2] or kw > y.shape[3] or y.shape[0] * y.shape[2] * y.shape[3] < MIN_POSITIONS:
        return None
    if in_channels >= block and in_channels % 4:
        return None
    return _Conv(out_channels, in_channels, (kh, kw), block)


def _constant(node: onnx.NodeProto | None) -> np.ndarray | None:
    if node is None or node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: a for a in node.attribute}
    return numpy_helper.to_array(attrs["value"].t) if "value" in attrs else None


def _flipped_source(weight: str, producers, types) -> str | None:
    """The OIHW weight W whose spatially flipped, in/out-exchanged copy ``weight`` is, where it is
    computed as lossgraph's autodiff computes the weight of a unit-stride dX convolution
    (``lossgraph.autodiff.rules.nn._input_grad_by_conv``, group 1): Reshape(W, [1, O, I, K]),
    Transpose [0, 2, 1, 3], MatMul by the K x K exchange matrix, Reshape to [I, O, kh, kw]."""
    node = producers.get(weight)
    chain = []
    for op_type in ("Reshape", "MatMul", "Transpose", "Reshape"):
        if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
            return None
        chain.append(node)
        node = producers.get(node.input[0])
    shaped, flip, swap, grouped = chain
    source = grouped.input[0]
    w_type, out_type = types.get(source), types.get(weight)
    if w_type is None or out_type is None or len(w_type.shape) != 4:
        return None
    o, i, kh, kw = w_type.shape
    taps = kh * kw
    perm = [helper.get_attribute_value(a) for a in swap.attribute if a.name == "perm"]
    exchange = _constant(producers.get(flip.input[1]))
    view = _constant(producers.get(grouped.input[1]))
    if perm != [[0, 2, 1, 3]] or view is None or list(view) != [1, o, i, taps]:
        return None
    if exchange is None or not np.array_equal(exchange, np.eye(taps)[::-1]):
        return None
    return source if list(out_type.shape) == [i, o, kh, kw] else None


class _Lowering(NodeWriter):
    def __init__(self, graph: onnx.GraphProto, block: int, types=None) -> None:
        super().__init__(graph)
        self.block = block
        self.types = types or {}
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self.reordered: dict[tuple[str, str], str] = {}

    def reorder(self, value: str, base: str) -> str:
        """``value`` (NCHW) in NCHWc, once however many convolutions read it."""
        key = (value, "input")
        if key not in self.reordered:
            self.reordered[key] = self.op("ReorderInput", [value], f"{base}/x", DOMAIN)
        return self.reordered[key]

    def weight(self, value: str, conv: _Conv, base: str) -> str:
        """``value`` (OIHW) in the kernel's blocked order: OIHWBiBo, or OIHWBo for NCHW input.

        OIHWBiBo is [O/B, I/B, kh, kw, Bi, Bo] in memory. Two ReorderInputs build it, each
        moving one within-block index innermost: first Bi (viewing the weight as
        [O*I/B, B, kh*kw, 1]), then Bo (viewing the result as [O/B, B, I*kh*kw, 1])."""
        key = (value, "weight")
        if key in self.reordered:
            return self.reordered[key]
        source = _flipped_source(value, self.producers, self.types)
        if source is not None and conv.padded_out == conv.out_channels >= self.block:
            if conv.padded_in == conv.in_channels >= self.block:
                self.reordered[key] = self.flipped_weight(source, conv, base)
                return self.reordered[key]
        b, (kh, kw) = self.block, conv.kernel
        o, i = conv.padded_out, conv.padded_in
        if (o, i) != (conv.out_channels, conv.in_channels):
            pads = [0, 0, 0, 0, o - conv.out_channels, i - conv.in_channels, 0, 0]
            value = self.op("Pad", [value, self.ints(f"{base}/w_pads", pads)], f"{base}/w_padded")
        if not conv.nchw_input:
            shape = self.ints(f"{base}/w_by_bi", [o * i // b, b, kh * kw, 1])
            value = self.op("Reshape", [value, shape], f"{base}/w_by_bi")
            value = self.op("ReorderInput", [value], f"{base}/w_bi_inner", DOMAIN)
        shape = self.ints(f"{base}/w_by_bo", [o // b, b, i * kh * kw, 1])
        value = self.op("Reshape", [value, shape], f"{base}/w_by_bo")
        value = self.op("ReorderInput", [value], f"{base}/w_bo_inner", DOMAIN)
        value = self.op("Reshape", [value, self.ints(f"{base}/w_shape", [o, i, kh, kw])], f"{base}/w")
        self.reordered[key] = value
        return value

    def flipped_weight(self, source: str, conv: _Conv, base: str) -> str:
        """The blocked weight of a dX convolution, built from the blocked weight of the forward
        one: with W's OIHWBiBo [O/B, I/B, K, Bi, Bo] (shared with the forward convolution, which
        reads the same W), the flipped, exchanged copy's OIHWBiBo is [I/B, O/B, K reversed, Bo,
        Bi]. One ReorderInput swaps Bi and Bo in each B x B tile (viewing the weight as
        [O*I*K/B^2, B, B, 1]); one Gather of whole tiles swaps the block indices and reverses the
        taps. Measured on a 512x512x3x3 kernel (per-node profile): 1.3 ms for the tile swap and
        1.0 ms for the Gather, against 3.4 ms for the Transpose, 0.9 ms for the MatMul and 1.7 ms
        for the two ReorderInputs of the flip as written (ORT's Transpose copies element by
        element where the innermost axis moves; ReorderInput is vectorized). ResNet-18's
        training step: 1.5% faster (40 interleaved rounds)."""
        b, (kh, kw) = self.block, conv.kernel
        i, o, taps = conv.out_channels, conv.in_channels, kh * kw
        forward = _Conv(o, i, conv.kernel, b)
        tiles = self.weight(source, forward, f"{base}/forward")
        value = self.op("Reshape", [tiles, self.ints(f"{base}/w_by_tile", [o * i * taps // (b * b), b, b, 1])],
                        f"{base}/w_by_tile")
        value = self.op("ReorderInput", [value], f"{base}/w_tiles_swapped", DOMAIN)
        value = self.op("Reshape", [value, self.ints(f"{base}/w_tiles", [o * i * taps // (b * b), b * b])],
                        f"{base}/w_tiles")
        ob, ib = o // b, i // b
        order = (np.arange(ob)[None, :, None] * ib + np.arange(ib)[:, None, None]) * taps
        order = (order + np.arange(taps)[::-1][None, None, :]).reshape(-1)
        name = self.name(f"{base}/w_tile_order")
        self.constants.append(numpy_helper.from_array(order.astype(np.int64), name))
        value = self.op("Gather", [value, name], f"{base}/w_flipped", axis=0)
        return self.op("Reshape", [value, self.ints(f"{base}/w_shape", [i, o, kh, kw])], f"{base}/w")

    def conv(self, node: onnx.NodeProto, conv: _Conv) -> None:
        base = f"{node.name or node.output[0]}/nchwc"
        x = node.input[0] if conv.nchw_input else self.reorder(node.input[0], base)
        inputs = [x, self.weight(node.input[1], conv, base)]
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if conv.padded_out != conv.out_channels:
                pads = self.ints(f"{base}/b_pads", [0, conv.padded_out - conv.out_channels])
                bias = self.op("Pad", [bias, pads], f"{base}/b")
            inputs.append(bias)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.pop("auto_pad", None)
        attrs["kernel_shape"] = list(conv.kernel)
        blocked = self.name(f"{base}/y")
        self.nodes.append(
            helper.make_node("Conv", inputs, [blocked], name=node.name or blocked, domain=DOMAIN, **attrs)
        )
        self.nodes.append(
            helper.make_node(
                "ReorderOutput", [blocked], [node.output[0]], name=self.name(f"{base}/out"),
                domain=DOMAIN, channels=conv.out_channels,
            )
        )


def lower_convs(model: onnx.ModelProto, types=None) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose eligible Convs run on the NCHWc kernels, and how many they are.

    The model comes back as it is (no copy) where there is nothing to lower or this build of
    ONNX Runtime has no NCHWc kernels."""
    from lossgraph.runtime.types import static_types

    block = block_size()
    if not block or not any(n.op_type == "Conv" for n in model.graph.node):
        return model, 0
    types = static_types(model) if types is None else types
    plans = [_plan(node, types, block) for node in model.graph.node]
    count = sum(p is not None for p in plans)
    if not count:
        return model, 0
    out = copy_model(model)
    lowering = _Lowering(out.graph, block, types)
    for node, plan in zip(model.graph.node, plans):
        if plan is None:
            lowering.nodes.append(node)
        else:
            lowering.conv(node, plan)
    del out.graph.node[:]
    out.graph.node.extend(live_nodes(lowering.nodes, {o.name for o in out.graph.output}))
    out.graph.initializer.extend(lowering.constants)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out, count
