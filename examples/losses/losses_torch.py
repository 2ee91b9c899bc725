"""The seed losses in PyTorch, one spec per loss, each reduction/variant a named output.

Every spec has a small trainable model producing the loss's inputs, so parameters, gradients
and the weight transplant across frameworks are exercised too. ``losses_paddle.py`` defines the
same specs (same function names, same loss names) in PaddlePaddle.

    lossgraph export examples/losses/losses_torch.py:bce -o bce_torch.onnx
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lossgraph as lg

N, D, C = 2, 4, 3  # batch, features, classes
K = 2  # outputs per sample of the heads whose element-wise losses are summed


class Head(nn.Module):
    """One Linear layer: the smallest model whose output feeds a loss."""

    def __init__(self, d_in: int = D, d_out: int = D) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.fc(x)


def _head(d_in: int = D, d_out: int = D) -> Head:
    torch.manual_seed(0)
    return Head(d_in, d_out)


def _reductions(fn, *args, **kwargs) -> dict:
    """mean, sum and none (summed downstream) of one functional loss."""
    return {
        "mean": fn(*args, reduction="mean", **kwargs),
        "sum": fn(*args, reduction="sum", **kwargs),
        "none": fn(*args, reduction="none", **kwargs).sum(),
    }


def _prefixed(prefix: str, losses: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in losses.items()}


# Shapes and ranges are chosen so that every loss, `sum` included, stays below 4 for every seed
# (measured over seeds 0-999: at most 3.8). Below 4 a float32 ulp is 2.4e-7, so the few ulps by
# which two kernels' sums of the same terms can differ stay within the 1e-6 that eager vs ONNX
# Runtime and torch vs Paddle are held to; at 8 or more, 2 ulps already exceed it.
X = lg.Input([N, D], low=-0.5, high=0.5)  # features
HALF = lg.Input([N, D], low=-0.5, high=0.5)
HALF_K = lg.Input([N, K], low=-0.5, high=0.5)
UNIT_K = lg.Input([N, K], low=0.0, high=1.0)
SIGN_K = lg.Input([N, K], choices=[-1.0, 1.0])
SIGN_1 = lg.Input([N, 1], choices=[-1.0, 1.0])


def bce():
    def loss(model, x, target, weight):
        pred = torch.sigmoid(model(x))
        return {
            **_reductions(F.binary_cross_entropy, pred, target),
            "weighted_mean": F.binary_cross_entropy(pred, target, weight=weight),
        }

    return lg.Spec(model=_head(D, K), loss=loss,
                   inputs={"x": X, "target": UNIT_K, "weight": lg.Input([K], low=0.5, high=1.5)})


def mse():
    def loss(model, x, target):
        return _reductions(F.mse_loss, model(x), target)

    return lg.Spec(model=_head(), loss=loss, inputs={"x": X, "target": HALF})


def l1():
    def loss(model, x, target):
        return _reductions(F.l1_loss, model(x), target)

    return lg.Spec(model=_head(D, K), loss=loss, inputs={"x": X, "target": HALF_K})


def hinge_embedding():
    """HingeEmbeddingLoss on one score per sample (its input is a distance between a pair).

    With margin 1 each y = -1 term is about 1: more terms per sample would put `sum` over 4."""

    def loss(model, x, y):
        out = model(x)
        return {
            **_reductions(F.hinge_embedding_loss, out, y),
            "margin2_mean": F.hinge_embedding_loss(out, y, margin=2.0),
        }

    return lg.Spec(model=_head(D, 1), loss=loss, inputs={"x": X, "y": SIGN_1})


def hinge_embedding_handwritten():
    """The counterpart of the Paddle port's hand-written HingeEmbeddingLoss (mean and sum)."""

    def loss(model, x, y):
        out = model(x)
        return {
            "mean": F.hinge_embedding_loss(out, y),
            "sum": F.hinge_embedding_loss(out, y, reduction="sum"),
            "margin2_mean": F.hinge_embedding_loss(out, y, margin=2.0),
        }

    return lg.Spec(model=_head(D, 1), loss=loss, inputs={"x": X, "y": SIGN_1})


def margin_ranking():
    def loss(model, a, b, y):
        x1, x2 = model(a), model(b)
        return {
            **_reductions(F.margin_ranking_loss, x1, x2, y),
            "margin_mean": F.margin_ranking_loss(x1, x2, y, margin=0.3),
        }

    return lg.Spec(model=_head(D, K), loss=loss, inputs={"a": X, "b": X, "y": SIGN_K})


