"""Ports of ``layers_torch.py``'s layers with one realistic mistake each: a default or an
argument that differs between the frameworks. ``PLANTED`` says, for each, the torch layer it
ports and what lossgraph must say (``tests/test_layer_catalog.py``).

    lossgraph export examples/catalog/layers_torch.py:upsample_bilinear -o t.onnx
    lossgraph export examples/catalog/layers_paddle_planted.py:align_corners -o bad.onnx
    lossgraph verify t.onnx bad.onnx       # exit 1, the coordinate transformation named
"""

from __future__ import annotations

import functools

from layers_paddle import CHANNELS, spec_of
from paddle import nn

#: name -> (the torch layer it ports, feature maps?, the Paddle layer with the mistake,
#: exit code, what the report says)
PLANTED = {
    "instance_norm_affine_default": (
        "instance_norm", True, lambda: nn.InstanceNorm2D(CHANNELS), 2,
        "Paddle's InstanceNorm2D has a learnable scale and bias by default"),
    "align_corners": (
        "upsample_bilinear", True, lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), 1,
        "coordinate transformation half_pixel (align_corners=False; Paddle align_mode=0) vs align_corners"),
    "align_mode_1": (
        "upsample_bilinear", True, lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_mode=1), 1,
        "vs asymmetric (Paddle align_mode=1"),
    "nearest_for_bilinear": (
        "upsample_bilinear", True, lambda: nn.Upsample(scale_factor=2, mode="nearest"), 1,
        "interpolation mode linear vs nearest"),
    "ceil_mode": ("max_pool", True, lambda: nn.MaxPool2D(2, ceil_mode=True), 1, "ceil_mode 0 vs 1"),
    "batch_norm_epsilon": (
        "batch_norm", True, lambda: nn.BatchNorm2D(CHANNELS, epsilon=1e-3), 1,
        "the reference uses 1e-05; the candidate computes with 0.001"),
    "avg_pool_exclusive": (
        "avg_pool", True, lambda: nn.AvgPool2D(3, stride=2, padding=1), 1,
        "AvgPool count_include_pad"),
    "leaky_relu_default": ("leaky_relu", False, lambda: nn.LeakyReLU(), 1, "slope 0.1 vs 0.01"),
    "gelu_tanh": ("gelu", False, lambda: nn.GELU(approximate=True), 1,
                  "the reference computes the exact one, the candidate the tanh approximation"),
}

for _name, (_torch, _spatial, _make, _code, _said) in PLANTED.items():
    globals()[_name] = functools.partial(spec_of, _make, _spatial)
