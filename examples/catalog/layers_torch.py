"""The layer catalog, torch side: one small model per torch.nn layer -- a Linear, the layer, a
square-mean loss, Adam -- against its paddle.nn counterpart in ``layers_paddle.py`` (same
names). ``LAYERS`` (after a Linear), ``SPATIAL`` (on feature maps, after a Conv2d) and
``FUNCTIONS`` (tensor functions of a Linear's output, as forward code calls them) list them;
each is a function of this module.

    lossgraph export examples/catalog/layers_torch.py:prelu -o t.onnx
    lossgraph export examples/catalog/layers_paddle.py:prelu -o p.onnx
    lossgraph verify t.onnx p.onnx --grads --steps 2
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import lossgraph as lg

FEATURES = 6
X = lg.Input([4, FEATURES], low=-3.0, high=3.0)

#: name -> the torch layer (built after the seed, so a layer with parameters draws them alike)
LAYERS = {
    "relu": lambda: nn.ReLU(),
    "relu6": lambda: nn.ReLU6(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(),
    "prelu_channels": lambda: nn.PReLU(FEATURES, init=0.2),
    "elu": lambda: nn.ELU(0.8),
    "celu": lambda: nn.CELU(0.7),
    "selu": lambda: nn.SELU(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "mish": lambda: nn.Mish(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "hardtanh": lambda: nn.Hardtanh(-0.5, 0.5),
    "hardsigmoid": lambda: nn.Hardsigmoid(),
    "hardswish": lambda: nn.Hardswish(),
    "hardshrink": lambda: nn.Hardshrink(0.3),
    "softshrink": lambda: nn.Softshrink(0.3),
    "tanhshrink": lambda: nn.Tanhshrink(),
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=10.0),
    "softsign": lambda: nn.Softsign(),
    "logsigmoid": lambda: nn.LogSigmoid(),
    "threshold": lambda: nn.Threshold(0.2, 0.0),
    "softmax": lambda: nn.Softmax(dim=-1),
    "log_softmax": lambda: nn.LogSoftmax(dim=-1),
    "glu": lambda: nn.GLU(dim=-1),
    "dropout_eval_features": lambda: nn.Dropout(0.4),
    "rrelu_eval": lambda: nn.RReLU(0.1, 0.3),
}


#: name -> the torch layer, on feature maps: after a Conv2d, input [2, 2, 5, 6]
SPATIAL = {
    "upsample_nearest": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample_bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
    "upsample_bilinear_corners": lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    "upsample_bicubic": lambda: nn.Upsample(scale_factor=2, mode="bicubic"),
    "upsample_size": lambda: nn.Upsample(size=(7, 9), mode="bilinear"),
    "pixel_shuffle": lambda: nn.PixelShuffle(2),
    "pixel_unshuffle": lambda: nn.Sequential(nn.ZeroPad2d((0, 0, 0, 1)), nn.PixelUnshuffle(2)),
    "zero_pad": lambda: nn.ZeroPad2d((1, 2, 0, 1)),
    "reflection_pad": lambda: nn.ReflectionPad2d((1, 2, 0, 1)),
    "replication_pad": lambda: nn.ReplicationPad2d((1, 2, 0, 1)),
    "max_pool": lambda: nn.MaxPool2d(2),
    "max_pool_ceil": lambda: nn.MaxPool2d(2, ceil_mode=True),
    "avg_pool": lambda: nn.AvgPool2d(3, stride=2, padding=1),
    "avg_pool_exclusive": lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    "adaptive_avg_pool": lambda: nn.AdaptiveAvgPool2d((2, 3)),
    "batch_norm": lambda: nn.BatchNorm2d(CHANNELS),
    "group_norm": lambda: nn.GroupNorm(2, CHANNELS),
    "instance_norm": lambda: nn.InstanceNorm2d(CHANNELS),
    "instance_norm_affine": lambda: nn.InstanceNorm2d(CHANNELS, affine=True),
    "layer_norm": lambda: nn.LayerNorm([5, 6]),
    "local_response_norm": lambda: nn.LocalResponseNorm(3),
    "unfold": lambda: nn.Unfold(kernel_size=2, stride=1),
    "conv_grouped_dilated": lambda: nn.Conv2d(CHANNELS, 6, 3, padding=2, dilation=2, groups=2),
    "conv_strided": lambda: nn.Conv2d(CHANNELS, 3, 3, stride=2, padding=1, bias=False),
    "conv_transpose": lambda: nn.ConvTranspose2d(CHANNELS, 3, 3, stride=2, padding=1, output_padding=1),
    "conv_transpose_grouped": lambda: nn.ConvTranspose2d(CHANNELS, 4, 2, stride=2, groups=2),
    "conv_padding_reflect": lambda: nn.Conv2d(CHANNELS, 3, 3, padding=1, padding_mode="reflect"),
    "adaptive_max_pool": lambda: nn.AdaptiveMaxPool2d((1, 1)),
    "max_pool_dilated": lambda: nn.MaxPool2d(2, stride=1, dilation=2),
    "avg_pool_1d": lambda: nn.Sequential(nn.Flatten(2), nn.AvgPool1d(3, stride=2)),
    "conv_1d": lambda: nn.Sequential(nn.Flatten(2), nn.Conv1d(CHANNELS, 3, 3, padding=1)),
    "flatten": lambda: nn.Flatten(),
    "channel_shuffle": lambda: nn.ChannelShuffle(2),
    "dropout_eval": lambda: nn.Dropout2d(0.5),
    "adaptive_max_pool_uneven": lambda: nn.AdaptiveMaxPool2d((2, 4)),
    "adaptive_avg_pool_uneven": lambda: nn.AdaptiveAvgPool2d((3, 4)),
    "fold": lambda: nn.Sequential(nn.Unfold(2), nn.Fold((5, 6), 2)),
    "grid_sample": lambda: Function(lambda h: F.grid_sample(h, GRID, align_corners=False)),
    "affine_grid": lambda: Function(lambda h: F.grid_sample(
        h, F.affine_grid(THETA, [2, CHANNELS, 3, 4], align_corners=False), align_corners=False)),
    "grid_sample_corners_nearest": lambda: Function(
        lambda h: F.grid_sample(h, GRID, mode="nearest", align_corners=True)),
    "conv_3d": lambda: nn.Sequential(Volume(), nn.Conv3d(1, 2, 3, padding=1)),
    "conv_transpose_3d": lambda: nn.Sequential(Volume(), nn.ConvTranspose3d(1, 2, 2, stride=2)),
    "max_pool_3d": lambda: nn.Sequential(Volume(), nn.MaxPool3d(2)),
    "avg_pool_3d": lambda: nn.Sequential(Volume(), nn.AvgPool3d(2, stride=1)),
    "adaptive_avg_pool_3d": lambda: nn.Sequential(Volume(), nn.AdaptiveAvgPool3d((2, 1, 3))),
    "batch_norm_3d": lambda: nn.Sequential(Volume(), nn.BatchNorm3d(1)),
    "softmax_2d": lambda: nn.Softmax2d(),
    "lp_pool": lambda: nn.LPPool2d(2, 2),
    "interpolate_area": lambda: Function(lambda h: F.interpolate(h, size=(2, 3), mode="area")),
    "interpolate_bicubic_corners": lambda: Function(
        lambda h: F.interpolate(h, scale_factor=2, mode="bicubic", align_corners=True)),
    "interpolate_linear_1d": lambda: nn.Sequential(
        nn.Flatten(2), Function(lambda h: F.interpolate(h, scale_factor=2, mode="linear"))),
    "interpolate_trilinear": lambda: nn.Sequential(
        Volume(), Function(lambda h: F.interpolate(h, scale_factor=2, mode="trilinear"))),
    "conv_transpose_1d": lambda: nn.Sequential(nn.Flatten(2), nn.ConvTranspose1d(CHANNELS, 3, 3, stride=2)),
    "constant_pad_1d": lambda: nn.Sequential(nn.Flatten(2), nn.ConstantPad1d((2, 1), 0.5)),
    "reflection_pad_1d": lambda: nn.Sequential(nn.Flatten(2), nn.ReflectionPad1d(2)),
    "replication_pad_3d": lambda: nn.Sequential(Volume(), nn.ReplicationPad3d(1)),
}
#: name -> the torch layer, on feature maps, in training mode (batch statistics, dropout masks)
TRAINING = {
    "dropout": lambda: nn.Dropout(0.3),
    "dropout_2d": lambda: nn.Dropout2d(0.5),
    "alpha_dropout": lambda: nn.AlphaDropout(0.2),
    "feature_alpha_dropout": lambda: nn.FeatureAlphaDropout(0.3),
    "batch_norm_train": lambda: nn.BatchNorm2d(CHANNELS, momentum=0.2),
    "dropout_3d": lambda: nn.Sequential(Volume(), nn.Dropout3d(0.5)),
    # random slopes in training: nothing to compare, refused in one line by both exporters
    "rrelu_train": lambda: nn.RReLU(0.1, 0.3),
}
#: a sampling grid for grid_sample: [2, 3, 4, 2] in [-1.2, 1.2) (some points outside)
GRID = torch.tensor([[[[-1.2 + 0.1 * ((7 * i + 3 * j + 5 * k + n) % 24) for k in range(2)] for j in range(4)]
                      for i in range(3)] for n in range(2)])
#: affine transforms for affine_grid: [2, 2, 3], rotating, shearing, scaling and shifting
THETA = torch.tensor([[[0.9, 0.2, 0.1], [-0.1, 0.8, 0.05]], [[1.1, -0.3, -0.2], [0.25, 0.7, 0.1]]])
CHANNELS = 4
MAPS = lg.Input([2, 2, 5, 6])

INDEX = [[0, 2, 1], [5, 5, 0], [3, 1, 4], [2, 0, 0]]  # rows of a [4, 6] value, 3 per row
MASK = [[True, False, False, True, False, True]] * 4

#: name -> a tensor function of the Linear's output h [4, 6], as forward code calls them
FUNCTIONS = {
    "gather": lambda h: torch.gather(h, 1, torch.tensor(INDEX)),
    "scatter_add": lambda h: torch.zeros_like(h).scatter_add(1, torch.tensor(INDEX), h[:, :3]),
    "cumsum": lambda h: torch.cumsum(h, 1),
    "where": lambda h: torch.where(h > 0, h, 0.1 * h),
    "topk": lambda h: torch.topk(h, 3, dim=1).values,
    "sort": lambda h: torch.sort(h, dim=1, descending=True).values,
    "roll": lambda h: torch.roll(h, 2, 1),
    "flip": lambda h: torch.flip(h, [1]),
    "masked_fill": lambda h: h.masked_fill(torch.tensor(MASK), 0.5),
    "normalize": lambda h: F.normalize(h, dim=1),
    "logsumexp": lambda h: torch.logsumexp(h, 1),
    "amax": lambda h: torch.amax(h, 1),
    "clamp": lambda h: torch.clamp(h, -0.5, 0.5),
    "tril": lambda h: torch.tril(h, -1),
    "einsum": lambda h: torch.einsum("bi,bj->ij", h, h),
    "cumprod": lambda h: torch.cumprod(torch.sigmoid(h), 1),
    "prod": lambda h: torch.prod(torch.sigmoid(h), 1),
    "var": lambda h: torch.var(h, 1),
    "std": lambda h: torch.std(h, 1),
    "norm": lambda h: torch.linalg.vector_norm(h, 2, dim=1),
    "scatter": lambda h: torch.zeros_like(h).scatter(1, torch.tensor(DISTINCT), h[:, :3]),
    "index_select": lambda h: torch.index_select(h, 1, torch.tensor([0, 2, 2, 5])),
    "repeat_interleave": lambda h: torch.repeat_interleave(h, 2, dim=1),
    "cdist": lambda h: torch.cdist(h, h[:2] * 0.5 + 1.0),
    "logcumsumexp": lambda h: torch.logcumsumexp(h, 1),
    "cummax": lambda h: torch.cummax(h, 1).values,
    "kthvalue": lambda h: torch.kthvalue(h, 2, 1).values,
    "median": lambda h: torch.median(h, 1).values,
    "diff": lambda h: torch.diff(h, dim=1),
    "cross": lambda h: torch.linalg.cross(h[:, :3], h[:, 3:]),
    "tensordot": lambda h: torch.tensordot(h, h, dims=([0], [0])),
    "kron": lambda h: torch.kron(h[:2, :2], h[2:, 2:]),
}
DISTINCT = [[0, 2, 1], [5, 4, 0], [3, 1, 4], [2, 0, 5]]  # rows of a [4, 6] value, no repeats


#: name -> a loss of the Linear's output h [4, 6] against a target t: a float [4, 6] drawn from
#: [-1, 1) (signs and 0/1 labels are taken of it), or class ids [4] (``CLASSES``)
LOSSES = {
    "huber": lambda h, t: F.huber_loss(h, t, delta=0.5),
    "smooth_l1": lambda h, t: F.smooth_l1_loss(h, t),
    "smooth_l1_beta": lambda h, t: F.smooth_l1_loss(h, t, beta=0.5),
    "soft_margin": lambda h, t: F.soft_margin_loss(h, torch.sign(t)),
    "multilabel_soft_margin": lambda h, t: F.multilabel_soft_margin_loss(h, (t > 0).float()),
    "poisson_nll": lambda h, t: F.poisson_nll_loss(h, t.abs() * 3),
    "gaussian_nll": lambda h, t: F.gaussian_nll_loss(h, t, torch.sigmoid(h) + 0.5),
    "l1_sum": lambda h, t: F.l1_loss(h, t, reduction="sum"),
    "mse_none": lambda h, t: F.mse_loss(h, t, reduction="none").mean(),
    "cosine_similarity": lambda h, t: (1 - F.cosine_similarity(h, t, dim=1)).mean(),
    "pairwise_distance": lambda h, t: F.pairwise_distance(h, t).mean(),
    "mse": lambda h, t: F.mse_loss(h, t),
    "l1": lambda h, t: F.l1_loss(h, t),
    "bce": lambda h, t: F.binary_cross_entropy(torch.sigmoid(h), (t > 0).float()),
    "bce_with_logits_pos_weight": lambda h, t: F.binary_cross_entropy_with_logits(
        h, (t > 0).float(), pos_weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])),
    "kl_div": lambda h, t: F.kl_div(F.log_softmax(h, 1), F.softmax(t, 1), reduction="batchmean"),
    "margin_ranking": lambda h, t: F.margin_ranking_loss(h[:, 0], h[:, 1], torch.sign(t[:, 0]), margin=0.2),
    "hinge_embedding": lambda h, t: F.hinge_embedding_loss(h, torch.sign(t), margin=0.5),
    "cosine_embedding": lambda h, t: F.cosine_embedding_loss(h[:2], h[2:], torch.sign(t[:2, 0]), margin=0.1),
    "triplet_margin": lambda h, t: F.triplet_margin_loss(h[:2], t[:2], h[2:], margin=0.5),
    "triplet_margin_with_distance": lambda h, t: F.triplet_margin_with_distance_loss(
        h[:2], t[:2], h[2:], margin=0.5),
    "bce_weight": lambda h, t: F.binary_cross_entropy(
        torch.sigmoid(h), (t > 0).float(), weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])),
    "multilabel_margin": lambda h, t: F.multilabel_margin_loss(h + t, torch.tensor(LABEL_SETS)),
}
#: multilabel_margin's targets: each row's labels, ended by -1
LABEL_SETS = [[3, 0, -1, 1, 1, 1], [5, -1, 0, 0, 0, 0], [1, 2, 4, -1, 0, 0], [0, 1, 2, 3, 4, 5]]
#: the same, against class ids [4] in 0..5
CLASS_LOSSES = {
    "cross_entropy_smoothing": lambda h, c: F.cross_entropy(h, c, label_smoothing=0.1),
    "cross_entropy_ignore_index": lambda h, c: F.cross_entropy(h, c, ignore_index=2),
    "cross_entropy_weight": lambda h, c: F.cross_entropy(
        h, c, weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])),
    "multi_margin": lambda h, c: F.multi_margin_loss(h, c),
    "nll_sum": lambda h, c: F.nll_loss(F.log_softmax(h, 1), c, reduction="sum"),
    "nll_weight_ignore_index": lambda h, c: F.nll_loss(
        F.log_softmax(h, 1), c, weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0]), ignore_index=1),
    "cross_entropy_all_options": lambda h, c: F.cross_entropy(
        h, c, weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0]), label_smoothing=0.2, reduction="sum"),
}
TARGET = lg.Input([4, FEATURES])
CLASSES = lg.Input([4], dtype="int64", high=FEATURES)


class Function(nn.Module):
    """A tensor function as a layer (no parameters of its own)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