def triplet_margin():
    def loss(model, a, p, n):
        anchor, pos, neg = model(a), model(p), model(n)
        return {
            **_reductions(F.triplet_margin_loss, anchor, pos, neg),
            "p1_mean": F.triplet_margin_loss(anchor, pos, neg, p=1),
            "p3_mean": F.triplet_margin_loss(anchor, pos, neg, p=3),
            "eps_mean": F.triplet_margin_loss(anchor, pos, neg, eps=1e-2),
            "swap_mean": F.triplet_margin_loss(anchor, pos, neg, swap=True),
            # a non-default margin; with 3.0 the sum over the batch reached 9
            "margin_sum": F.triplet_margin_loss(anchor, pos, neg, margin=0.5, reduction="sum"),
        }

    return lg.Spec(model=_head(), loss=loss, inputs={"a": X, "p": X, "n": X})


def kl_div():
    def loss(model, x, t):
        log_p = F.log_softmax(model(x), dim=-1)
        target = F.softmax(t, dim=-1)
        log_target = F.log_softmax(t, dim=-1)
        out = {}
        for reduction in ("mean", "sum", "batchmean"):
            out[reduction] = F.kl_div(log_p, target, reduction=reduction)
            out[f"log_target_{reduction}"] = F.kl_div(
                log_p, log_target, reduction=reduction, log_target=True
            )
        out["none"] = F.kl_div(log_p, target, reduction="none").sum()
        out["log_target_none"] = F.kl_div(log_p, log_target, reduction="none", log_target=True).sum()
        return out

    return lg.Spec(model=_head(), loss=loss, inputs={"x": X, "t": X})


def bce_with_logits():
    def loss(model, x, target, weight, pos_weight):
        logits = model(x)
        return {
            **_reductions(F.binary_cross_entropy_with_logits, logits, target),
            "weight_mean": F.binary_cross_entropy_with_logits(logits, target, weight=weight),
            "pos_weight_mean": F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=pos_weight
            ),
            "both_sum": F.binary_cross_entropy_with_logits(
                logits, target, weight=weight, pos_weight=pos_weight, reduction="sum"
            ),
        }

    # weights up to 1 and pos_weight up to 1.25 keep `both_sum` below 4
    weight = lg.Input([K], low=0.5, high=1.0)
    return lg.Spec(model=_head(D, K), loss=loss,
                   inputs={"x": X, "target": UNIT_K, "weight": weight,
                           "pos_weight": lg.Input([K], low=1.0, high=1.25)})


def smooth_l1():
    def loss(model, x, target):
        pred = model(x)
        return {
            **_reductions(F.smooth_l1_loss, pred, target),
            "huber_mean": F.huber_loss(pred, target, delta=1.0),
            "huber_delta_mean": F.huber_loss(pred, target, delta=0.5),
            "huber_delta_sum": F.huber_loss(pred, target, delta=0.5, reduction="sum"),
            "beta_mean": F.smooth_l1_loss(pred, target, beta=0.5),
        }

    return lg.Spec(model=_head(D, K), loss=loss,
                   inputs={"x": X, "target": lg.Input([N, K], low=-1.25, high=1.25)})


def cross_entropy():
    def loss(model, x, label, weight):
        logits = model(x)
        return {
            **_reductions(F.cross_entropy, logits, label),
            "weighted_mean": F.cross_entropy(logits, label, weight=weight),
            "weighted_sum": F.cross_entropy(logits, label, weight=weight, reduction="sum"),
            "smoothing_mean": F.cross_entropy(logits, label, label_smoothing=0.1),
            "smoothing_weighted_mean": F.cross_entropy(
                logits, label, weight=weight, label_smoothing=0.2
            ),
            "smoothing_none": F.cross_entropy(
                logits, label, label_smoothing=0.1, reduction="none"
            ).sum(),
        }

    return lg.Spec(model=_head(D, C), loss=loss,
                   inputs={"x": X, "label": lg.Input([N], dtype="int64", high=C),
                           "weight": lg.Input([C], low=0.5, high=1.0)})


def nll():
    def loss(model, x, label, weight):
        log_p = F.log_softmax(model(x), dim=1)
        return {
            **_reductions(F.nll_loss, log_p, label),
            "weighted_mean": F.nll_loss(log_p, label, weight=weight),
        }

    return lg.Spec(model=_head(D, C), loss=loss,
                   inputs={"x": X, "label": lg.Input([N], dtype="int64", high=C),
                           "weight": lg.Input([C], low=0.5, high=2.0)})


def cosine_embedding():
    def loss(model, a, b, y):
        x1, x2 = model(a), model(b)
        return {
            **_reductions(F.cosine_embedding_loss, x1, x2, y),
            "margin_mean": F.cosine_embedding_loss(x1, x2, y, margin=0.2),
        }

    return lg.Spec(model=_head(), loss=loss,
                   inputs={"a": X, "b": X, "y": lg.Input([N], choices=[-1.0, 1.0])})


