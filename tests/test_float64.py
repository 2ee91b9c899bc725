"""``to_float64``: retyping, and every decomposition of an op ORT cannot run in float64, one node
at a time, against torch in float64 (to 1e-12) and against the float32 original on ORT."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from lossgraph.errors import UnsupportedOpError
from lossgraph.runtime.float64 import _DECOMPOSITIONS, to_float64

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE
META = {"pkg.torch.onnx.stack_trace": "loss.py:12", "namespace": "model/conv1"}


@dataclass(frozen=True)
class Case:
    """One node: its inputs' shapes (drawn from [low, high)), attributes and a torch float64
    reference taking the inputs as tensors."""

    op: str
    shapes: tuple[tuple[int, ...], ...]
    torch_fn: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    opset: int = 20
    low: float = -2.0
    high: float = 2.0
    outputs: int = 1
    elementwise: bool = False  # compare each element relatively, not against the largest
    #: constant inputs after the drawn ones (initializers; None: an absent input)
    constants: tuple[Any, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op


def _pad(x: torch.Tensor, begin: list[int], end: list[int]) -> torch.Tensor:
    """Zero-pad the spatial axes, ONNX order (begin and end per axis, first axis first)."""
    return F.pad(x, [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)])


def _conv(dims: int, begin=None, end=None, **kw) -> Callable[..., torch.Tensor]:
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]

    def ref(x, w, b=None):
        if begin is not None:
            x = _pad(x, begin, end)
        return fn(x, w, b, **kw)

    return ref


def _conv_transpose(dims: int, crop=None, out=None, **kw) -> Callable[..., torch.Tensor]:
    """conv_transpose; with ``crop`` (head per axis) the full result cut to ``out``."""
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]

    def ref(x, w, b=None):
        y = fn(x, w, b, **kw)
        if crop is None:
            return y
        y = _pad(y, [0] * dims, [max(0, h + o - s) for h, o, s in zip(crop, out, y.shape[2:])])
        return y[(..., *(slice(h, h + o) for h, o in zip(crop, out)))]

    return ref


def _avg_unfold(k, s, d, begin, end, include_pad):
    """2-D average pooling by F.unfold (which has dilation), pads as given."""

    def ref(x):
        n, c, h, w = x.shape
        padded = _pad(x, begin, end)
        ones = torch.ones_like(x[:, :1])
        counted = torch.ones_like(padded[:, :1]) if include_pad else _pad(ones, begin, end)
        out = [(size + b + e - dd * (kk - 1) - 1) // ss + 1
               for size, b, e, dd, kk, ss in zip((h, w), begin, end, d, k, s)]
        sums = F.unfold(padded, k, dilation=d, stride=s).view(n, c, -1, math.prod(out)).sum(2)
        counts = F.unfold(counted, k, dilation=d, stride=s).sum(1)
        return (sums / counts).view(n, c, *out)

    return ref


def _layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    std = torch.sqrt(var + float(np.float32(1e-5)))
    return (x - mean) / std * scale + bias, mean, 1 / std


SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875

CASES = [
    # --- Conv -------------------------------------------------------------------------------
    Case("Conv", ((2, 3, 7, 6), (4, 3, 3, 3), (4,)), _conv(2, stride=2, padding=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}, "stride2-pad1-bias"),
    Case("Conv", ((1, 4, 6, 6), (6, 2, 3, 3)), _conv(2, groups=2), {"group": 2}, "group2"),
    Case("Conv", ((1, 2, 9, 8), (3, 2, 3, 2)), _conv(2, dilation=2), {"dilations": [2, 2]},
         "dilation2"),
    Case("Conv", ((1, 4, 7, 7), (4, 1, 3, 3), (4,)),
         _conv(2, stride=2, padding=2, dilation=2, groups=4),
         {"group": 4, "strides": [2, 2], "pads": [2, 2, 2, 2], "dilations": [2, 2],
          "kernel_shape": [3, 3]}, "depthwise"),
    Case("Conv", ((2, 3, 10), (5, 3, 4)), _conv(1, [2], [1], stride=3),
         {"strides": [3], "pads": [2, 1]}, "1d-asymmetric"),
    Case("Conv", ((1, 2, 5, 6, 4), (3, 2, 3, 2, 3), (3,)),
         _conv(3, [1, 0, 1], [1, 1, 0], stride=(1, 2, 1)),
         {"strides": [1, 2, 1], "pads": [1, 0, 1, 1, 1, 0]}, "3d"),
    Case("Conv", ((1, 3, 7, 8), (2, 3, 4, 3)), _conv(2, [1, 0], [2, 1], stride=2),
         {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, "same-upper"),
    Case("Conv", ((1, 3, 7, 8), (2, 3, 4, 3)), _conv(2, [2, 1], [1, 0], stride=2),
         {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, "same-lower"),
    Case("Conv", ((1, 3, 7, 8), (2, 3, 2, 3)), _conv(2, stride=(1, 2)),
         {"strides": [1, 2], "auto_pad": "VALID"}, "valid"),
    Case("Conv", ((2, 5, 3, 4), (7, 5, 1, 1), (7,)), _conv(2), {}, "1x1"),
    Case("Conv", ((2, 5, 7, 6), (3, 5, 1, 1)), _conv(2, stride=2), {"strides": [2, 2]},
         "1x1-stride2"),
    Case("Conv", ((2, 3, 9, 8), (4, 3, 4, 4), (4,)), _conv(2, [1, 2], [2, 1], stride=2),
         {"strides": [2, 2], "pads": [1, 2, 2, 1]}, "stride2-4x4-asymmetric"),
    Case("Conv", ((1, 2, 13, 12), (3, 2, 7, 7)), _conv(2, [3, 2], [2, 3], stride=2),
         {"strides": [2, 2], "pads": [3, 2, 2, 3]}, "stride2-7x7"),
    Case("Conv", ((1, 2, 11, 10), (3, 2, 3, 3)), _conv(2, [1, 0], [0, 2], stride=3, dilation=2),
         {"strides": [3, 3], "pads": [1, 0, 0, 2], "dilations": [2, 2]}, "stride3-dilated"),
    # --- ConvTranspose ----------------------------------------------------------------------
    Case("ConvTranspose", ((2, 4, 5, 4), (4, 3, 3, 3), (3,)),
         _conv_transpose(2, stride=2, padding=1, output_padding=1),
         {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
         "stride2-pad1-outpad1"),
    Case("ConvTranspose", ((1, 4, 4, 5), (4, 3, 3, 3)), _conv_transpose(2, groups=2),
         {"group": 2}, "group2"),
    Case("ConvTranspose", ((1, 2, 4, 4), (2, 3, 3, 3), (3,)),
         _conv_transpose(2, stride=2, dilation=2, padding=1),
         {"strides": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]}, "dilation2"),
    Case("ConvTranspose", ((1, 4, 3, 4), (4, 2, 3, 2), (4,)),
         _conv_transpose(2, stride=(2, 3), groups=2, dilation=(1, 2), output_padding=(1, 0)),
         {"strides": [2, 3], "group": 2, "dilations": [1, 2], "output_padding": [1, 0]},
         "group2-mixed"),
    Case("ConvTranspose", ((2, 3, 6), (3, 2, 4)), _conv_transpose(1, stride=3, padding=1),
         {"strides": [3], "pads": [1, 1]}, "1d"),
    Case("ConvTranspose", ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), (2,)),
         _conv_transpose(3, stride=(2, 1, 2), padding=(1, 1, 0)),
         {"strides": [2, 1, 2], "pads": [1, 1, 0, 1, 1, 0]}, "3d"),
    Case("ConvTranspose", ((1, 2, 4, 3), (2, 2, 3, 3)),
         _conv_transpose(2, [0, 2], [8, 5], stride=2),
         {"strides": [2, 2], "pads": [0, 2, 1, 0]}, "asymmetric-pads"),
    Case("ConvTranspose", ((1, 2, 4, 4), (2, 2, 3, 3)),
         _conv_transpose(2, [1, 1], [8, 7], stride=2),
         {"strides": [2, 2], "output_shape": [8, 7]}, "output-shape"),
    Case("ConvTranspose", ((1, 2, 5, 4), (2, 2, 3, 3)),
         _conv_transpose(2, [0, 0], [10, 8], stride=2),
         {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, "same-upper"),
    Case("ConvTranspose", ((1, 2, 5, 4), (2, 2, 3, 3)),
         _conv_transpose(2, [1, 1], [10, 8], stride=2),
         {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, "same-lower"),
    Case("ConvTranspose", ((1, 2, 3, 4), (2, 3, 7, 7), (3,)),
         _conv_transpose(2, stride=2, padding=3, output_padding=1),
         {"strides": [2, 2], "pads": [3, 3, 3, 3], "output_padding": [1, 1]}, "7x7-outpad1"),
    Case("ConvTranspose", ((2, 4, 3, 4), (4, 3, 4, 4), (6,)),
         _conv_transpose(2, stride=2, padding=1, groups=2),
         {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": 2}, "group2-4x4-stride2"),
    Case("ConvTranspose", ((2, 3, 4, 3), (3, 2, 1, 1)), _conv_transpose(2, stride=2, output_padding=1),
         {"strides": [2, 2], "output_padding": [1, 1]}, "1x1-stride2"),
    # --- pooling ----------------------------------------------------------------------------
    Case("AveragePool", ((2, 3, 7, 6),),
         lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
         "include-pad"),
    Case("AveragePool", ((2, 3, 7, 6),),
         lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, "exclude-pad"),
    Case("AveragePool", ((1, 2, 6, 7),),
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
         "ceil-exclude-pad"),
    Case("AveragePool", ((1, 2, 6, 7),),
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True),
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
          "count_include_pad": 1}, "ceil-include-pad"),
    Case("AveragePool", ((2, 3, 7),), lambda x: F.avg_pool1d(x, 2, 2, ceil_mode=True),
         {"kernel_shape": [2], "strides": [2], "ceil_mode": 1}, "1d-ceil"),
    Case("AveragePool", ((1, 2, 4, 5, 3),),
         lambda x: F.avg_pool3d(x, 2, 1, 1, count_include_pad=False),
         {"kernel_shape": [2, 2, 2], "pads": [1] * 6}, "3d"),
    Case("AveragePool", ((1, 2, 8, 7),), _avg_unfold([2, 3], [1, 2], [2, 2], [1, 1], [1, 1], False),
         {"kernel_shape": [2, 3], "strides": [1, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]},
         "dilation2", opset=19),
    Case("AveragePool", ((1, 2, 7, 6),), _avg_unfold([3, 2], [2, 2], [1, 1], [1, 0], [1, 0], True),
         {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER",
          "count_include_pad": 1}, "same-upper"),
    Case("GlobalAveragePool", ((2, 3, 4, 5),), lambda x: x.mean((2, 3), keepdim=True)),
    Case("GlobalAveragePool", ((2, 3, 4, 5, 2),), lambda x: x.mean((2, 3, 4), keepdim=True),
         name="3d", opset=17),
    Case("GlobalMaxPool", ((2, 3, 4, 5),), lambda x: x.amax((2, 3), keepdim=True)),
    Case("GlobalMaxPool", ((2, 3, 4),), lambda x: x.amax(2, keepdim=True), name="1d", opset=17),
    # --- normalization ----------------------------------------------------------------------
    Case("InstanceNormalization", ((2, 3, 4, 5), (3,), (3,)),
         lambda x, s, b: F.instance_norm(x, weight=s, bias=b, eps=float(np.float32(1e-3))),
         {"epsilon": 1e-3}),
    Case("InstanceNormalization", ((2, 3, 6), (3,), (3,)),
         lambda x, s, b: F.instance_norm(x, weight=s, bias=b, eps=float(np.float32(1e-5))),
         name="1d", opset=17),
    Case("LayerNormalization", ((3, 4, 6), (6,), (6,)), _layer_norm, outputs=3, name="stats"),
    # --- elementwise ------------------------------------------------------------------------
    Case("Erf", ((400,),), torch.erf, low=-7.0, high=7.0, elementwise=True),
    # torch's gelu computes 1 + erf(z), which cancels for z << 0; erfc(-z) does not
    Case("Gelu", ((400,),), lambda x: 0.5 * x * torch.erfc(-x / math.sqrt(2)), low=-9.0, high=9.0,
         elementwise=True),
    Case("Gelu", ((400,),), lambda x: F.gelu(x, approximate="tanh"), {"approximate": "tanh"},
         "tanh", low=-3.0, high=3.0, elementwise=True),
    Case("Softplus", ((400,),), lambda x: torch.logaddexp(x, torch.zeros_like(x)), low=-60.0,
         high=60.0, elementwise=True),
    Case("Softplus", ((400,),), lambda x: torch.logaddexp(x, torch.zeros_like(x)), name="near0",
         low=-1e-3, high=1e-3, elementwise=True, opset=17),
    Case("Mish", ((400,),), F.mish, low=-30.0, high=30.0, elementwise=True),
    Case("Sigmoid", ((400,),), torch.sigmoid, low=-60.0, high=60.0, elementwise=True),
    Case("Elu", ((400,),), lambda x: F.elu(x, float(np.float32(0.7))), {"alpha": 0.7},
         low=-30.0, high=5.0, elementwise=True),
    Case("Elu", ((400,),), F.elu, name="near0", low=-1e-6, high=1e-6, elementwise=True, opset=17),
    Case("Celu", ((400,),), lambda x: F.celu(x, float(np.float32(1.3))), {"alpha": 1.3},
         low=-10.0, high=5.0, elementwise=True),
    Case("Selu", ((400,),),
         lambda x: SELU_GAMMA * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x)),
         low=-10.0, high=5.0, elementwise=True),
    Case("LeakyRelu", ((400,),), lambda x: F.leaky_relu(x, float(np.float32(0.2))),
         {"alpha": 0.2}, elementwise=True),
    Case("LeakyRelu", ((400,),), lambda x: F.leaky_relu(x, float(np.float32(0.01))), name="default",
         elementwise=True, opset=17),
    Case("PRelu", ((2, 3, 4), (3, 1)), lambda x, s: torch.where(x < 0, x * s, x), elementwise=True),
    Case("ThresholdedRelu", ((400,),), lambda x: torch.where(x > 0.5, x, 0.0), {"alpha": 0.5},
         elementwise=True),
    Case("HardSigmoid", ((400,),),
         lambda x: torch.clamp(float(np.float32(0.3)) * x + float(np.float32(0.4)), 0, 1),
         {"alpha": 0.3, "beta": 0.4}, low=-6.0, high=6.0, elementwise=True),
    Case("HardSigmoid", ((400,),), lambda x: torch.clamp(float(np.float32(0.2)) * x + 0.5, 0, 1),
         name="default", low=-6.0, high=6.0, elementwise=True),
    Case("HardSwish", ((400,),), F.hardswish, low=-6.0, high=6.0, elementwise=True),
    Case("Softsign", ((400,),), F.softsign, low=-10.0, high=10.0, elementwise=True),
    Case("Shrink", ((400,),), lambda x: F.softshrink(x, float(np.float32(0.3))),
         {"lambd": 0.3, "bias": 0.3}, low=-2.0, high=2.0, elementwise=True),
    Case("Shrink", ((400,),), lambda x: F.hardshrink(x, 0.5), {"lambd": 0.5}, name="hard",
         low=-2.0, high=2.0, elementwise=True, opset=17),
    # --- resizing: one MatMul per resized axis ---------------------------------------------
    Case("Resize", ((1, 2, 3, 4),), lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
         {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
         "nearest", opset=18, constants=(None, np.array([1, 1, 2, 2], np.float32))),
    Case("Resize", ((1, 2, 3, 4),),
         lambda x: F.interpolate(x, scale_factor=(2, 1.5), mode="bilinear", align_corners=False),
         {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, "bilinear",
         opset=18, constants=(None, np.array([1, 1, 2, 1.5], np.float32))),
    Case("Resize", ((1, 2, 5, 4),),
         lambda x: F.interpolate(x, size=(3, 7), mode="bicubic", align_corners=True),
         {"mode": "cubic", "coordinate_transformation_mode": "align_corners", "cubic_coeff_a": -0.75},
         "bicubic-sizes", opset=18, constants=(None, None, np.array([1, 2, 3, 7], np.int64))),
    Case("Tan", ((400,),), torch.tan, low=-1.5, high=1.5, elementwise=True),
    Case("Sinh", ((400,),), torch.sinh, low=-20.0, high=20.0, elementwise=True),
    Case("Sinh", ((400,),), torch.sinh, name="near0", low=-1e-6, high=1e-6, elementwise=True, opset=17),
    Case("Cosh", ((400,),), torch.cosh, low=-20.0, high=20.0, elementwise=True),
    Case("Asinh", ((400,),), torch.asinh, low=-50.0, high=50.0, elementwise=True),
    Case("Asinh", ((400,),), torch.asinh, name="near0", low=-1e-6, high=1e-6, elementwise=True, opset=17),
    Case("Acosh", ((400,),), torch.acosh, low=1.0, high=50.0, elementwise=True),
    Case("Atanh", ((400,),), torch.atanh, low=-0.999, high=0.999, elementwise=True),
    Case("Atan", ((400,),), torch.atan, low=-50.0, high=50.0, elementwise=True),
    Case("Atan", ((400,),), torch.atan, name="near0", low=-1e-6, high=1e-6, elementwise=True, opset=17),
    Case("Asin", ((400,),), torch.asin, low=-0.999, high=0.999, elementwise=True),
    Case("Acos", ((400,),), torch.acos, low=-0.999, high=0.999, elementwise=True),
    Case("Mean", ((2, 3), (3,), (2, 1)), lambda a, b, c: (a + b + c) / 3, elementwise=True),
    Case("Mean", ((5,),), lambda a: a, name="one-input", elementwise=True),
    Case("NonZero", ((3, 4),), lambda x: torch.stack(torch.nonzero(x, as_tuple=True))),
]


def _node_model(case: Case) -> onnx.ModelProto:
    names = [f"in{i}" for i in range(len(case.shapes))]
    constants = [numpy_helper.from_array(np.asarray(c), f"const{k}")
                 for k, c in enumerate(case.constants) if c is not None]
    inputs = names + ["" if c is None else f"const{k}" for k, c in enumerate(case.constants)]
    outputs = [f"y{j}" for j in range(case.outputs)]
    node = helper.make_node(case.op, inputs, outputs, name="node", **case.attrs)
    for key, value in META.items():
        node.metadata_props.add(key=key, value=value)
    graph = helper.make_graph(
        [node], case.id,
        [helper.make_tensor_value_info(n, F32, list(s)) for n, s in zip(names, case.shapes)],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    return onnx.shape_inference.infer_shapes(model)  # types the outputs, as the checker wants


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decomposition(case: Case):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    values = [rng.uniform(case.low, case.high, s).astype(np.float32) for s in case.shapes]
    model = _node_model(case)
    converted = to_float64(model)
    onnx.checker.check_model(converted, full_check=True)

    nodes = converted.graph.node
    assert [n.name for n in nodes] == [f"node/f64/{k}" for k in range(len(nodes))]
    assert all({p.key: p.value for p in n.metadata_props} == META for n in nodes)
    assert [o.name for o in converted.graph.output] == [f"y{j}" for j in range(case.outputs)]

    feeds = {f"in{i}": v for i, v in enumerate(values)}
    got = _run(converted, {k: v.astype(np.float64) for k, v in feeds.items()})
    want = case.torch_fn(*(torch.from_numpy(v.astype(np.float64)) for v in values))
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    got32 = _run(model, feeds)
    for ours, ref, f32 in zip(got, want, got32):
        assert ours.dtype == (np.float64 if ref.dtype.kind == "f" else ref.dtype)
        assert ours.shape == ref.shape == f32.shape
        scale = float(np.abs(ref).max())
        if case.elementwise:
            np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-300)
        else:
            assert np.abs(ours - ref).max() <= 1e-12 * scale
        assert np.abs(f32 - ours).max() <= 2e-6 * max(scale, 1.0), "differs from ORT float32"


def test_every_decomposition_has_a_case():
    assert set(_DECOMPOSITIONS) - {c.op for c in CASES} == set()


def test_erf_matches_math_erf_to_a_few_ulp():
    x = np.concatenate([
        np.linspace(-7, 7, 20001), np.geomspace(1e-300, 30, 2000), -np.geomspace(1e-300, 30, 2000),
        [0.46875, -0.46875, 4.0, 26.6, 1e300],
    ])
    case = Case("Erf", ((x.size,),), torch.erf)
    (got,) = _run(to_float64(_node_model(case)), {"in0": x})
    want = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)) < 1e-15
    (special,) = _run(to_float64(_node_model(Case("Erf", ((3,),), torch.erf))),
                      {"in0": np.array([np.inf, -np.inf, np.nan])})
    assert special[0] == 1.0 and special[1] == -1.0 and np.isnan(special[2])


def test_non_zero_counts_nan_and_skips_zeros():
    case = Case("NonZero", ((5,),), torch.nonzero)
    (got,) = _run(to_float64(_node_model(case)), {"in0": np.array([0.0, -0.0, np.nan, 2.0, 0.0])})
    assert got.tolist() == [[2, 3]]


def test_dtype_attributes_widen():
    """RandomUniform (float32 by default), RandomNormalLike, EyeLike and CastLike make float64."""
    nodes = [
        helper.make_node("RandomUniform", [], ["u"], shape=[2, 3], seed=1.0),
        helper.make_node("RandomNormalLike", ["u"], ["n"], dtype=F32, seed=2.0),
        helper.make_node("EyeLike", ["k"], ["eye"], dtype=F32),
        helper.make_node("CastLike", ["k", "u"], ["k_like"]),
        helper.make_node("Add", ["u", "n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dtypes", [helper.make_tensor_value_info("k", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info(o, t, [2, 3]) for o, t in
         (("y", F32), ("eye", F32), ("k_like", F32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted = to_float64(model)
    onnx.checker.check_model(converted, full_check=True)
    dtypes = {n.op_type: [a.i for a in n.attribute if a.name == "dtype"]
              for n in converted.graph.node}
    assert dtypes["RandomUniform"] == dtypes["RandomNormalLike"] == dtypes["EyeLike"] == [F64]
    y, eye, k_like = _run(converted, {"k": np.ones((2, 3), np.int64)})
    assert y.dtype == eye.dtype == k_like.dtype == np.float64
    assert eye.tolist() == np.eye(2, 3).tolist()


def _types(model: onnx.ModelProto) -> dict[str, int]:
    infos = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    return {i.name: i.type.tensor_type.elem_type for i in infos}


def test_shape_computations_stay_int64_and_float_constants_widen():
    """x -> Reshape(x, concat(shape(x)[0], [-1])) @ W, plus Cast(int -> FLOAT) and a
    value_float Constant: integers stay int64, every float becomes double."""
    w = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array([0]))),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
        helper.make_node("Concat", ["batch", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["h"]),
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Constant", [], ["offsets"], value_floats=[1.0, 2.0, 3.0, 4.0, 5.0]),
        helper.make_node("Cast", ["k"], ["k_float"], to=F32),
        helper.make_node("Mul", ["h", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offsets"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "k_float"], ["y"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
        helper.make_node("Shape", ["y"], ["y_shape"]),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", F32, [2, 3, 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [2, 1])],
        [helper.make_tensor_value_info("y", F32, [2, 5]),
         helper.make_tensor_value_info("zeros", F32, [2, 3, 4]),
         helper.make_tensor_value_info("y_shape", TensorProto.INT64, [2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="lossgraph.meta", value="{}")
    converted = to_float64(model)
    onnx.checker.check_model(converted, full_check=True)

    assert [n.op_type for n in converted.graph.node] == [n.op_type for n in nodes]
    assert converted.metadata_props == model.metadata_props
    assert converted.opset_import == model.opset_import
    types = _types(converted)
    assert types == {"x": F64, "k": TensorProto.INT64, "y": F64, "zeros": F64,
                     "y_shape": TensorProto.INT64}
    assert converted.graph.initializer[0].data_type == F64
    by_output = {n.output[0]: n for n in converted.graph.node}
    assert by_output["k_float"].attribute[0].i == F64
    for name, expected in (("half", 0.5), ("offsets", [1.0, 2.0, 3.0, 4.0, 5.0])):
        (attr,) = by_output[name].attribute
        assert attr.name == "value" and attr.t.data_type == F64
        assert numpy_helper.to_array(attr.t).tolist() == expected
    assert by_output["zero"].attribute[0].t.data_type == TensorProto.INT64

    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    k = np.array([[2], [-3]], dtype=np.int64)
    y, zeros, y_shape = _run(converted, {"x": x.astype(np.float64), "k": k})
    y32 = _run(model, {"x": x, "k": k})[0]
    want = (x.reshape(2, 12).astype(np.float64) @ w.astype(np.float64) * 0.5 + [1, 2, 3, 4, 5]) * k
    assert y.dtype == zeros.dtype == np.float64 and y_shape.dtype == np.int64
    np.testing.assert_allclose(y, want, rtol=1e-13)
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-5)


def test_ops_ort_runs_in_float64_are_kept():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Tanh", ["r"], ["t"], name="tanh"),
        helper.make_node("Softmax", ["t"], ["s"], name="softmax", axis=-1),
        helper.make_node("LogSoftmax", ["s"], ["l"], name="logsoftmax", axis=-1),
        helper.make_node("LayerNormalization", ["l", "g", "b"], ["y"], name="ln", axis=-1),
        helper.make_node("ReduceMean", ["y"], ["m"], name="mean", keepdims=0),
    ]
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        nodes, "native", [helper.make_tensor_value_info("x", F32, [3, 4])],
        [helper.make_tensor_value_info("m", F32, [])],
        [numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w"),
         numpy_helper.from_array(np.ones(5, np.float32), "g"),
         numpy_helper.from_array(np.zeros(5, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    converted = to_float64(model)
    kept = [(n.name, n.op_type) for n in converted.graph.node]
    assert kept == [(n.name, n.op_type) for n in nodes]
    x = rng.standard_normal((3, 4))
    (m,) = _run(converted, {"x": x})
    (m32,) = _run(model, {"x": x.astype(np.float32)})
    assert m.dtype == np.float64 and abs(float(m) - float(m32)) < 1e-5


def test_subgraphs_are_converted():
    """An If whose branches hold a Conv, a Constant and a Cast(to=FLOAT)."""
    w = np.random.default_rng(3).standard_normal((2, 1, 3)).astype(np.float32)

    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], [f"{name}_c"], name=f"{name}_conv", pads=[1, 1]),
             helper.make_node("Constant", [], [f"{name}_k"], value_float=scale),
             helper.make_node("Cast", [f"{name}_k"], [f"{name}_kf"], to=F32),
             helper.make_node("Mul", [f"{name}_c", f"{name}_kf"], [f"{name}_y"])],
            name, [], [helper.make_tensor_value_info(f"{name}_y", F32, [1, 2, 5])],
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", 2.0),
                          else_branch=branch("else", -1.0))],
        "cond",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", F32, [1, 1, 5])],
        [helper.make_tensor_value_info("y", F32, [1, 2, 5])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted = to_float64(model)
    onnx.checker.check_model(converted, full_check=True)
    then_ops = [n.op_type for n in converted.graph.node[0].attribute[0].g.node]
    assert "Conv" not in then_ops and "MatMul" in then_ops
    x = np.random.default_rng(4).standard_normal((1, 1, 5))
    want = F.conv1d(torch.from_numpy(x), torch.from_numpy(w.astype(np.float64)), padding=1).numpy()
    for flag, scale in ((True, 2.0), (False, -1.0)):
        (y,) = _run(converted, {"flag": np.array(flag), "x": x})
        np.testing.assert_allclose(y, scale * want, rtol=1e-13)


def test_unknown_spatial_shape_names_the_node():
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="encoder/conv")], "dynamic",
        [helper.make_tensor_value_info("x", F32, ["N", 1, "H"]),
         helper.make_tensor_value_info("w", F32, [2, 1, 3])],
        [helper.make_tensor_value_info("y", F32, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match=r"'encoder/conv' \(Conv\).*static shape of 'x'"):
        to_float64(model)


def test_exported_total_variation_runs_in_float64():
    import lossgraph as lg
    from lossgraph.inputs import make_inputs
    from lossgraph.runtime.session import OrtRunner

    graph = lg.export("/work/main/examples/losses/losses_torch.py:total_variation")
    converted = to_float64(graph.model)
    onnx.checker.check_model(converted)
    ops = {n.op_type for n in converted.graph.node}
    assert not ops & {"Conv", "LeakyRelu"}
    feeds = make_inputs(graph.meta.inputs, 0)
    feeds64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    losses32 = OrtRunner(graph.model).run(feeds, outputs=graph.meta.losses)
    losses64 = OrtRunner(converted).run(feeds64, outputs=graph.meta.losses)
    for name in graph.meta.losses:
        assert losses64[name].dtype == np.float64
        assert abs(float(losses64[name]) - float(losses32[name])) <= 1e-6


def test_decompositions_write_only_differentiable_ops():
    """The noise floor differentiates float64 graphs, so every op a decomposition writes needs a
    gradient rule (or a non-differentiable declaration)."""
    from lossgraph.autodiff.registry import known_ops

    known = known_ops()
    written = {(n.op_type, case.id) for case in CASES for n in to_float64(_node_model(case)).graph.node}
    assert {(op, case) for op, case in written if op not in known} == set()


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_deferred_convolutions_give_torch_float64_gradients_and_are_lowered_by_the_runner(op):
    """The noise floor's float64 graphs keep their convolutions whole (``defer=True``) so the
    gradients are built over the op's own rule; ``OrtRunner`` decomposes them (``lower_float64``,
    forward and backward convolutions alike) and the gradients are torch's float64 autograd's
    to float64 rounding."""
    from lossgraph.autodiff import build_gradients
    from lossgraph.runtime.float64 import lower_float64
    from lossgraph.runtime.session import OrtRunner

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (4, 3, 3, 3) if op == "Conv" else (3, 4, 3, 3)).astype(np.float32)
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs),
         helper.make_node("Mul", ["y", "y"], ["y2"]),
         helper.make_node("ReduceSum", ["y2"], ["loss"], keepdims=0)],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    deferred = to_float64(model, defer=True)
    assert [n.op_type for n in deferred.graph.node].count(op) == 1  # kept whole, retyped
    result = build_gradients(deferred, "loss", ["w"])
    assert any(n.op_type in ("Conv", "ConvTranspose") for n in result.model.graph.node)
    lowered = lower_float64(result.model)
    assert not any(n.op_type in ("Conv", "ConvTranspose") for n in lowered.graph.node)
    plain = to_float64(model)
    assert lower_float64(plain) is plain  # nothing left to decompose
    got = OrtRunner(result.model).run({"x": x.astype(np.float64)}, outputs=[result.grads["w"]])[result.grads["w"]]
    xt = torch.tensor(x, dtype=torch.float64)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    fn = F.conv2d if op == "Conv" else F.conv_transpose2d
    (fn(xt, wt, stride=2, padding=1) ** 2).sum().backward()
    expected = wt.grad.numpy()
    assert got.dtype == np.float64
    assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()
