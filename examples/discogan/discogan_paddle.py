"""DiscoGAN in PaddlePaddle: the port of ``discogan_torch.py`` from the seed documents.

Same architecture and losses; HingeEmbeddingLoss is the hand-written one of
``shared/seeds/loss-alignment-discogan-paddle.md`` (older Paddle had no built-in). Weights are
not converted by hand: ``lossgraph verify`` carries the torch weights across (Conv kernels as
they are, BatchNorm ``running_mean/var`` to ``_mean/_variance``).

    lossgraph export examples/discogan/discogan_paddle.py -o paddle.onnx
    lossgraph verify torch.onnx paddle.onnx --tol 1e-6
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

import lossgraph as lg

RATE = 0.01  # weight of the reconstruction loss


class HingeEmbeddingLoss(nn.Layer):
    """
         / x_i,                   if y_i == 1
    l_i =
         \\ max(0, margin - x_i),  if y_i == -1
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin = margin
        self.reduction = reduction

    def forward(self, x, y):
        loss = paddle.where(y == 1.0, x, paddle.maximum(paddle.to_tensor(0.0), self.margin - x))
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum()


class Discriminator(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(3, 64, 4, 2, 1, bias_attr=False)
        self.relu1 = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2D(64, 64 * 2, 4, 2, 1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(64 * 2)
        self.relu2 = nn.LeakyReLU(0.2)
        self.conv3 = nn.Conv2D(64 * 2, 64 * 4, 4, 2, 1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(64 * 4)
        self.relu3 = nn.LeakyReLU(0.2)
        self.conv4 = nn.Conv2D(64 * 4, 64 * 8, 4, 2, 1, bias_attr=False)
        self.bn4 = nn.BatchNorm2D(64 * 8)
        self.relu4 = nn.LeakyReLU(0.2)
        self.conv5 = nn.Conv2D(64 * 8, 1, 4, 1, 0, bias_attr=False)

    def forward(self, input):
        relu1 = self.relu1(self.conv1(input))
        relu2 = self.relu2(self.bn2(self.conv2(relu1)))
        relu3 = self.relu3(self.bn3(self.conv3(relu2)))
        relu4 = self.relu4(self.bn4(self.conv4(relu3)))
        conv5 = self.conv5(relu4)
        return F.sigmoid(conv5), [relu2, relu3, relu4]


class Generator(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2D(3, 64, 4, 2, 1, bias_attr=False),
            nn.LeakyReLU(0.2),
            nn.Conv2D(64, 64 * 2, 4, 2, 1, bias_attr=False),
            nn.BatchNorm2D(64 * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2D(64 * 2, 64 * 4, 4, 2, 1, bias_attr=False),
            nn.BatchNorm2D(64 * 4),
            nn.LeakyReLU(0.2),
            nn.Conv2D(64 * 4, 64 * 8, 4, 2, 1, bias_attr=False),
            nn.BatchNorm2D(64 * 8),
            nn.LeakyReLU(0.2),
            nn.Conv2DTranspose(64 * 8, 64 * 4, 4, 2, 1, bias_attr=False),
            nn.BatchNorm2D(64 * 4),
            nn.ReLU(),
            nn.Conv2DTranspose(64 * 4, 64 * 2, 4, 2, 1, bias_attr=False),
            nn.BatchNorm2D(64 * 2),
            nn.ReLU(),
            nn.Conv2DTranspose(64 * 2, 64, 4, 2, 1, bias_attr=False),
            nn.BatchNorm2D(64),
            nn.ReLU(),
            nn.Conv2DTranspose(64, 3, 4, 2, 1, bias_attr=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input)


class DiscoGAN(nn.Layer):
    """Every parameter of the port in one layer; criteria are sublayers, as on the torch side."""

    def __init__(self, hinge_margin: float = 1.0) -> None:
        super().__init__()
        self.generator_A = Generator()
        self.generator_B = Generator()
        self.discriminator_A = Discriminator()
        self.discriminator_B = Discriminator()
        self.recon_criterion = nn.MSELoss()
        self.gan_criterion = nn.BCELoss()
        self.feat_criterion = HingeEmbeddingLoss(margin=hinge_margin)


def get_fm_loss(real_feats, fake_feats, criterion):
    losses = 0
    for real_feat, fake_feat in zip(real_feats, fake_feats):
        l2 = (real_feat.mean(0) - fake_feat.mean(0)) * (real_feat.mean(0) - fake_feat.mean(0))
        loss = criterion(l2, paddle.ones(l2.shape))
        losses += loss
    return losses


def get_gan_loss(dis_real, dis_fake, criterion):
    labels_dis_real = paddle.ones([dis_real.shape[0], 1])
    labels_dis_fake = paddle.zeros([dis_fake.shape[0], 1])
    labels_gen = paddle.ones([dis_fake.shape[0], 1])

    dis_real = dis_real.reshape([dis_real.shape[0], 1])
    dis_fake = dis_fake.reshape([dis_fake.shape[0], 1])
    dis_loss = criterion(dis_real, labels_dis_real) * 0.5 + criterion(dis_fake, labels_dis_fake) * 0.5
    gen_loss = criterion(dis_fake, labels_gen)
    return dis_loss, gen_loss


def discogan_loss(model, A, B):
    AB = model.generator_B(B)
    BA = model.generator_A(A)

    ABA = model.generator_A(AB)
    BAB = model.generator_B(BA)

    # Reconstruction Loss
    recon_loss_A = model.recon_criterion(ABA, A)
    recon_loss_B = model.recon_criterion(BAB, B)

    # Real/Fake GAN Loss (A)
    A_dis_real, A_feats_real = model.discriminator_A(A)
    A_dis_fake, A_feats_fake = model.discriminator_A(BA)

    dis_loss_A, gen_loss_A = get_gan_loss(A_dis_real, A_dis_fake, model.gan_criterion)
    fm_loss_A = get_fm_loss(A_feats_real, A_feats_fake, model.feat_criterion)

    # Real/Fake GAN Loss (B)
    B_dis_real, B_feats_real = model.discriminator_B(B)
    B_dis_fake, B_feats_fake = model.discriminator_B(AB)

    dis_loss_B, gen_loss_B = get_gan_loss(B_dis_real, B_dis_fake, model.gan_criterion)
    fm_loss_B = get_fm_loss(B_feats_real, B_feats_fake, model.feat_criterion)

    gen_loss_A_total = (gen_loss_B * 0.1 + fm_loss_B * 0.9) * (1.0 - RATE) + recon_loss_A * RATE
    gen_loss_B_total = (gen_loss_A * 0.1 + fm_loss_A * 0.9) * (1.0 - RATE) + recon_loss_B * RATE

    gen_loss = gen_loss_A_total + gen_loss_B_total
    dis_loss = dis_loss_A + dis_loss_B
    return {"gen_loss": gen_loss, "dis_loss": dis_loss}


def build_model(hinge_margin: float = 1.0) -> DiscoGAN:
    paddle.seed(0)
    return DiscoGAN(hinge_margin)


def make_spec(model: DiscoGAN, loss=discogan_loss, train: bool = False, loop: bool = False,
              ema_decay: float = 0.999) -> lg.Spec:
    """``loop``: the GAN training loop of the seed, each optimizer clipping its gradients at a
    global norm of 1.0 (``grad_clip``) and an EMA of the generators' weights."""
    gen_params = model.generator_A.parameters() + model.generator_B.parameters()
    dis_params = model.discriminator_A.parameters() + model.discriminator_B.parameters()
    clip = paddle.nn.ClipGradByGlobalNorm(1.0) if loop else None
    return lg.Spec(
        model=model,
        loss=loss,
        inputs={
            "A": lg.Input([4, 3, 64, 64], low=0.0, high=1.0),
            "B": lg.Input([4, 3, 64, 64], low=0.0, high=1.0),
        },
        optimizers={
            "dis": paddle.optimizer.Adam(2e-4, beta1=0.5, beta2=0.999, parameters=dis_params,
                                         weight_decay=1e-5, grad_clip=clip),
            "gen": paddle.optimizer.Adam(2e-4, beta1=0.5, beta2=0.999, parameters=gen_params,
                                         weight_decay=1e-5, grad_clip=clip),
        },
        schedule=[("dis_loss", "dis"), ("gen_loss", "gen")],
        train=train,
        ema={"gen": lg.EMA(ema_decay)} if loop else None,
    )


def spec() -> lg.Spec:
    """DiscoGAN in eval mode, as in the seed's loss alignment."""
    return make_spec(build_model())


def spec_train() -> lg.Spec:
    """DiscoGAN in training mode (batch statistics; running statistics as graph outputs)."""
    return make_spec(build_model(), train=True)


def spec_gan_loop() -> lg.Spec:
    """DiscoGAN trained as GANs are: training mode, gradients clipped, an EMA of the generators."""
    return make_spec(build_model(), train=True, loop=True)
