"""Transformer and recurrent layers in PyTorch, as users write them: ``torch.nn``'s
TransformerEncoderLayer (MultiheadAttention with its packed ``in_proj_weight``), a hand-written
attention with one fused ``qkv_proj``, a language model whose output head is tied to its
embedding, and LSTM/GRU layers (one and two layers, bidirectional). ``transformer_paddle.py``
holds the PaddlePaddle ports (same function names), ``transformer_paddle_planted.py`` ports with
one bug each.

    lossgraph export examples/transformer/transformer_torch.py:encoder_layer -o enc_t.onnx
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lossgraph as lg

E, HEADS, FF = 8, 2, 16  # model width, attention heads, feed-forward width
BATCH, SEQ, FEATURES, HIDDEN = 2, 3, 4, 5  # the recurrent pairs
VOCAB = 10
X = lg.Input([BATCH, SEQ, E])


def _square_mean(model, x):
    out = model(x)
    return ((out[0] if isinstance(out, tuple) else out) ** 2).mean()


def _adam(model) -> dict:
    return {"adam": torch.optim.Adam(model.parameters(), lr=1e-3)}


def encoder_layer():
    """torch.nn.TransformerEncoderLayer (post-norm, ReLU), batch first."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=FF, dropout=0.0, batch_first=True)
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


class Attention(nn.Module):
    """Single-head self-attention with one fused q/k/v projection (as GPT-style code has)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(E, 3 * E)
        self.o_proj = nn.Linear(E, E)

    def forward(self, x):
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-1, -2) / E**0.5, dim=-1)
        return self.o_proj(weights @ v)


def fused_attention():
    torch.manual_seed(0)
    model = Attention()
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


class TiedLM(nn.Module):
    """Embedding, one mixing layer, and an output head sharing the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, E)
        self.mid = nn.Linear(E, E)
        self.lm_head = nn.Linear(E, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight  # tie_word_embeddings

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.mid(self.embed(ids))))


TOKENS = {"ids": lg.Input([BATCH, SEQ], dtype="int64", high=VOCAB),
          "labels": lg.Input([BATCH, SEQ], dtype="int64", high=VOCAB)}


def tied_lm():
    torch.manual_seed(0)
    model = TiedLM()

    def loss(model, ids, labels):
        return F.cross_entropy(model(ids).reshape(-1, VOCAB), labels.reshape(-1))

    return lg.Spec(model=model, loss=loss, inputs=TOKENS,
                   optimizers={"adamw": torch.optim.AdamW(model.parameters(), lr=1e-2)})


def _recurrent(cell, layers: int = 1, bidirectional: bool = False):
    torch.manual_seed(0)
    model = cell(FEATURES, HIDDEN, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": lg.Input([BATCH, SEQ, FEATURES])},
                   optimizers=_adam(model))


def lstm():
    return _recurrent(nn.LSTM)


def lstm_2_layers():
    return _recurrent(nn.LSTM, 2)


def lstm_bidirectional():
    return _recurrent(nn.LSTM, 2, True)


def gru():
    return _recurrent(nn.GRU)


def gru_bidirectional():
    return _recurrent(nn.GRU, 2, True)


SPECS = ["encoder_layer", "fused_attention", "tied_lm", "lstm", "lstm_2_layers",
         "lstm_bidirectional", "gru", "gru_bidirectional"]
