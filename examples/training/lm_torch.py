"""A language-model training loop as most ports have it, in PyTorch: a tiny transformer LM,
AdamW without decay on biases and LayerNorm weights, a warmup-then-cosine schedule, the global
gradient norm clipped at 0.3 (it is about 0.5 here, so the clipping works) and 4 micro-batches accumulated per step (the loss divided by 4).
``lm_paddle.py`` is its PaddlePaddle port, ``lm_paddle_planted.py`` ports with one mistake each.

    lossgraph export examples/training/lm_torch.py:lm -o lm_torch.onnx
    lossgraph export examples/training/lm_paddle.py:lm -o lm_paddle.onnx
    lossgraph verify lm_torch.onnx lm_paddle.onnx --grads --steps 5 --fresh-inputs
"""

from __future__ import annotations

import math

import torch
from torch import nn

import lossgraph as lg

VOCAB, E, HEADS, FF, BATCH, SEQ = 32, 16, 2, 32, 4, 6
ACCUMULATE, WARMUP, TOTAL = 4, 2, 8


def warmup_cosine(step: int) -> float:
    """The learning-rate factor of optimizer step ``step``: linear warmup, then a cosine to 0."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP) / (TOTAL - WARMUP)))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, E)
        self.layer = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=FF, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, VOCAB)

    def forward(self, tokens):
        return self.head(self.norm(self.layer(self.embed(tokens))))


def lm():
    torch.manual_seed(0)
    model = TinyLM()
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "norm" in n]
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "norm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)

    def loss(model, tokens, labels):
        logits = model(tokens)
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)) / ACCUMULATE

    tokens = lg.Input([BATCH, SEQ], dtype="int64", high=VOCAB)
    return lg.Spec(model=model, loss=loss, inputs={"tokens": tokens, "labels": tokens},
                   optimizers={"adamw": optimizer}, lr_schedulers={"adamw": schedule},
                   clip=lg.ClipGradNorm(0.3), accumulate=ACCUMULATE)
