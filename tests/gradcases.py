"""The table of per-op gradient cases: one ONNX node each, checked against torch autograd and
float64 finite differences by ``test_grad_rules.py``.

A case names the op, its attributes, its inputs (shape and domain, kept away from kinks, or a
fixed constant for axes/shapes/indices) and a torch reference of the node's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Arg:
    """One input of the node: a float tensor drawn from [low, high) (differentiated unless
    ``diff=False``), or a constant (``value``) such as axes, shapes or indices."""

    shape: tuple[int, ...] = ()
    low: float = -1.0
    high: float = 1.0
    value: Any = None
    diff: bool = True
    away: float = 0.0  # keep |x - kink| >= away (kinks at 0 unless ``kink`` given)
    kink: float = 0.0

    @property
    def constant(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Case:
    op: str
    args: tuple[Arg, ...]
    torch_fn: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    opset: int = 17
    name: str = ""
    float_outputs: tuple[int, ...] = (0,)  # outputs that enter the test loss

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op


def A(*shape, **kw) -> Arg:  # noqa: N802 - short constructor for a readable table
    return Arg(tuple(shape), **kw)


def C(value, dtype=np.int64) -> Arg:  # noqa: N802
    return Arg(value=np.asarray(value, dtype=dtype), diff=False)


POS = {"low": 0.5, "high": 2.0}
AWAY = {"away": 0.1}


def _bn_infer(x, s, b, m, v, eps=1e-5):
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - m.view(shape)) / torch.sqrt(v.view(shape) + eps) * s.view(shape) + b.view(shape)


def _bn_train(x, s, b, eps=1e-5):
    axes = [0, *range(2, x.dim())]
    mean = x.mean(axes, keepdim=True)
    var = ((x - mean) ** 2).mean(axes, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + eps) * s.view(shape) + b.view(shape)


def _pad_ref(x, pads, mode):
    n = x.dim()
    before, after = pads[:n], pads[n:]
    torch_pads = []
    for axis in reversed(range(n)):
        torch_pads += [before[axis], after[axis]]
    if mode == "constant":
        return F.pad(x, torch_pads)
    # torch pads reflect/replicate only on trailing dims of batched input
    return F.pad(x, torch_pads[: 2 * (n - 2)], mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _gather_nd(x, idx):
    return x[tuple(torch.as_tensor(idx).T.tolist())]


def _scatter_elements(data, updates, idx, axis, reduction):
    index = torch.as_tensor(idx)
    if reduction == "add":
        return data.scatter_add(axis, index, updates)
    return data.scatter(axis, index, updates)


def _nll(logp, target, weight=None, reduction="mean", ignore_index=-100):
    return F.nll_loss(logp, torch.as_tensor(target), weight=weight, reduction=reduction,
                      ignore_index=ignore_index)


CASES: list[Case] = [
    # --- einsum -------------------------------------------------------------------------------
    Case("Einsum", (A(2, 3), A(3, 4)), lambda a, b: torch.einsum("ij,jk->ik", a, b),
         {"equation": "ij,jk->ik"}, name="matmul"),
    Case("Einsum", (A(2, 2, 3), A(2, 3, 4)), lambda a, b: torch.einsum("bij,bjk->bki", a, b),
         {"equation": "bij,bjk->bki"}, name="batched-transposed"),
    Case("Einsum", (A(3), A(4)), lambda a, b: torch.einsum("i,j->ij", a, b),
         {"equation": "i,j->ij"}, name="outer"),
    Case("Einsum", (A(3, 4),), lambda a: torch.einsum("ij->j", a), {"equation": "ij->j"}, name="sum"),
    Case("Einsum", (A(2, 3), A(3, 4), A(4, 2)), lambda a, b, c: torch.einsum("ij,jk,kl->il", a, b, c),
         {"equation": "ij,jk,kl->il"}, name="three"),
    Case("Einsum", (A(2, 2, 3), A(2, 3, 4)), lambda a, b: torch.einsum("...ij,...jk->...ik", a, b),
         {"equation": "...ij,...jk->...ik"}, name="ellipsis"),
    Case("Einsum", (A(2, 3), A(3, 4)), lambda a, b: torch.einsum("ij,jk", a, b),
         {"equation": "ij,jk"}, name="implicit"),
    Case("Einsum", (A(2, 3), A(2, 3, 5)), lambda a, b: torch.einsum("bi,bik->b", a, b),
         {"equation": "bi,bik->b"}, name="summed-letter"),
    # --- resizing -----------------------------------------------------------------------------
    Case("Resize", (A(1, 2, 3, 4), C([], np.float32), C([1, 1, 2, 2], np.float32)),
         lambda x, r, s: F.interpolate(x, scale_factor=2, mode="nearest"),
         {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
         opset=18, name="nearest"),
    Case("Resize", (A(1, 2, 3, 4), C([], np.float32), C([1, 1, 2, 1.5], np.float32)),
         lambda x, r, s: F.interpolate(x, scale_factor=(2, 1.5), mode="bilinear", align_corners=False),
         {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, opset=18,
         name="bilinear"),
    Case("Resize", (A(1, 2, 5, 4), C([], np.float32), C([], np.float32), C([1, 2, 3, 7])),
         lambda x, r, s, z: F.interpolate(x, size=(3, 7), mode="bilinear", align_corners=True),
         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=18,
         name="align-corners-sizes"),
    Case("Resize", (A(1, 2, 4, 4), C([], np.float32), C([1, 1, 2, 2], np.float32)),
         lambda x, r, s: F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False),
         {"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel",
          "cubic_coeff_a": -0.75}, opset=18, name="bicubic"),
    Case("Resize", (A(2, 3, 8), C([], np.float32), C([], np.float32), C([5])),
         lambda x, r, s, z: F.interpolate(x, size=5, mode="linear", align_corners=False),
         {"mode": "linear", "coordinate_transformation_mode": "half_pixel", "axes": [2]}, opset=18,
         name="axes-downsample"),
    # --- element-wise -------------------------------------------------------------------------
    Case("Identity", (A(2, 3),), lambda x: x),
    Case("Add", (A(2, 3), A(3)), torch.add, name="broadcast"),
    Case("Add", (A(2, 1, 3), A(4, 1)), torch.add, name="both-broadcast"),
    Case("Sub", (A(2, 3), A(2, 1)), torch.sub),
    Case("Mul", (A(2, 3), A(1, 3)), torch.mul),
    Case("Div", (A(2, 3), A(3, **POS)), torch.div),
    Case("Neg", (A(4),), torch.neg),
    Case("Abs", (A(6, **AWAY),), torch.abs),
    Case("Exp", (A(5),), torch.exp),
    Case("Log", (A(5, **POS),), torch.log),
    Case("Sqrt", (A(5, **POS),), torch.sqrt),
    Case("Reciprocal", (A(5, **POS),), torch.reciprocal),
    Case("Pow", (A(2, 3, **POS), A(3)), torch.pow),
    Case("Pow", (A(2, 3, **POS), C(2.0, np.float32)), lambda x, e: torch.pow(x, 2.0), name="const-exponent"),
    Case("Relu", (A(6, **AWAY),), torch.relu),
    Case("LeakyRelu", (A(6, **AWAY),), lambda x: F.leaky_relu(x, 0.2), {"alpha": 0.2}),
    Case("Elu", (A(6, **AWAY),), lambda x: F.elu(x, 0.7), {"alpha": 0.7}),
    Case("Selu", (A(6, **AWAY),), F.selu),
    Case("Celu", (A(6, **AWAY),), lambda x: F.celu(x, 0.7), {"alpha": 0.7}),
    Case("PRelu", (A(2, 3, 4, **AWAY), A(3, 1, low=0.1, high=0.4)),
         lambda x, w: F.prelu(x, w.reshape(-1))),
    Case("ThresholdedRelu", (A(8, low=-2, high=2, away=0.1, kink=0.5),),
         lambda x: F.threshold(x, 0.5, 0.0), {"alpha": 0.5}),
    Case("Shrink", (A(8, low=-2, high=2, away=0.1, kink=0.5),), lambda x: F.softshrink(x, 0.5),
         {"lambd": 0.5, "bias": 0.5}, name="soft"),
    Case("Shrink", (A(8, low=-2, high=2, away=0.1, kink=-0.5),), lambda x: F.hardshrink(x, 0.5),
         {"lambd": 0.5}, name="hard"),
    Case("Softsign", (A(6, low=-3, high=3),), F.softsign),
    Case("Mish", (A(7, low=-4, high=4),), F.mish, opset=18),
    Case("Tan", (A(5, low=-1.2, high=1.2),), torch.tan),
    Case("Sinh", (A(5, low=-2, high=2),), torch.sinh),
    Case("Cosh", (A(5, low=-2, high=2),), torch.cosh),
    Case("Asin", (A(5, low=-0.9, high=0.9),), torch.asin),
    Case("Acos", (A(5, low=-0.9, high=0.9),), torch.acos),
    Case("Asinh", (A(5, low=-2, high=2),), torch.asinh),
    Case("Acosh", (A(5, low=1.2, high=3),), torch.acosh),
    Case("Atan", (A(5, low=-3, high=3),), torch.atan),
    Case("Atanh", (A(5, low=-0.9, high=0.9),), torch.atanh),
    Case("Sigmoid", (A(5, low=-3, high=3),), torch.sigmoid),
    Case("Tanh", (A(5, low=-2, high=2),), torch.tanh),
    Case("Softplus", (A(5, low=-3, high=3),), F.softplus),
    Case("Erf", (A(5, low=-2, high=2),), torch.erf),
    Case("Gelu", (A(7, low=-4, high=4),), F.gelu, opset=20),
    Case("Gelu", (A(7, low=-4, high=4),), lambda x: F.gelu(x, approximate="tanh"),
         {"approximate": "tanh"}, opset=20, name="tanh"),
    Case("Sin", (A(5),), torch.sin),
    Case("Cos", (A(5),), torch.cos),
    Case("Clip", (A(8, low=-2, high=2, away=0.1, kink=0.5), C(-0.5, np.float32), C(0.5, np.float32)),
         lambda x, lo, hi: torch.clamp(x, -0.5, 0.5)),
    Case("HardSigmoid", (A(8, low=-2.4, high=2.4),), lambda x: torch.clamp(0.2 * x + 0.5, 0, 1),
         {"alpha": 0.2, "beta": 0.5}),
    Case("HardSwish", (A(8, low=-2.9, high=2.9),), F.hardswish, opset=15),
    Case("CumSum", (A(3, 4), C(1)), lambda x, axis: torch.cumsum(x, 1)),
    Case("CumSum", (A(3, 4), C(-1)), lambda x, axis: torch.flip(torch.cumsum(torch.flip(x, [1]), 1), [1]) - x,
         {"exclusive": 1, "reverse": 1}, name="exclusive-reverse"),
    Case("Where", (C([[True, False, True]], bool), A(2, 3), A(3)),
         lambda c, a, b: torch.where(torch.tensor([[True, False, True]]), a, b)),
    Case("Max", (A(2, 3), A(3), A(2, 1)), lambda a, b, c: torch.maximum(torch.maximum(a, b), c)),
    Case("Min", (A(2, 3), A(2, 3)), torch.minimum),
    Case("Sum", (A(2, 3), A(3), A(2, 1)), lambda a, b, c: a + b + c),
    Case("Mean", (A(2, 3), A(2, 3)), lambda a, b: (a + b) / 2),
    Case("Cast", (A(2, 3),), lambda x: x.double(), {"to": 11}, name="to-double"),
    Case("CastLike", (A(2, 3), C(np.zeros(1), np.float64)), lambda x, like: x.double()),
    # --- reductions -----------------------------------------------------------------------
    Case("ReduceSum", (A(2, 3, 4), C([1])), lambda x, a: x.sum(1, keepdim=True)),
    Case("ReduceSum", (A(2, 3, 4),), lambda x: x.sum(), {"keepdims": 0}, name="all"),
    Case("ReduceMean", (A(2, 3, 4),), lambda x: x.mean((0, 2)), {"axes": [0, -1], "keepdims": 0}),
    Case("ReduceMean", (A(2, 3, 4), C([0, 2])), lambda x, a: x.mean((0, 2)), {"keepdims": 0},
         opset=18, name="axes-input"),
    Case("ReduceMax", (A(3, 4),), lambda x: x.amax(1, keepdim=True), {"axes": [1]}),
    Case("ReduceMin", (A(3, 4),), lambda x: x.amin(0), {"axes": [0], "keepdims": 0}),
    Case("ReduceL2", (A(3, 4),), lambda x: x.norm(dim=1), {"axes": [1], "keepdims": 0}),
    Case("ReduceL1", (A(3, 4, **AWAY),), lambda x: x.abs().sum(1), {"axes": [1], "keepdims": 0}),
    Case("ReduceSumSquare", (A(3, 4),), lambda x: (x * x).sum(0), {"axes": [0], "keepdims": 0}),
    Case("ReduceLogSumExp", (A(3, 4),), lambda x: torch.logsumexp(x, 1), {"axes": [1], "keepdims": 0}),
    Case("ReduceProd", (A(3, 4, **POS),), lambda x: x.prod(1), {"axes": [1], "keepdims": 0}),
    # --- shapes -----------------------------------------------------------------------------
    Case("Reshape", (A(2, 6), C([3, 4])), lambda x, s: x.reshape(3, 4)),
    Case("Flatten", (A(2, 3, 4),), lambda x: x.reshape(2, 12), {"axis": 1}),
    Case("Squeeze", (A(2, 1, 3), C([1])), lambda x, a: x.squeeze(1)),
    Case("Unsqueeze", (A(2, 3), C([0, 3])), lambda x, a: x.unsqueeze(0).unsqueeze(3)),
    Case("Transpose", (A(2, 3, 4),), lambda x: x.permute(2, 0, 1), {"perm": [2, 0, 1]}),
    Case("Concat", (A(2, 3), A(2, 1), A(2, 2)), lambda a, b, c: torch.cat([a, b, c], 1), {"axis": 1}),
    Case("Split", (A(5, 2), C([2, 3])), lambda x, s: tuple(torch.split(x, [2, 3], 0)), {"axis": 0},
         outputs=2, float_outputs=(0, 1)),
    Case("Split", (A(5, 2), C([2, 3])), lambda x, s: torch.split(x, [2, 3], 0)[1], {"axis": 0},
         outputs=2, float_outputs=(1,), name="one-output-used"),
    Case("Slice", (A(4, 5), C([1, 0]), C([3, 4]), C([0, 1])), lambda x, *a: x[1:3, 0:4]),
    Case("Slice", (A(6, 5), C([5, 1]), C([0, 5]), C([0, 1]), C([-2, 2])),
         lambda x, *a: torch.flip(x, [0])[0:5:2][:, 1:5:2], name="steps"),
    Case("Expand", (A(3, 1), C([2, 3, 4])), lambda x, s: x.expand(2, 3, 4)),
    Case("Tile", (A(2, 3), C([2, 3])), lambda x, r: x.repeat(2, 3)),
    Case("Trilu", (A(2, 3, 4), C(1)), lambda x, k: torch.triu(x, 1), opset=14),
    Case("Trilu", (A(3, 4), C(-1)), lambda x, k: torch.tril(x, -1), {"upper": 0}, opset=14, name="lower"),
    Case("SpaceToDepth", (A(2, 3, 4, 6),),
         lambda x: x.reshape(2, 3, 2, 2, 3, 2).permute(0, 3, 5, 1, 2, 4).reshape(2, 12, 2, 3),
         {"blocksize": 2}),
    Case("DepthToSpace", (A(2, 8, 2, 3),),
         lambda x: x.reshape(2, 2, 2, 2, 2, 3).permute(0, 3, 4, 1, 5, 2).reshape(2, 2, 4, 6),
         {"blocksize": 2}, name="DCR"),
    Case("DepthToSpace", (A(2, 18, 2, 1),), lambda x: F.pixel_shuffle(x, 3),
         {"blocksize": 3, "mode": "CRD"}, name="CRD"),
    Case("Pad", (A(2, 3), C([1, 0, 0, 2])), lambda x, p: _pad_ref(x, [1, 0, 0, 2], "constant")),
    Case("Pad", (A(1, 2, 4, 4), C([0, 0, 1, 2, 0, 0, 2, 1])),
         lambda x, p: _pad_ref(x, [0, 0, 1, 2, 0, 0, 2, 1], "reflect"), {"mode": "reflect"}, name="reflect"),
    Case("Pad", (A(1, 2, 3, 3), C([0, 0, 2, 1, 0, 0, 1, 2])),
         lambda x, p: _pad_ref(x, [0, 0, 2, 1, 0, 0, 1, 2], "edge"), {"mode": "edge"}, name="edge"),
    # --- indexing ---------------------------------------------------------------------------
    Case("Gather", (A(4, 3), C([[0, 2], [2, 3], [0, 0]])),
         lambda x, i: x[torch.tensor([[0, 2], [2, 3], [0, 0]])], {"axis": 0}),
    Case("Gather", (A(2, 4, 3), C([3, -1, 0])), lambda x, i: x[:, [3, 3, 0]], {"axis": 1}, name="axis1-negative"),
    Case("GatherElements", (A(3, 4), C([[0, 3], [1, 1], [2, 0]])),
         lambda x, i: torch.gather(x, 1, torch.tensor([[0, 3], [1, 1], [2, 0]])), {"axis": 1}),
    Case("GatherND", (A(3, 4, 2), C([[0, 1], [2, 3], [0, 1]])),
         lambda x, i: _gather_nd(x, [[0, 1], [2, 3], [0, 1]])),
    Case("ScatterElements", (A(3, 4), C([[0, 3], [1, 2], [2, 0]]), A(3, 2)),
         lambda d, i, u: _scatter_elements(d, u, [[0, 3], [1, 2], [2, 0]], 1, "none"), {"axis": 1}),
    Case("ScatterElements", (A(3, 4), C([[0, 3], [1, 1], [2, 0]]), A(3, 2)),
         lambda d, i, u: _scatter_elements(d, u, [[0, 3], [1, 1], [2, 0]], 1, "add"),
         {"axis": 1, "reduction": "add"}, name="add"),
    Case("ScatterND", (A(4, 3), C([[1], [3]]), A(2, 3)),
         lambda d, i, u: d.index_put((torch.tensor([1, 3]),), u)),
    Case("TopK", (A(3, 5), C([2])), lambda x, k: torch.topk(x, 2, 1)[0], {"axis": 1}, outputs=2),
    # --- matrix products ------------------------------------------------------------------
    Case("MatMul", (A(2, 3), A(3, 4)), torch.matmul),
    Case("MatMul", (A(2, 1, 3, 4), A(5, 4, 2)), torch.matmul, name="batched-broadcast"),
    Case("MatMul", (A(3), A(2, 3, 4)), torch.matmul, name="vector-left"),
    Case("MatMul", (A(2, 3), A(3)), torch.matmul, name="vector-right"),
    Case("Gemm", (A(3, 2), A(4, 3), A(4)),
         lambda a, b, c: 0.5 * a.T @ b.T + 2.0 * c, {"alpha": 0.5, "beta": 2.0, "transA": 1, "transB": 1}),
    Case("Gemm", (A(2, 3), A(3, 4), A(2, 1)), lambda a, b, c: a @ b + c, name="plain"),
    # --- convolution and pooling -----------------------------------------------------------
    Case("Conv", (A(2, 3, 7, 7), A(4, 3, 3, 3), A(4)),
         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("Conv", (A(1, 4, 6, 6), A(6, 2, 3, 3)), lambda x, w: F.conv2d(x, w, groups=2, dilation=2),
         {"group": 2, "dilations": [2, 2]}, name="group-dilation"),
    Case("Conv", (A(2, 2, 9), A(3, 2, 4)), lambda x, w: F.conv1d(x, w, stride=2, padding=1),
         {"strides": [2], "pads": [1, 1]}, name="1d"),
    Case("Conv", (A(1, 2, 5, 5), A(2, 2, 3, 3)), lambda x, w: F.conv2d(x, w, padding=1),
         {"auto_pad": "SAME_UPPER"}, name="same"),
    # strided kernels of 49+ taps take dW as one correlation Conv, smaller ones as a GEMM over
    # their windows: written by a one-hot Conv over the batch stacked along the first spatial
    # axis, or, for kernels of more than 25 taps or where that geometry does not fit (padding
    # beyond the kernel's reach), cut by Slices (2-D equal strides: from SpaceToDepth)
    Case("Conv", (A(2, 3, 9, 8), A(4, 3, 4, 4)), lambda x, w: F.conv2d(x, w, stride=2, padding=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}, name="stride2-4x4"),
    Case("Conv", (A(1, 2, 12, 11), A(3, 2, 7, 7)), lambda x, w: F.conv2d(x, w, stride=2, padding=3),
         {"strides": [2, 2], "pads": [3, 3, 3, 3]}, name="stride2-7x7"),
    Case("Conv", (A(1, 2, 9, 10), A(3, 2, 3, 3)), lambda x, w: F.conv2d(x, w, stride=(2, 3), dilation=2),
         {"strides": [2, 3], "dilations": [2, 2]}, name="unequal-strides-dilated"),
    Case("Conv", (A(2, 3, 7, 6), A(5, 3, 1, 1)), lambda x, w: F.conv2d(x, w, stride=2),
         {"strides": [2, 2]}, name="1x1-stride2"),
    Case("Conv", (A(2, 3, 4, 5), A(4, 3, 1, 1)), F.conv2d, name="1x1"),
    Case("Conv", (A(2, 3, 6, 5), A(4, 3, 1, 1)), lambda x, w: F.conv2d(x, w, stride=2, padding=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}, name="1x1-stride2-padded"),
    Case("Conv", (A(1, 2, 5, 4), A(3, 2, 2, 2)), lambda x, w: F.conv2d(x, w, padding=2),
         {"pads": [2, 2, 2, 2]}, name="pads-beyond-reach"),
    Case("Conv", (A(1, 2, 8, 7), A(2, 2, 7, 7)), lambda x, w: F.conv2d(x, w, padding=3),
         {"pads": [3, 3, 3, 3]}, name="7x7-unit-stride"),
    Case("Conv", (A(2, 2, 8, 7), A(3, 2, 3, 3)), lambda x, w: F.conv2d(x, w, stride=3, padding=2),
         {"strides": [3, 3], "pads": [2, 2, 2, 2]}, name="stride3-offset-stack"),
    Case("Conv", (A(2, 2, 5, 6), A(3, 2, 3, 2)), lambda x, w: F.conv2d(F.pad(x, (1, 0, 0, 2)), w),
         {"pads": [0, 1, 2, 0]}, name="asymmetric-pads"),
    Case("Conv", (A(2, 2, 5, 4, 4), A(3, 2, 2, 3, 2)),
         lambda x, w: F.conv3d(x, w, stride=(2, 1, 1), padding=(1, 0, 1)),
         {"strides": [2, 1, 1], "pads": [1, 0, 1, 1, 0, 1]}, name="3d"),
    Case("ConvTranspose", (A(2, 3, 4, 4), A(3, 2, 4, 4), A(2)),
         lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("ConvTranspose", (A(1, 2, 3, 4), A(2, 3, 7, 7)),
         lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=3, output_padding=1),
         {"strides": [2, 2], "pads": [3, 3, 3, 3], "output_padding": [1, 1]}, name="7x7-correlation"),
    Case("ConvTranspose", (A(1, 4, 3, 3), A(4, 1, 3, 3)),
         lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=2, dilation=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1], "group": 2},
         name="group-output-padding"),
    Case("ConvTranspose", (A(1, 2, 3, 3), A(2, 3, 2, 2)),
         lambda x, w: F.conv_transpose2d(x, w, dilation=2), {"dilations": [2, 2]}, name="dilation"),
    Case("MaxPool", (A(1, 2, 8),), lambda x: F.max_pool1d(x, 3, 2),
         {"kernel_shape": [3], "strides": [2]}, name="uncovered-tail"),
    Case("MaxPool", (A(2, 2, 5, 5),), lambda x: F.max_pool2d(x, 2, 2, 0),
         {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Case("MaxPool", (A(1, 2, 5, 5),), lambda x: F.max_pool2d(x, 3, 2, 1),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, name="padded-overlap"),
    Case("AveragePool", (A(1, 2, 8),), lambda x: F.avg_pool1d(x, 3, 2),
         {"kernel_shape": [3], "strides": [2]}, name="uncovered-tail"),
    Case("AveragePool", (A(2, 2, 5, 5),), lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("AveragePool", (A(1, 2, 5, 5),), lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
         name="include-pad"),
    Case("AveragePool", (A(1, 1, 6, 6),), lambda x: F.avg_pool2d(x, 2, 2, ceil_mode=True),
         {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, name="ceil"),
    Case("GlobalAveragePool", (A(2, 3, 4, 4),), lambda x: x.mean((2, 3), keepdim=True)),
    Case("GlobalMaxPool", (A(2, 3, 4, 4),), lambda x: x.amax((2, 3), keepdim=True)),
    # --- normalization and softmax ------------------------------------------------------------
    Case("BatchNormalization", (A(2, 3, 4, 4), A(3), A(3), A(3), A(3, **POS)), _bn_infer),
    Case("BatchNormalization", (A(4, 3, 2, 2), A(3), A(3), A(3, diff=False), A(3, diff=False, **POS)),
         lambda x, s, b, m, v: _bn_train(x, s, b), {"training_mode": 1}, outputs=3, opset=15,
         name="training"),
    Case("LayerNormalization", (A(2, 3, 4), A(4), A(4)),
         lambda x, s, b: F.layer_norm(x, (4,), s, b), {"axis": -1}),
    Case("LayerNormalization", (A(2, 3, 4), A(3, 4), A(3, 4)),
         lambda x, s, b: F.layer_norm(x, (3, 4), s, b), {"axis": 1}, name="two-axes"),
    Case("InstanceNormalization", (A(2, 3, 4, 4), A(3), A(3)), lambda x, s, b: F.instance_norm(x, weight=s, bias=b)),
    Case("Softmax", (A(2, 5),), lambda x: torch.softmax(x, -1)),
    Case("Softmax", (A(3, 4, 2),), lambda x: torch.softmax(x, 1), {"axis": 1}, name="axis1"),
    Case("LogSoftmax", (A(2, 5),), lambda x: torch.log_softmax(x, -1)),
    Case("Dropout", (A(3, 4),), lambda x: x, name="inference"),
    # --- losses -------------------------------------------------------------------------------
    Case("NegativeLogLikelihoodLoss", (A(4, 3), C([0, 2, 1, 2])),
         lambda x, t: _nll(x, [0, 2, 1, 2])),
    Case("NegativeLogLikelihoodLoss", (A(4, 3), C([0, 2, 1, 2]), A(3, diff=False, **POS)),
         lambda x, t, w: _nll(x, [0, 2, 1, 2], w, ignore_index=1), {"ignore_index": 1},
         name="weighted-ignore"),
    Case("NegativeLogLikelihoodLoss", (A(2, 3, 4), C([[0, 2, 1, 2], [1, 1, 0, 2]])),
         lambda x, t: _nll(x, [[0, 2, 1, 2], [1, 1, 0, 2]], reduction="none"), {"reduction": "none"},
         name="spatial-none"),
    Case("SoftmaxCrossEntropyLoss", (A(4, 3), C([0, 2, 1, 2])),
         lambda x, t: F.cross_entropy(x, torch.tensor([0, 2, 1, 2]))),
    Case("SoftmaxCrossEntropyLoss", (A(4, 3), C([0, 2, 1, 2]), A(3, diff=False, **POS)),
         lambda x, t, w: F.cross_entropy(x, torch.tensor([0, 2, 1, 2]), weight=w, reduction="sum"),
         {"reduction": "sum"}, name="weighted-sum"),
]
