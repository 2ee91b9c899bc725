"""Paddle ports for the bug gallery: a correct port of each reference in ``bugs_torch.py``,
and ports with one real porting bug each (see ``catalog.py`` for where each is found)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("discogan", "losses")]

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from discogan_paddle import build_model, make_spec  # noqa: E402
from losses_paddle import C, D, N, _head  # noqa: E402
from paddle import nn  # noqa: E402

import lossgraph as lg  # noqa: E402

X = lg.Input([N, D], low=-1.0, high=1.0)


def bce_no_clamp():
    """BCE written by hand with an epsilon instead of BCELoss's clamp of log at -100."""

    def loss(model, x, target):
        p = paddle.clip(model(x) * 10.0, 0.0, 1.0)
        return -(target * paddle.log(p + 1e-12) + (1 - target) * paddle.log(1 - p + 1e-12)).mean()

    return lg.Spec(model=_head(), loss=loss,
                   inputs={"x": X, "target": lg.Input([N, D], low=0.0, high=1.0)})


def kl_mean():
    """KL divergence with reduction 'mean' where the original used 'batchmean'."""

    def loss(model, x, t):
        return F.kl_div(F.log_softmax(model(x), axis=-1), F.softmax(t, axis=-1), reduction="mean")

    return lg.Spec(model=_head(), loss=loss, inputs={"x": X, "t": X})


def ce_last_axis():
    """Paddle's cross_entropy takes the class axis last (axis=-1) unless told; the logits are
    [N, C, L] with C == L here, so the shapes fit and the classes are wrong."""

    def loss(model, x, label):
        logits = model(x).reshape([N, C, C])
        return F.cross_entropy(logits, label.unsqueeze(-1))

    return lg.Spec(model=_head(D, C * C), loss=loss,
                   inputs={"x": X, "label": lg.Input([N, C], dtype="int64", high=C)})


