"""The layer catalog, Paddle side: the paddle.nn counterparts of ``layers_torch.py``'s layers,
with the arguments that make them compute the same (where a default differs, the torch
value is passed: see docs/support-matrix.md)."""

from __future__ import annotations

import functools

import paddle
import paddle.nn.functional as F
from paddle import nn

import lossgraph as lg

FEATURES = 6
X = lg.Input([4, FEATURES], low=-3.0, high=3.0)

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
    "gelu_tanh": lambda: nn.GELU(approximate=True),
    "silu": lambda: nn.Silu(),
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
    "threshold": lambda: nn.ThresholdedReLU(0.2),
    "softmax": lambda: nn.Softmax(axis=-1),
    "log_softmax": lambda: nn.LogSoftmax(axis=-1),
    "glu": lambda: nn.GLU(axis=-1),
    "dropout_eval_features": lambda: nn.Dropout(0.4),
    "rrelu_eval": lambda: nn.RReLU(0.1, 0.3),
}


SPATIAL = {
    "upsample_nearest": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample_bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
    "upsample_bilinear_corners": lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    "upsample_bicubic": lambda: nn.Upsample(scale_factor=2, mode="bicubic"),
    "upsample_size": lambda: nn.Upsample(size=(7, 9), mode="bilinear"),
    "pixel_shuffle": lambda: nn.PixelShuffle(2),
    "pixel_unshuffle": lambda: nn.Sequential(nn.Pad2D([0, 0, 0, 1]), nn.PixelUnshuffle(2)),
    "zero_pad": lambda: nn.Pad2D([1, 2, 0, 1]),
    "reflection_pad": lambda: nn.Pad2D([1, 2, 0, 1], mode="reflect"),
    "replication_pad": lambda: nn.Pad2D([1, 2, 0, 1], mode="replicate"),
    "max_pool": lambda: nn.MaxPool2D(2),
    "max_pool_ceil": lambda: nn.MaxPool2D(2, ceil_mode=True),
    "avg_pool": lambda: nn.AvgPool2D(3, stride=2, padding=1, exclusive=False),
    "avg_pool_exclusive": lambda: nn.AvgPool2D(3, stride=2, padding=1),
    "adaptive_avg_pool": lambda: nn.AdaptiveAvgPool2D((2, 3)),
    "batch_norm": lambda: nn.BatchNorm2D(CHANNELS),
    "group_norm": lambda: nn.GroupNorm(2, CHANNELS),
    "instance_norm": lambda: nn.InstanceNorm2D(CHANNELS, weight_attr=False, bias_attr=False),
    "instance_norm_affine": lambda: nn.InstanceNorm2D(CHANNELS),
    "layer_norm": lambda: nn.LayerNorm([5, 6]),
    "local_response_norm": lambda: nn.LocalResponseNorm(3),
    "unfold": lambda: nn.Unfold(kernel_sizes=2, strides=1),
    "conv_grouped_dilated": lambda: nn.Conv2D(CHANNELS, 6, 3, padding=2, dilation=2, groups=2),
    "conv_strided": lambda: nn.Conv2D(CHANNELS, 3, 3, stride=2, padding=1, bias_attr=False),
    "conv_transpose": lambda: nn.Conv2DTranspose(CHANNELS, 3, 3, stride=2, padding=1, output_padding=1),
    "conv_transpose_grouped": lambda: nn.Conv2DTranspose(CHANNELS, 4, 2, stride=2, groups=2),
    "conv_padding_reflect": lambda: nn.Conv2D(CHANNELS, 3, 3, padding=1, padding_mode="reflect"),
    "adaptive_max_pool": lambda: nn.AdaptiveMaxPool2D((1, 1)),
    "max_pool_dilated": lambda: MaxPoolDilated(),
    "avg_pool_1d": lambda: nn.Sequential(nn.Flatten(2), nn.AvgPool1D(3, stride=2, exclusive=False)),
    "conv_1d": lambda: nn.Sequential(nn.Flatten(2), nn.Conv1D(CHANNELS, 3, 3, padding=1)),
    "flatten": lambda: nn.Flatten(),
    "channel_shuffle": lambda: nn.ChannelShuffle(2),
    "dropout_eval": lambda: nn.Dropout2D(0.5),
    "adaptive_max_pool_uneven": lambda: nn.AdaptiveMaxPool2D((2, 4)),
    "adaptive_avg_pool_uneven": lambda: nn.AdaptiveAvgPool2D((3, 4)),
    "fold": lambda: nn.Sequential(nn.Unfold(2), nn.Fold((5, 6), 2)),
    # Paddle's grid_sample aligns corners by default, torch's does not
    "grid_sample": lambda: Function(lambda h: F.grid_sample(h, paddle.to_tensor(GRID), align_corners=False)),
    # Paddle's affine_grid aligns corners by default too
    "affine_grid": lambda: Function(lambda h: F.grid_sample(
        h, F.affine_grid(paddle.to_tensor(THETA), [2, CHANNELS, 3, 4], align_corners=False),
        align_corners=False)),
    "grid_sample_corners_nearest": lambda: Function(
        lambda h: F.grid_sample(h, paddle.to_tensor(GRID), mode="nearest")),
    "conv_3d": lambda: nn.Sequential(Volume(), nn.Conv3D(1, 2, 3, padding=1)),
    "conv_transpose_3d": lambda: nn.Sequential(Volume(), nn.Conv3DTranspose(1, 2, 2, stride=2)),
    "max_pool_3d": lambda: nn.Sequential(Volume(), nn.MaxPool3D(2)),
    "avg_pool_3d": lambda: nn.Sequential(Volume(), nn.AvgPool3D(2, stride=1)),
    "adaptive_avg_pool_3d": lambda: nn.Sequential(Volume(), nn.AdaptiveAvgPool3D((2, 1, 3))),
    "batch_norm_3d": lambda: nn.Sequential(Volume(), nn.BatchNorm3D(1)),
    "softmax_2d": lambda: nn.Softmax2D(),
    "lp_pool": lambda: nn.LPPool2D(2, 2),
    "interpolate_area": lambda: Function(lambda h: F.interpolate(h, size=[2, 3], mode="area")),
    "interpolate_bicubic_corners": lambda: Function(
        lambda h: F.interpolate(h, scale_factor=2, mode="bicubic", align_corners=True)),
    "interpolate_linear_1d": lambda: nn.Sequential(
        nn.Flatten(2), Function(lambda h: F.interpolate(h, scale_factor=2, mode="linear", data_format="NCW"))),
    "interpolate_trilinear": lambda: nn.Sequential(
        Volume(), Function(lambda h: F.interpolate(h, scale_factor=2, mode="trilinear"))),
    "conv_transpose_1d": lambda: nn.Sequential(nn.Flatten(2), nn.Conv1DTranspose(CHANNELS, 3, 3, stride=2)),
    "constant_pad_1d": lambda: nn.Sequential(nn.Flatten(2), nn.Pad1D([2, 1], value=0.5)),
    "reflection_pad_1d": lambda: nn.Sequential(nn.Flatten(2), nn.Pad1D(2, mode="reflect")),
    "replication_pad_3d": lambda: nn.Sequential(Volume(), nn.Pad3D(1, mode="replicate")),
}
#: in training mode; Paddle's BatchNorm momentum is the running statistics' weight (1 - torch's)
TRAINING = {
    "dropout": lambda: nn.Dropout(0.3),
    "dropout_2d": lambda: nn.Dropout2D(0.5),
    "alpha_dropout": lambda: nn.AlphaDropout(0.2),
    "feature_alpha_dropout": lambda: nn.FeatureAlphaDropout(0.3),
    "batch_norm_train": lambda: nn.BatchNorm2D(CHANNELS, momentum=0.8),
    "dropout_3d": lambda: nn.Sequential(Volume(), nn.Dropout3D(0.5)),
    "rrelu_train": lambda: nn.RReLU(0.1, 0.3),
}
GRID = [[[[-1.2 + 0.1 * ((7 * i + 3 * j + 5 * k + n) % 24) for k in range(2)] for j in range(4)]
         for i in range(3)] for n in range(2)]
