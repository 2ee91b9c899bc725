"""Reference (PyTorch) specs of the bug gallery that the other example files do not already
provide. ``bugs_paddle.py`` holds the Paddle ports, each with one porting bug; ``catalog.py``
pairs them and says where lossgraph must find each bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "losses"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from losses_torch import C, D, N, _head  # noqa: E402
from torch import nn  # noqa: E402

import lossgraph as lg  # noqa: E402

X = lg.Input([N, D], low=-1.0, high=1.0)


def bce_saturated():
    """BCE on probabilities that reach exactly 0 and 1 (clipped)."""

    def loss(model, x, target):
        return F.binary_cross_entropy(torch.clamp(model(x) * 10.0, 0.0, 1.0), target)

    return lg.Spec(model=_head(), loss=loss,
                   inputs={"x": X, "target": lg.Input([N, D], low=0.0, high=1.0)})


def kl_batchmean():
    def loss(model, x, t):
        return F.kl_div(F.log_softmax(model(x), dim=-1), F.softmax(t, dim=-1), reduction="batchmean")

    return lg.Spec(model=_head(), loss=loss, inputs={"x": X, "t": X})


def ce_spatial():
    """Cross entropy over a sequence: logits [N, C, L], the class axis is 1."""

    def loss(model, x, label):
        logits = model(x).reshape(N, C, C)
        return F.cross_entropy(logits, label)

    return lg.Spec(model=_head(D, C * C), loss=loss,
                   inputs={"x": X, "label": lg.Input([N, C], dtype="int64", high=C)})


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)  # count_include_pad=True by default

    def forward(self, x):
        return self.pool(self.conv(x))


def pooled():
    def loss(model, img):
        return (model(img) ** 2).mean()

    torch.manual_seed(0)
    return lg.Spec(model=Pooled(), loss=loss, inputs={"img": lg.Input([2, 2, 5, 5])})


class TinyGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Linear(4, D)
        self.discriminator = nn.Linear(D, 1)


def gan_loss(model, z, real):
    fake = model.generator(z)
    bce = F.binary_cross_entropy_with_logits
    d_real, d_fake = model.discriminator(real), model.discriminator(fake.detach())
    g_fake = model.discriminator(fake)
    return {
        "d_loss": bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake)),
        "g_loss": bce(g_fake, torch.ones_like(g_fake)),
    }


def gan_train():
    """A GAN whose D step sees the generator's output detached."""
    torch.manual_seed(0)
    model = TinyGAN()
    return lg.Spec(
        model=model, loss=gan_loss, inputs={"z": lg.Input([N, 4]), "real": X},
        optimizers={"d": torch.optim.SGD(model.discriminator.parameters(), lr=0.1),
                    "g": torch.optim.SGD(model.generator.parameters(), lr=0.1)},
        schedule=[("d_loss", "d"), ("g_loss", "g")],
    )


class Classifier(nn.Module):
    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if norm else nn.Identity()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 4 * 4, C)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(h.flatten(1)))


def classification_loss(model, img, label):
    return {"loss": F.cross_entropy(model(img), label)}


IMG = {"img": lg.Input([4, 2, 4, 4]), "label": lg.Input([4], dtype="int64", high=C)}


def classifier():
    """Trained with Adam (weight decay 1e-4) and a StepLR schedule, dropout on."""
    torch.manual_seed(0)
    model = Classifier()
    adam = torch.optim.Adam(model.parameters(), lr=0.01, eps=1e-8, weight_decay=1e-4)
    return lg.Spec(
        model=model, loss=classification_loss, inputs=IMG, train=True,
        optimizers={"adam": adam},
        lr_schedulers={"adam": torch.optim.lr_scheduler.StepLR(adam, step_size=2, gamma=0.5)},
    )


def bn_classifier():
    """With BatchNorm in training mode (running statistics updated every step)."""
    torch.manual_seed(0)
    model = Classifier(norm=True)
    model.drop.p = 0.0
    return lg.Spec(
        model=model, loss=classification_loss, inputs=IMG, train=True,
        optimizers={"sgd": torch.optim.SGD(model.parameters(), lr=0.05)},
    )


class WeightedHead(nn.Module):
    """A head whose criterion is a submodule: BCEWithLogits with a positive-class weight, a
    buffer of the model (``criterion.pos_weight``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(D, D)
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=torch.full([D], 3.0))

    def forward(self, x):
        return self.fc(x)


def bce_pos_weight():
    """Multi-label BCE with logits, positives weighted 3:1."""

    def loss(model, x, target):
        return model.criterion(model(x), target)

    return lg.Spec(model=WeightedHead(), loss=loss,
                   inputs={"x": X, "target": lg.Input([N, D], low=0.0, high=1.0)})


class ActorCritic(nn.Module):
    """A policy and a value head on a shared body (A2C)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D, 16)
        self.policy = nn.Linear(16, C)
        self.value = nn.Linear(16, 1)

    def forward(self, obs):
        h = torch.tanh(self.body(obs))
        return self.policy(h), self.value(h).squeeze(-1)


ACTOR_CRITIC_INPUTS = {"obs": X, "action": lg.Input([N], dtype="int64", high=C),
                       "ret": lg.Input([N], low=-1.0, high=1.0)}


def _actor_critic(loss):
    torch.manual_seed(0)
    model = ActorCritic()
    return lg.Spec(model=model, loss=loss, inputs=ACTOR_CRITIC_INPUTS,
                   optimizers={"adam": torch.optim.Adam(model.parameters(), lr=0.01)})


def actor_critic_loss(model, obs, action, ret):
    logits, value = model(obs)
    logp = F.log_softmax(logits, -1).gather(1, action.unsqueeze(1)).squeeze(1)
    advantage = ret - value
    actor = -(logp * advantage.detach()).mean()  # the policy gradient must not move the critic
    critic = advantage.pow(2).mean()
    return actor + 0.5 * critic


def actor_critic():
    """A2C: the advantage feeds both terms, detached in the actor's."""
    return _actor_critic(actor_critic_loss)


def actor_critic_value_detached():
    """The same training written the other common way: the advantage from a detached value,
    the critic's error from the value itself."""

    def loss(model, obs, action, ret):
        logits, value = model(obs)
        logp = F.log_softmax(logits, -1).gather(1, action.unsqueeze(1)).squeeze(1)
        advantage = ret - value.detach()
        return -(logp * advantage).mean() + 0.5 * (ret - value).pow(2).mean()

    return _actor_critic(loss)


class Clipped(nn.Module):
    """A hidden layer clipped to [-0.5, 0.5]: by clamp, or by a straight-through estimate
    (the clipped values forward, the gradient passed as if unclipped)."""

    def __init__(self, straight_through):
        super().__init__()
        self.fc1 = nn.Linear(D, 8)
        self.fc2 = nn.Linear(8, C)
        self.straight_through = straight_through

    def forward(self, x):
        h = self.fc1(x)
        if self.straight_through:
            h = h + (h.clamp(-0.5, 0.5) - h).detach()
        else:
            h = h.clamp(-0.5, 0.5)
        return self.fc2(h)


def _clipped(straight_through):
    torch.manual_seed(0)
    model = Clipped(straight_through)
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": lg.Input([N, D], low=-2.0, high=2.0)},
                   optimizers={"sgd": torch.optim.SGD(model.parameters(), lr=0.1)})


def clipped():
    return _clipped(False)


def clipped_straight_through():
    return _clipped(True)