class Pooled(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2D(2, 3, 3, padding=1)
        self.pool = nn.AvgPool2D(3, stride=2, padding=1)  # exclusive=True by default

    def forward(self, x):
        return self.pool(self.conv(x))


def pooled_exclusive():
    def loss(model, img):
        return (model(img) ** 2).mean()

    paddle.seed(0)
    return lg.Spec(model=Pooled(), loss=loss, inputs={"img": lg.Input([2, 2, 5, 5])})


def discogan_bn_epsilon():
    """DiscoGAN with one BatchNorm at epsilon 1e-3 (a port that copied another default)."""
    model = build_model()
    model.discriminator_B.bn3._epsilon = 1e-3
    return make_spec(model)


class TinyGAN(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Linear(4, D)
        self.discriminator = nn.Linear(D, 1)


def _gan(loss):
    paddle.seed(0)
    model = TinyGAN()
    return lg.Spec(
        model=model, loss=loss, inputs={"z": lg.Input([N, 4]), "real": X},
        optimizers={"d": paddle.optimizer.SGD(0.1, parameters=model.discriminator.parameters()),
                    "g": paddle.optimizer.SGD(0.1, parameters=model.generator.parameters())},
        schedule=[("d_loss", "d"), ("g_loss", "g")],
    )


def _gan_losses(model, z, real, detach):
    fake = model.generator(z)
    bce = F.binary_cross_entropy_with_logits
    d_real = model.discriminator(real)
    d_fake = model.discriminator(fake.detach() if detach else fake)
    g_fake = model.discriminator(fake)
    return {
        "d_loss": bce(d_real, paddle.ones_like(d_real)) + bce(d_fake, paddle.zeros_like(d_fake)),
        "g_loss": bce(g_fake, paddle.ones_like(g_fake)),
    }


def gan_loss(model, z, real):
    return _gan_losses(model, z, real, detach=True)


def gan_loss_no_detach(model, z, real):
    return _gan_losses(model, z, real, detach=False)


def gan_train():
    return _gan(gan_loss)


def gan_no_detach():
    """The D step backpropagates into the generator: fake.detach() was dropped in the port."""
    return _gan(gan_loss_no_detach)


class Classifier(nn.Layer):
    def __init__(self, norm: bool = False, p: float = 0.5, momentum: float = 0.9) -> None:
        super().__init__()
        self.conv = nn.Conv2D(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2D(4, momentum=momentum) if norm else nn.Identity()
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(4 * 4 * 4, C)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(h.flatten(1)))


def classification_loss(model, img, label):
    return {"loss": F.cross_entropy(model(img), label)}


IMG = {"img": lg.Input([4, 2, 4, 4]), "label": lg.Input([4], dtype="int64", high=C)}


def _classifier(epsilon=1e-8, weight_decay=1e-4, when="after", p=0.5):
    paddle.seed(0)
    model = Classifier(p=p)
    schedule = paddle.optimizer.lr.StepDecay(0.01, step_size=2, gamma=0.5)
    adam = paddle.optimizer.Adam(schedule, epsilon=epsilon, weight_decay=weight_decay,
                                 parameters=model.parameters())
    return lg.Spec(model=model, loss=classification_loss, inputs=IMG, train=True,
                   optimizers={"adam": adam},
                   lr_schedulers={"adam": lg.LRSchedule(schedule, when=when)})


def classifier():
    """The correct port: Adam(L2 decay 1e-4), StepDecay(2, 0.5), dropout 0.5."""
    return _classifier()


def classifier_adam_epsilon():
    return _classifier(epsilon=1e-6)


def classifier_no_weight_decay():
    return _classifier(weight_decay=None)


def classifier_scheduler_before():
    """scheduler.step() called before optimizer.step() in the port's loop."""
    return _classifier(when="before")


def classifier_dropout():
    return _classifier(p=0.3)


def _bn_classifier(momentum):
    paddle.seed(0)
    model = Classifier(norm=True, p=0.0, momentum=momentum)
    return lg.Spec(model=model, loss=classification_loss, inputs=IMG, train=True,
                   optimizers={"sgd": paddle.optimizer.SGD(0.05, parameters=model.parameters())})


def bn_classifier():
    return _bn_classifier(0.9)


def bn_momentum():
    """BatchNorm momentum copied from torch (0.1): Paddle's momentum is torch's 1 - m."""
    return _bn_classifier(0.1)


class WeightedHead(nn.Layer):
    """The port of bugs_torch.WeightedHead; Paddle keeps ``pos_weight`` as a plain tensor
    attribute of the loss (a constant of the graph), torch as a buffer."""

    def __init__(self, pos_weight) -> None:
        super().__init__()
        paddle.seed(0)
        self.fc = nn.Linear(D, D)
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, x):
        return self.fc(x)


def _weighted_head(pos_weight):
    def loss(model, x, target):
        return model.criterion(model(x), target)

    return lg.Spec(model=WeightedHead(pos_weight), loss=loss,
                   inputs={"x": X, "target": lg.Input([N, D], low=0.0, high=1.0)})


def bce_pos_weight():
    """The correct port: positives weighted 3:1."""
    return _weighted_head(paddle.full([D], 3.0))


def bce_no_pos_weight():
    """The port that forgets the criterion's ``pos_weight``."""
    return _weighted_head(None)


class ActorCritic(nn.Layer):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(D, 16)
        self.policy = nn.Linear(16, C)
        self.value = nn.Linear(16, 1)

    def forward(self, obs):
        h = paddle.tanh(self.body(obs))
        return self.policy(h), self.value(h).squeeze(-1)


def _actor_critic(detach):
    def loss(model, obs, action, ret):
        logits, value = model(obs)
        logp = paddle.take_along_axis(F.log_softmax(logits, -1), action.unsqueeze(1), 1).squeeze(1)
        advantage = ret - value
        actor = -(logp * (advantage.detach() if detach else advantage)).mean()
        critic = advantage.pow(2).mean()
        return actor + 0.5 * critic

    paddle.seed(0)
    model = ActorCritic()
    return lg.Spec(model=model, loss=loss,
                   inputs={"obs": X, "action": lg.Input([N], dtype="int64", high=C),
                           "ret": lg.Input([N], low=-1.0, high=1.0)},
                   optimizers={"adam": paddle.optimizer.Adam(parameters=model.parameters(), learning_rate=0.01)})


def actor_critic():
    """The correct port: the actor's term reads a detached advantage."""
    return _actor_critic(True)


def actor_critic_no_detach():
    """The port that forgets the detach: the policy gradient also trains the critic (and the
    shared body through it)."""
    return _actor_critic(False)


class Clipped(nn.Layer):
    def __init__(self, straight_through):
        super().__init__()
        self.fc1 = nn.Linear(D, 8)
        self.fc2 = nn.Linear(8, C)
        self.straight_through = straight_through

    def forward(self, x):
        h = self.fc1(x)
        if self.straight_through:
            h = h + (paddle.clip(h, -0.5, 0.5) - h).detach()
        else:
            h = paddle.clip(h, -0.5, 0.5)
        return self.fc2(h)


def _clipped(straight_through):
    paddle.seed(0)
    model = Clipped(straight_through)
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": lg.Input([N, D], low=-2.0, high=2.0)},
                   optimizers={"sgd": paddle.optimizer.SGD(parameters=model.parameters(), learning_rate=0.1)})


def clipped():
    """The correct port of ``clipped``: clip, differentiated as it is."""
    return _clipped(False)


def clipped_straight_through():
    """The correct port of ``clipped_straight_through``; against ``clipped`` it is the bug:
    the same forward values, the gradient passed straight through the clip."""
    return _clipped(True)