class Volume(nn.Module):
    """Feature maps as one-channel volumes: [N, C, H, W] -> [N, 1, C, H, W]."""

    def forward(self, h):
        return h.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(FEATURES, FEATURES)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.fc(x))


class ConvBlock(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, CHANNELS, 3, padding=1)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.conv(x))


def spec_of(make_layer, spatial: bool, train: bool = False) -> lg.Spec:
    """The catalog's spec around one layer (``make_layer()``), on feature maps or vectors, in
    eval mode or (``train``) training mode."""
    torch.manual_seed(0)
    model = ConvBlock(make_layer()) if spatial else Block(make_layer())
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": MAPS if spatial else X},
                   optimizers={"adam": torch.optim.Adam(model.parameters(), lr=1e-2)}, train=train)


def loss_spec(loss, classes: bool) -> lg.Spec:
    """The catalog's spec of a loss: a Linear's output against a target."""
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, FEATURES)
    return lg.Spec(model=model, loss=lambda m, x, t: loss(m(x), t),
                   inputs={"x": X, "t": CLASSES if classes else TARGET},
                   optimizers={"adam": torch.optim.Adam(model.parameters(), lr=1e-2)})


for _name, _make in LAYERS.items():
    globals()[_name] = functools.partial(spec_of, _make, False)
for _name, _make in SPATIAL.items():
    globals()[_name] = functools.partial(spec_of, _make, True)
for _name, _make in TRAINING.items():
    globals()[_name] = functools.partial(spec_of, _make, True, True)
for _name, _fn in FUNCTIONS.items():
    globals()[_name] = functools.partial(spec_of, functools.partial(Function, _fn), False)
for _name, _loss in LOSSES.items():
    globals()[_name] = functools.partial(loss_spec, _loss, False)
for _name, _loss in CLASS_LOSSES.items():
    globals()[_name] = functools.partial(loss_spec, _loss, True)