def charbonnier():
    """MMagic's CharbonnierLoss: sqrt((pred - target)^2 + eps), eps = 1e-12."""

    def charbonnier_loss(pred, target, eps=1e-12):
        return torch.sqrt((pred - target) ** 2 + eps)

    def loss(model, x, target):
        values = charbonnier_loss(model(x), target)
        return {"mean": values.mean(), "sum": values.sum(),
                "eps_mean": charbonnier_loss(model(x), target, eps=1e-3).mean()}

    return lg.Spec(model=_head(D, K), loss=loss, inputs={"x": X, "target": HALF_K})


class TinyGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Linear(4, D)
        self.discriminator = nn.Linear(D, 1)


def _gan_model() -> TinyGAN:
    torch.manual_seed(0)
    return TinyGAN()


def gan():
    """The D and G losses of ``gan-losses-tensorflow.md``: vanilla, lsgan, wgan, hinge.

    The discriminator sees the generator's output detached, as in a GAN's D step."""

    def loss(model, z, real):
        fake = model.generator(z)
        d_real = model.discriminator(real)
        d_fake_detached = model.discriminator(fake.detach())
        d_fake = model.discriminator(fake)
        ones, zeros = torch.ones_like(d_real), torch.zeros_like(d_real)
        bce = F.binary_cross_entropy_with_logits
        return {
            "d_vanilla": bce(d_real, ones) + bce(d_fake_detached, zeros),
            "g_vanilla": bce(d_fake, ones),
            "d_lsgan": ((d_real - 1.0) ** 2).mean() + (d_fake_detached ** 2).mean(),
            "g_lsgan": ((d_fake - 1.0) ** 2).mean(),
            "d_wgan": -d_real.mean() + d_fake_detached.mean(),
            "g_wgan": -d_fake.mean(),
            "d_hinge": F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake_detached).mean(),
            "g_hinge": -d_fake.mean(),
        }

    return lg.Spec(model=_gan_model(), loss=loss,
                   inputs={"z": lg.Input([N, 4], low=-1.0, high=1.0), "real": X})


def disc_shift():
    """MMagic's DiscShiftLoss: loss_weight * mean(pred ** 2)."""

    def loss(model, x):
        pred = model(x)
        return {"loss": 0.001 * (pred ** 2).mean(), "sum": (pred ** 2).sum()}

    return lg.Spec(model=_head(D, 1), loss=loss, inputs={"x": X})


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = F.leaky_relu(self.conv1(x), 0.2)
        f2 = F.leaky_relu(self.conv2(f1), 0.2)
        return [f1, f2]


def _conv_net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet()


IMAGE = lg.Input([2, 3, 6, 6], low=0.0, high=1.0)


def total_variation():
    """Total variation of a predicted image (L1 of neighbour differences), mean and sum."""

    def loss(model, img):
        pred = model(img)[1]
        dy = (pred[:, :, 1:, :] - pred[:, :, :-1, :]).abs()
        dx = (pred[:, :, :, 1:] - pred[:, :, :, :-1]).abs()
        return {"mean": dy.mean() + dx.mean(), "sum": dy.sum() + dx.sum()}

    return lg.Spec(model=_conv_net(), loss=loss,
                   inputs={"img": lg.Input([1, 3, 6, 6], low=0.0, high=1.0)})


def feature_matching():
    """Feature matching between real and fake features: L1 (pix2pixHD) and DiscoGAN's
    hinge-embedding form."""

    def loss(model, real, fake):
        real_feats = model(real)
        fake_feats = model(fake)
        l1_fm = sum(F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats))
        hinge_fm = 0
        for r, f in zip(real_feats, fake_feats):
            l2 = (r.mean(0) - f.mean(0)) * (r.mean(0) - f.mean(0))
            hinge_fm = hinge_fm + F.hinge_embedding_loss(l2, torch.ones(l2.size()))
        return {"l1": l1_fm, "hinge": hinge_fm}

    return lg.Spec(model=_conv_net(), loss=loss, inputs={"real": IMAGE, "fake": IMAGE})


#: Every spec in this file, for tests and scripts.
SPECS = [
    "bce", "mse", "l1", "hinge_embedding", "hinge_embedding_handwritten", "margin_ranking",
    "triplet_margin", "kl_div", "bce_with_logits", "smooth_l1", "cross_entropy", "nll",
    "cosine_embedding", "charbonnier", "gan", "disc_shift", "total_variation", "feature_matching",
]