THETA = [[[0.9, 0.2, 0.1], [-0.1, 0.8, 0.05]], [[1.1, -0.3, -0.2], [0.25, 0.7, 0.1]]]
CHANNELS = 4
MAPS = lg.Input([2, 2, 5, 6])


class MaxPoolDilated(nn.Layer):
    """torch's MaxPool2d(dilation=2): Paddle's MaxPool2D has no dilation; the port gathers the
    dilated windows with unfold and takes their max."""

    def forward(self, x):
        n, c, h, w = x.shape
        windows = F.unfold(x, kernel_sizes=2, strides=1, dilations=2)  # [n, c * 4, L]
        out = windows.reshape([n, c, 4, -1]).max(axis=2)
        return out.reshape([n, c, h - 2, w - 2])

INDEX = [[0, 2, 1], [5, 5, 0], [3, 1, 4], [2, 0, 0]]
MASK = [[True, False, False, True, False, True]] * 4

FUNCTIONS = {
    "gather": lambda h: paddle.take_along_axis(h, paddle.to_tensor(INDEX), 1),
    "scatter_add": lambda h: paddle.put_along_axis(paddle.zeros_like(h), paddle.to_tensor(INDEX), h[:, :3], 1,
                                                   reduce="add"),
    "cumsum": lambda h: paddle.cumsum(h, 1),
    "where": lambda h: paddle.where(h > 0, h, 0.1 * h),
    "topk": lambda h: paddle.topk(h, 3, axis=1)[0],
    "sort": lambda h: paddle.sort(h, axis=1, descending=True),
    "roll": lambda h: paddle.roll(h, 2, 1),
    "flip": lambda h: paddle.flip(h, [1]),
    "masked_fill": lambda h: paddle.masked_fill(h, paddle.to_tensor(MASK), 0.5),
    "normalize": lambda h: F.normalize(h, axis=1),
    "logsumexp": lambda h: paddle.logsumexp(h, 1),
    "amax": lambda h: paddle.amax(h, 1),
    "clamp": lambda h: paddle.clip(h, -0.5, 0.5),
    "tril": lambda h: paddle.tril(h, -1),
    "einsum": lambda h: paddle.einsum("bi,bj->ij", h, h),
    "cumprod": lambda h: paddle.cumprod(F.sigmoid(h), 1),
    "prod": lambda h: paddle.prod(F.sigmoid(h), 1),
    "var": lambda h: paddle.var(h, 1),
    "std": lambda h: paddle.std(h, 1),
    "norm": lambda h: paddle.linalg.norm(h, 2, axis=1),
    "scatter": lambda h: paddle.put_along_axis(paddle.zeros_like(h), paddle.to_tensor(DISTINCT), h[:, :3], 1),
    "index_select": lambda h: paddle.index_select(h, paddle.to_tensor([0, 2, 2, 5]), axis=1),
    "repeat_interleave": lambda h: paddle.repeat_interleave(h, 2, axis=1),
    "cdist": lambda h: paddle.cdist(h, h[:2] * 0.5 + 1.0),
    "logcumsumexp": lambda h: paddle.logcumsumexp(h, 1),
    "cummax": lambda h: paddle.cummax(h, 1)[0],
    "kthvalue": lambda h: paddle.kthvalue(h, 2, 1)[0],
    # Paddle's median averages the two middle values by default; torch's takes the lower
    "median": lambda h: paddle.median(h, 1, mode="min")[0],
    "diff": lambda h: paddle.diff(h, axis=1),
    "cross": lambda h: paddle.cross(h[:, :3], h[:, 3:], axis=1),
    "tensordot": lambda h: paddle.tensordot(h, h, axes=[[0], [0]]),
    "kron": lambda h: paddle.kron(h[:2, :2], h[2:, 2:]),
}
DISTINCT = [[0, 2, 1], [5, 4, 0], [3, 1, 4], [2, 0, 5]]


