"""DiscoGAN (Kim et al., 2017) in PyTorch, with the losses of the seed port.

Two generators (Conv/BatchNorm/LeakyReLU encoder, ConvTranspose/BatchNorm/ReLU decoder) and two
discriminators returning a probability and a list of features; the losses are BCE GAN loss, MSE
reconstruction and hinge-embedding feature matching, combined into ``gen_loss`` and ``dis_loss``
exactly as in ``shared/seeds/loss-alignment-discogan-paddle.md``. Batch 4 x 3 x 64 x 64.

    lossgraph export examples/discogan/discogan_torch.py -o torch.onnx
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

import lossgraph as lg

RATE = 0.01  # weight of the reconstruction loss
HINGE_MARGIN = 1.0


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 4, 2, 1, bias=False)
        self.relu1 = nn.LeakyReLU(0.2, inplace=True)
        self.conv2 = nn.Conv2d(64, 64 * 2, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64 * 2)
        self.relu2 = nn.LeakyReLU(0.2, inplace=True)
        self.conv3 = nn.Conv2d(64 * 2, 64 * 4, 4, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(64 * 4)
        self.relu3 = nn.LeakyReLU(0.2, inplace=True)
        self.conv4 = nn.Conv2d(64 * 4, 64 * 8, 4, 2, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(64 * 8)
        self.relu4 = nn.LeakyReLU(0.2, inplace=True)
        self.conv5 = nn.Conv2d(64 * 8, 1, 4, 1, 0, bias=False)

    def forward(self, input):
        relu1 = self.relu1(self.conv1(input))
        relu2 = self.relu2(self.bn2(self.conv2(relu1)))
        relu3 = self.relu3(self.bn3(self.conv3(relu2)))
        relu4 = self.relu4(self.bn4(self.conv4(relu3)))
        conv5 = self.conv5(relu4)
        return torch.sigmoid(conv5), [relu2, relu3, relu4]


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(3, 64, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 64 * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64 * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64 * 2, 64 * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64 * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64 * 4, 64 * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64 * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(64 * 8, 64 * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64 * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(64 * 4, 64 * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64 * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(64 * 2, 64, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(True),
            nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input)


class DiscoGAN(nn.Module):
    """Every parameter of the port in one module; the criteria are submodules so that the
    report can name them as scopes (``feat_criterion``, ...)."""

    def __init__(self, hinge_margin: float = HINGE_MARGIN) -> None:
        super().__init__()
        self.generator_A = Generator()
        self.generator_B = Generator()
        self.discriminator_A = Discriminator()
        self.discriminator_B = Discriminator()
        self.recon_criterion = nn.MSELoss()
        self.gan_criterion = nn.BCELoss()
        self.feat_criterion = nn.HingeEmbeddingLoss(margin=hinge_margin)


def get_fm_loss(real_feats, fake_feats, criterion):
    losses = 0
    for real_feat, fake_feat in zip(real_feats, fake_feats):
        l2 = (real_feat.mean(0) - fake_feat.mean(0)) * (real_feat.mean(0) - fake_feat.mean(0))
        loss = criterion(l2, torch.ones(l2.size()))
        losses += loss
    return losses


def get_gan_loss(dis_real, dis_fake, criterion, dis_weight=0.5):
    labels_dis_real = torch.ones([dis_real.size()[0], 1])
    labels_dis_fake = torch.zeros([dis_fake.size()[0], 1])
    labels_gen = torch.ones([dis_fake.size()[0], 1])

    dis_real = dis_real.reshape([dis_real.shape[0], 1])
    dis_fake = dis_fake.reshape([dis_fake.shape[0], 1])
    dis_loss = (
        criterion(dis_real, labels_dis_real) * dis_weight
        + criterion(dis_fake, labels_dis_fake) * (1.0 - dis_weight)
    )
    gen_loss = criterion(dis_fake, labels_gen)
    return dis_loss, gen_loss


def discogan_loss(model, A, B, rate=RATE, dis_weight=0.5):
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

    dis_loss_A, gen_loss_A = get_gan_loss(A_dis_real, A_dis_fake, model.gan_criterion, dis_weight)
    fm_loss_A = get_fm_loss(A_feats_real, A_feats_fake, model.feat_criterion)

    # Real/Fake GAN Loss (B)
    B_dis_real, B_feats_real = model.discriminator_B(B)
    B_dis_fake, B_feats_fake = model.discriminator_B(AB)

    dis_loss_B, gen_loss_B = get_gan_loss(B_dis_real, B_dis_fake, model.gan_criterion, dis_weight)
    fm_loss_B = get_fm_loss(B_feats_real, B_feats_fake, model.feat_criterion)

    gen_loss_A_total = (gen_loss_B * 0.1 + fm_loss_B * 0.9) * (1.0 - rate) + recon_loss_A * rate
    gen_loss_B_total = (gen_loss_A * 0.1 + fm_loss_A * 0.9) * (1.0 - rate) + recon_loss_B * rate

    gen_loss = gen_loss_A_total + gen_loss_B_total
    dis_loss = dis_loss_A + dis_loss_B
    return {"gen_loss": gen_loss, "dis_loss": dis_loss}


def build_model(hinge_margin: float = HINGE_MARGIN) -> DiscoGAN:
    torch.manual_seed(0)
    return DiscoGAN(hinge_margin)


def make_spec(model: DiscoGAN, loss=discogan_loss, train: bool = False, loop: bool = False) -> lg.Spec:
    """The DiscoGAN spec around a given model (the planted-bug variants reuse it); ``loop``: the
    GAN training loop of the seed, both optimizers' gradients clipped at a global norm of 1.0
    (``clip_grad_norm_`` before each step) and an EMA of the generators' weights (decay 0.999)."""
    gen_params = itertools.chain(model.generator_A.parameters(), model.generator_B.parameters())
    dis_params = itertools.chain(
        model.discriminator_A.parameters(), model.discriminator_B.parameters()
    )
    return lg.Spec(
        model=model,
        loss=loss,
        inputs={
            "A": lg.Input([4, 3, 64, 64], low=0.0, high=1.0),
            "B": lg.Input([4, 3, 64, 64], low=0.0, high=1.0),
        },
        optimizers={
            "dis": torch.optim.Adam(dis_params, lr=2e-4, betas=(0.5, 0.999), weight_decay=1e-5),
            "gen": torch.optim.Adam(gen_params, lr=2e-4, betas=(0.5, 0.999), weight_decay=1e-5),
        },
        schedule=[("dis_loss", "dis"), ("gen_loss", "gen")],
        train=train,
        clip=lg.ClipGradNorm(1.0) if loop else None,
        ema={"gen": lg.EMA(0.999)} if loop else None,
    )


def spec() -> lg.Spec:
    """DiscoGAN in eval mode, as in the seed's loss alignment."""
    return make_spec(build_model())



def spec_train() -> lg.Spec:
    """DiscoGAN in training mode: BatchNorm normalizes with batch statistics and updates its
    running statistics (exported as graph outputs)."""
    return make_spec(build_model(), train=True)


def spec_gan_loop() -> lg.Spec:
    """DiscoGAN trained as GANs are: training mode, gradients clipped, an EMA of the generators."""
    return make_spec(build_model(), train=True, loop=True)
