"""ConvTransposes with fed weights and few positions per image as one GEMM and a Col2Im.

ONNX Runtime's CPU ConvTranspose computes each image on its own: a GEMM ``W^T [Co*kh*kw, Ci] @
x_n [Ci, H*W]`` and a col2im that adds the columns into the output. It reads the weight
transposed, and its GEMM packs a transposed operand afresh on every call; it transposes the
weight once, at load time, only where the weight is a constant, which lossgraph's fed weights
never are (the same session serves every step and both sides' weights, and a backward graph's
dX of a strided Conv is a ConvTranspose of the forward weight). Where an image has few positions
(a small feature map over many channels) that packing, done once per image, costs more than the
products: DiscoGAN's 4x4 decoder inputs and the dX of its discriminator's last strided Conv.

:func:`lower_conv_transposes` rewrites such nodes as one ``Gemm`` over all images (``transA``:
the weight is packed once), a ``Transpose`` of its ``[Co*kh*kw, N, H*W]`` result to
``[N, Co*kh*kw, H*W]``, and ONNX's ``Col2Im`` (opset 18), which adds the columns into the image
as the ConvTranspose kernel does; the bias, if any, is added after. The products and their order
of summation are those of the ConvTranspose kernel (the same GEMM over the input channels, the
same col2im); every case measured here came out bit-identical, and the tests hold the two to
1e-5 (tests/test_conv_transpose.py). Like :mod:`lossgraph.runtime.nchwc`, this exists only
in the session: the graphs lossgraph writes, exports and differentiates keep their ConvTransposes.

A node is rewritten where the batch has at least two images and each image has at most half as
many positions as input channels (:func:`_faster`). Measured with fed weights on this 2-core
AVX-512 machine (benchmarks/conv_transpose.py, ConvTranspose time over the rewrite's): DiscoGAN's
[4, 512, 4, 4] -> 256 channels (4x4, stride 2) 1.46, [4, 256, 8, 8] -> 128 1.01,
[4, 128, 16, 16] -> 64 0.64; ResNet-18's dX of layer4.0 1.06 (3x3) and 1.24 (1x1), of layer3.0
0.70. Inside DiscoGAN's training step (per-node minima under the profiler) the ConvTransposes
take 95 -> 79 ms (gen_loss) and 77 -> 67 ms (dis_loss); paired wall-clock runs put the step
0.3-7% faster; ResNet-18's is unchanged. The rest stay as they are: grouped, not 2-D, not
float32, ``auto_pad`` or ``output_shape``, shapes not static, or a graph below opset 18 (the one
that has ``Col2Im``; PaddlePaddle's exports are opset 17).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from lossgraph.graph import copy_model
from lossgraph.runtime.rewrite import NodeWriter

#: the first default-domain opset with Col2Im
COL2IM_OPSET = 18


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _expressible(node: onnx.NodeProto, types) -> bool:
    """The rewrite can express ``node``: a 2-D, float32, ungrouped ConvTranspose with static shapes
    and explicit pads."""
    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx"):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1 or "output_shape" in attrs:
        return False
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    x, w, y = (types.get(name) for name in (node.input[0], node.input[1], node.output[0]))
    if x is None or w is None or y is None or x.elem_type != TensorProto.FLOAT:
        return False
    return len(x.shape) == 4 and len(w.shape) == 4 and len(y.shape) == 4


def _faster(node: onnx.NodeProto, types) -> bool:
    """Per image, the packing of the transposed weight outweighs the products: at least two
    images, each with at most half as many positions as input channels."""
    batch, in_channels, height, width = types[node.input[0]].shape
    return batch >= 2 and 2 * height * width <= in_channels


class _Rewrite(NodeWriter):
    def conv_transpose(self, node: onnx.NodeProto, types) -> None:
        """``node`` as Gemm (all images, weight transposed once) + Transpose + Col2Im (+ bias)."""
        base = f"{node.name or node.output[0]}/col2im"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        batch, in_channels, height, width = types[node.input[0]].shape
        _, out_channels, kh, kw = types[node.input[1]].shape
        out_spatial = types[node.output[0]].shape[2:]
        rows, positions = out_channels * kh * kw, height * width
        weight = self.op("Reshape", [node.input[1], self.ints(f"{base}/w_shape", [in_channels, rows])], f"{base}/w")
        x = self.op("Transpose", [node.input[0]], f"{base}/x_by_channel", perm=[1, 0, 2, 3])
        x = self.op("Reshape", [x, self.ints(f"{base}/x_shape", [in_channels, batch * positions])], f"{base}/x")
        cols = self.op("Gemm", [weight, x], f"{base}/cols", transA=1)
        cols = self.op("Reshape", [cols, self.ints(f"{base}/cols_shape", [rows, batch, positions])], f"{base}/cols_3d")
        cols = self.op("Transpose", [cols], f"{base}/cols_by_image", perm=[1, 0, 2])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        image = self.op(
            "Col2Im",
            [cols, self.ints(f"{base}/image_shape", out_spatial), self.ints(f"{base}/block_shape", [kh, kw])],
            f"{base}/image",
            out=None if has_bias else node.output[0],
            pads=list(attrs.get("pads", [0, 0, 0, 0])),
            strides=list(attrs.get("strides", [1, 1])),
            dilations=list(attrs.get("dilations", [1, 1])),
        )
        if has_bias:
            bias = self.op("Reshape", [node.input[2], self.ints(f"{base}/b_shape", [1, out_channels, 1, 1])], f"{base}/b")
            self.op("Add", [image, bias], f"{base}/biased", out=node.output[0])


def lower_conv_transposes(
    model: onnx.ModelProto, every: bool = False, types=None
) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose ConvTransposes with few positions per image (``every``: all that
    the rewrite can express; benchmarks measure both sides of the choice) run as Gemm + Col2Im,
    and how many they are. The model comes back as it is (no copy) where there is nothing to
    rewrite."""
    from lossgraph.runtime.types import static_types

    if _default_opset(model) < COL2IM_OPSET or not any(n.op_type == "ConvTranspose" for n in model.graph.node):
        return model, 0
    types = static_types(model) if types is None else types
    chosen = [
        _expressible(node, types) and (every or _faster(node, types)) for node in model.graph.node
    ]
    if not any(chosen):
        return model, 0
    out = copy_model(model)
    rewrite = _Rewrite(out.graph)
    for node, lower in zip(model.graph.node, chosen):
        if lower:
            rewrite.conv_transpose(node, types)
        else:
            rewrite.nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(rewrite.nodes)
    out.graph.initializer.extend(rewrite.constants)
    return out, sum(chosen)
