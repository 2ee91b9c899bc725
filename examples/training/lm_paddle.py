"""The PaddlePaddle port of ``lm_torch.py``: the same tiny transformer LM and training loop,
written as Paddle code writes it (``apply_decay_param_fun`` for the no-decay parameters, the
clipping as the optimizer's ``grad_clip``, the schedule a ``LambdaDecay``). ``lm(...)``'s
arguments plant the mistakes of ``lm_paddle_planted.py``."""

from __future__ import annotations

import math

import paddle
from paddle import nn

import lossgraph as lg

VOCAB, E, HEADS, FF, BATCH, SEQ = 32, 16, 2, 32, 4, 6
ACCUMULATE, WARMUP, TOTAL = 4, 2, 8


def warmup_cosine(step: int) -> float:
    """The learning-rate factor of optimizer step ``step``: linear warmup, then a cosine to 0."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP) / (TOTAL - WARMUP)))


class TinyLM(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, E)
        self.layer = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=FF, dropout=0.0)
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, VOCAB)

    def forward(self, tokens):
        return self.head(self.norm(self.layer(self.embed(tokens))))


def lm(grad_clip=None, divide: bool = True, clear_grads: bool = True, decay_all: bool = False):
    """The port; ``grad_clip`` (default ``ClipGradByGlobalNorm(0.3)``), ``divide``,
    ``clear_grads`` and ``decay_all`` change it into one of the planted ones."""
    paddle.seed(0)
    model = TinyLM()
    decay = {p.name for n, p in model.named_parameters() if not ("bias" in n or "norm" in n)}
    schedule = paddle.optimizer.lr.LambdaDecay(learning_rate=3e-3, lr_lambda=warmup_cosine)
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule, beta1=0.9, beta2=0.98, parameters=model.parameters(), weight_decay=0.01,
        apply_decay_param_fun=None if decay_all else (lambda name: name in decay),
        grad_clip=grad_clip if grad_clip is not None else nn.ClipGradByGlobalNorm(0.3),
    )
    scale = ACCUMULATE if divide else 1

    def loss(model, tokens, labels):
        logits = model(tokens)
        return nn.functional.cross_entropy(logits.reshape([-1, VOCAB]), labels.reshape([-1])) / scale

    tokens = lg.Input([BATCH, SEQ], dtype="int64", high=VOCAB)
    return lg.Spec(model=model, loss=loss, inputs={"tokens": tokens, "labels": tokens},
                   optimizers={"adamw": optimizer}, lr_schedulers={"adamw": schedule},
                   accumulate=ACCUMULATE, clear_grads=clear_grads)