#: Paddle's SmoothL1Loss is Huber's (delta), torch's SmoothL1Loss is Huber's over beta
LOSSES = {
    "huber": lambda h, t: F.smooth_l1_loss(h, t, delta=0.5),
    "smooth_l1": lambda h, t: F.smooth_l1_loss(h, t),
    # torch's SmoothL1Loss(beta) is Huber's with delta=beta, divided by beta
    "smooth_l1_beta": lambda h, t: F.smooth_l1_loss(h, t, delta=0.5) / 0.5,
    "soft_margin": lambda h, t: F.soft_margin_loss(h, paddle.sign(t)),
    "multilabel_soft_margin": lambda h, t: F.multi_label_soft_margin_loss(h, (t > 0).astype("float32")),
    "poisson_nll": lambda h, t: F.poisson_nll_loss(h, t.abs() * 3),
    # Paddle's gaussian_nll_loss gives the variance no gradient (it clips it under no_grad);
    # torch's passes the gradient through its clamp: torch's formula written out
    "gaussian_nll": lambda h, t: (0.5 * (paddle.log(F.sigmoid(h) + 0.5) + (h - t) ** 2 / (F.sigmoid(h) + 0.5))).mean(),
    "l1_sum": lambda h, t: F.l1_loss(h, t, reduction="sum"),
    "mse_none": lambda h, t: F.mse_loss(h, t, reduction="none").mean(),
    "cosine_similarity": lambda h, t: (1 - F.cosine_similarity(h, t, axis=1)).mean(),
    "pairwise_distance": lambda h, t: F.pairwise_distance(h, t).mean(),
    "mse": lambda h, t: F.mse_loss(h, t),
    "l1": lambda h, t: F.l1_loss(h, t),
    "bce": lambda h, t: F.binary_cross_entropy(F.sigmoid(h), (t > 0).astype("float32")),
    "bce_with_logits_pos_weight": lambda h, t: F.binary_cross_entropy_with_logits(
        h, (t > 0).astype("float32"), pos_weight=paddle.to_tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])),
    "kl_div": lambda h, t: F.kl_div(F.log_softmax(h, 1), F.softmax(t, 1), reduction="batchmean"),
    "margin_ranking": lambda h, t: F.margin_ranking_loss(h[:, 0], h[:, 1], paddle.sign(t[:, 0]), margin=0.2),
    "hinge_embedding": lambda h, t: F.hinge_embedding_loss(h, paddle.sign(t), margin=0.5),
    "cosine_embedding": lambda h, t: F.cosine_embedding_loss(h[:2], h[2:], paddle.sign(t[:2, 0]), margin=0.1),
    "triplet_margin": lambda h, t: F.triplet_margin_loss(h[:2], t[:2], h[2:], margin=0.5),
    "triplet_margin_with_distance": lambda h, t: F.triplet_margin_with_distance_loss(
        h[:2], t[:2], h[2:], margin=0.5),
    "bce_weight": lambda h, t: F.binary_cross_entropy(
        F.sigmoid(h), (t > 0).astype("float32"), weight=paddle.to_tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])),
    "multilabel_margin": lambda h, t: F.multi_label_margin_loss(h + t, paddle.to_tensor(LABEL_SETS)),
}
LABEL_SETS = [[3, 0, -1, 1, 1, 1], [5, -1, 0, 0, 0, 0], [1, 2, 4, -1, 0, 0], [0, 1, 2, 3, 4, 5]]
CLASS_LOSSES = {
    "cross_entropy_smoothing": lambda h, c: F.cross_entropy(h, c, label_smoothing=0.1),
    "cross_entropy_ignore_index": lambda h, c: F.cross_entropy(h, c, ignore_index=2),
    "cross_entropy_weight": lambda h, c: F.cross_entropy(
        h, c, weight=paddle.to_tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])),
    "multi_margin": lambda h, c: F.multi_margin_loss(h, c),
    "nll_sum": lambda h, c: F.nll_loss(F.log_softmax(h, 1), c, reduction="sum"),
    "nll_weight_ignore_index": lambda h, c: F.nll_loss(
        F.log_softmax(h, 1), c, weight=paddle.to_tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0]), ignore_index=1),
    # Paddle weights a smoothed sample by its label's weight, torch each class's log-probability
    # in the smoothing term: torch's formula, (1 - e) nll + e / C * the weighted log-probabilities
    "cross_entropy_all_options": lambda h, c: 0.8 * F.nll_loss(
        F.log_softmax(h, 1), c, weight=paddle.to_tensor(WEIGHT), reduction="sum")
    - 0.2 / 6 * (F.log_softmax(h, 1) * paddle.to_tensor(WEIGHT)).sum(),
}
WEIGHT = [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
TARGET = lg.Input([4, FEATURES])
CLASSES = lg.Input([4], dtype="int64", high=FEATURES)


class Function(nn.Layer):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


class Volume(nn.Layer):
    """Feature maps as one-channel volumes: [N, C, H, W] -> [N, 1, C, H, W]."""

    def forward(self, h):
        return h.unsqueeze(1)


class Block(nn.Layer):
    def __init__(self, layer: nn.Layer) -> None:
        super().__init__()
        self.fc = nn.Linear(FEATURES, FEATURES)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.fc(x))


class ConvBlock(nn.Layer):
    def __init__(self, layer: nn.Layer) -> None:
        super().__init__()
        self.conv = nn.Conv2D(2, CHANNELS, 3, padding=1)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.conv(x))


def spec_of(make_layer, spatial: bool, train: bool = False) -> lg.Spec:
    """The catalog's spec around one layer (``make_layer()``), on feature maps or vectors, in
    eval mode or (``train``) training mode."""
    paddle.seed(0)
    model = ConvBlock(make_layer()) if spatial else Block(make_layer())
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": MAPS if spatial else X},
                   optimizers={"adam": paddle.optimizer.Adam(parameters=model.parameters(),
                                                             learning_rate=1e-2)}, train=train)


def loss_spec(loss, classes: bool) -> lg.Spec:
    """The catalog's spec of a loss: a Linear's output against a target."""
    paddle.seed(0)
    model = nn.Linear(FEATURES, FEATURES)
    return lg.Spec(model=model, loss=lambda m, x, t: loss(m(x), t),
                   inputs={"x": X, "t": CLASSES if classes else TARGET},
                   optimizers={"adam": paddle.optimizer.Adam(parameters=model.parameters(),
                                                             learning_rate=1e-2)})


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
