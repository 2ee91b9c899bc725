"""Ports of ``layers_torch.py``'s layers with one realistic mistake each: a default or an
argument that differs between the frameworks. ``PLANTED`` says, for each, the torch layer it
ports and what lossgraph must say (``tests/test_layer_catalog.py``).

    lossgraph export examples/catalog/layers_torch.py:upsample_bilinear -o t.onnx
    lossgraph export examples/catalog/layers_paddle_planted.py:align_corners -o bad.onnx
    lossgraph verify t.onnx bad.onnx       # exit 1, the coordinate transformation named
"""

from __future__ import annotations

import functools

import paddle
from layers_paddle import CHANNELS, GRID, THETA, Function, loss_spec, spec_of
from paddle import nn
from paddle.nn import functional as F

#: how each kind of catalog entry is built around the Paddle layer, function or loss
KINDS = {
    "vector": lambda make: spec_of(make, False),
    "maps": lambda make: spec_of(make, True),
    "train": lambda make: spec_of(make, True, True),
    "loss": lambda loss: loss_spec(loss, False),
    "class_loss": lambda loss: loss_spec(loss, True),
}

#: name -> (the torch entry it ports, its kind, the Paddle layer or loss with the mistake,
#: exit code, what the report says[, (step, phase) of the divergence when not (0, "forward")])
PLANTED = {
    "instance_norm_affine_default": (
        "instance_norm", "maps", lambda: nn.InstanceNorm2D(CHANNELS), 2,
        "Paddle's InstanceNorm2D has a learnable scale and bias by default"),
    "align_corners": (
        "upsample_bilinear", "maps", lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), 1,
        "coordinate transformation half_pixel (align_corners=False; Paddle align_mode=0) vs align_corners"),
    "align_mode_1": (
        "upsample_bilinear", "maps", lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_mode=1), 1,
        "vs asymmetric (Paddle align_mode=1"),
    "nearest_for_bilinear": (
        "upsample_bilinear", "maps", lambda: nn.Upsample(scale_factor=2, mode="nearest"), 1,
        "interpolation mode linear vs nearest"),
    "ceil_mode": ("max_pool", "maps", lambda: nn.MaxPool2D(2, ceil_mode=True), 1, "ceil_mode 0 vs 1"),
    "batch_norm_epsilon": (
        "batch_norm", "maps", lambda: nn.BatchNorm2D(CHANNELS, epsilon=1e-3), 1,
        "the reference uses 1e-05; the candidate computes with 0.001"),
    "avg_pool_exclusive": (
        "avg_pool", "maps", lambda: nn.AvgPool2D(3, stride=2, padding=1), 1,
        "AvgPool count_include_pad"),
    "leaky_relu_default": ("leaky_relu", "vector", lambda: nn.LeakyReLU(), 1, "slope 0.1 vs 0.01"),
    "gelu_tanh": ("gelu", "vector", lambda: nn.GELU(approximate=True), 1,
                  "the reference computes the exact one, the candidate the tanh approximation"),
    "grid_sample_corners_default": (
        "grid_sample", "maps", lambda: Function(lambda h: F.grid_sample(h, paddle.to_tensor(GRID))), 1,
        "align_corners 0 vs 1"),
    "affine_grid_corners_default": (
        "affine_grid", "maps", lambda: Function(lambda h: F.grid_sample(
            h, F.affine_grid(paddle.to_tensor(THETA), [2, CHANNELS, 3, 4]), align_corners=False)), 1,
        "affine_grid (align_corners): torch align_corners=False; Paddle align_corners=True"),
    "dropout_downscale_in_infer": (
        "dropout_eval_features", "vector", lambda: nn.Dropout(0.4, mode="downscale_in_infer"), 1, "downscale_in_infer"),
    "batch_norm_momentum_as_torch": (
        "batch_norm_train", "train", lambda: nn.BatchNorm2D(CHANNELS, momentum=0.2), 1, "momentum",
        (0, "update")),
    "smooth_l1_beta_as_delta": (
        "smooth_l1_beta", "loss", lambda h, t: F.smooth_l1_loss(h, t, delta=0.5), 1, "beta"),
    "label_smoothing_dropped": (
        "cross_entropy_smoothing", "class_loss", lambda h, c: F.cross_entropy(h, c), 1, "label_smoothing"),
    "cross_entropy_weight_smoothing": (
        "cross_entropy_all_options", "class_loss", lambda h, c: F.cross_entropy(
            h, c, weight=paddle.to_tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0]), label_smoothing=0.2, reduction="sum"),
        1, "weights each class's log-probability"),
    "gaussian_nll_no_variance_gradient": (
        "gaussian_nll", "loss", lambda h, t: F.gaussian_nll_loss(h, t, F.sigmoid(h) + 0.5), 1,
        "the variance gets no gradient", (0, "backward")),
    "kl_div_mean": (
        "kl_div", "loss", lambda h, t: F.kl_div(F.log_softmax(h, 1), F.softmax(t, 1), reduction="mean"), 1,
        "batchmean"),
}

for _name, (_torch, _kind, _make, *_said) in PLANTED.items():
    globals()[_name] = functools.partial(KINDS[_kind], _make)
