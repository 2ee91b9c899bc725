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


def gelu_encoder_layer():
    """The same layer with exact GELU (torch exports ONNX Gelu; Paddle decomposes it into Erf)."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=FF, dropout=0.0, batch_first=True,
                                       activation="gelu")
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


def decoder_layer():
    """torch.nn.TransformerDecoderLayer: self-attention, then cross-attention (``multihead_attn``,
    Paddle's ``cross_attn``) over a memory."""
    torch.manual_seed(0)
    model = nn.TransformerDecoderLayer(E, HEADS, dim_feedforward=FF, dropout=0.0, batch_first=True)

    def loss(model, x, memory):
        return (model(x, memory) ** 2).mean()

    return lg.Spec(model=model, loss=loss, inputs={"x": X, "memory": lg.Input([BATCH, 4, E])},
                   optimizers=_adam(model))


class CrossAttention(nn.Module):
    """nn.MultiheadAttention over keys of another width (kdim, vdim): torch then keeps separate
    q_proj_weight, k_proj_weight and v_proj_weight beside the packed in_proj_bias."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, kdim=6, vdim=6, batch_first=True)

    def forward(self, x, memory):
        return self.attn(x, memory, memory, need_weights=False)[0]


def cross_attention():
    torch.manual_seed(0)
    model = CrossAttention()

    def loss(model, x, memory):
        return (model(x, memory) ** 2).mean()

    return lg.Spec(model=model, loss=loss, inputs={"x": X, "memory": lg.Input([BATCH, 4, 6])},
                   optimizers=_adam(model))


class Seq2Seq(nn.Module):
    """nn.Transformer, encoder and decoder, the target under a causal mask."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Transformer(E, HEADS, 1, 1, FF, dropout=0.0, batch_first=True)

    def forward(self, x, y):
        mask = nn.Transformer.generate_square_subsequent_mask(y.shape[1])
        return self.transformer(x, y, tgt_mask=mask)


def transformer():
    torch.manual_seed(0)
    model = Seq2Seq()

    def loss(model, x, y):
        return (model(x, y) ** 2).mean()

    return lg.Spec(model=model, loss=loss, inputs={"x": X, "y": lg.Input([BATCH, 4, E])},
                   optimizers=_adam(model))


class CausalAttention(nn.Module):
    """nn.MultiheadAttention with a boolean causal mask: in torch, True marks a position to
    leave out."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        return self.attn(x, x, x, attn_mask=future, need_weights=False)[0]


def causal_attention():
    torch.manual_seed(0)
    model = CausalAttention()
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


def lstm_birnn():
    """A one-layer bidirectional LSTM (Paddle: a BiRNN of two LSTMCells)."""
    return _recurrent(nn.LSTM, 1, True)


def gru_rnn():
    """A GRU (Paddle: nn.RNN over a GRUCell)."""
    return _recurrent(nn.GRU)


def gru_bidirectional():
    return _recurrent(nn.GRU, 2, True)




# --- a tiny LLaMA, following Hugging Face transformers' LlamaForCausalLM -------------------------
# (module names, RMSNorm, rotary embeddings with an ``inv_freq`` buffer, grouped-query attention,
# SwiGLU MLP, untied output head); transformers itself is not needed.

LLAMA = {"vocab": 16, "hidden": 16, "heads": 4, "kv_heads": 2, "ff": 12, "layers": 2,
         "rope_theta": 10000.0, "eps": 1e-6}


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions):
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.heads, self.kv_heads = c["heads"], c["kv_heads"]
        self.head_dim = c["hidden"] // c["heads"]
        self.q_proj = nn.Linear(c["hidden"], self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c["hidden"], bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        groups = self.heads // self.kv_heads  # repeat_kv: each kv head serves `groups` q heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        weights = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        return self.o_proj((weights @ v).transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c["hidden"], c["ff"], bias=False)
        self.up_proj = nn.Linear(c["hidden"], c["ff"], bias=False)
        self.down_proj = nn.Linear(c["ff"], c["hidden"], bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(c)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = LlamaRMSNorm(c["hidden"], c["eps"])
        self.post_attention_layernorm = LlamaRMSNorm(c["hidden"], c["eps"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList(LlamaDecoderLayer(c) for _ in range(c["layers"]))
        self.norm = LlamaRMSNorm(c["hidden"], c["eps"])
        self.rotary_emb = LlamaRotaryEmbedding(c["hidden"] // c["heads"], c["rope_theta"])

    def forward(self, ids):
        x = self.embed_tokens(ids)
        cos, sin = self.rotary_emb(torch.arange(ids.shape[1]))
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.model = LlamaModel(c)
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)

    def forward(self, ids):
        return self.lm_head(self.model(ids))


LLAMA_TOKENS = {"ids": lg.Input([BATCH, 4], dtype="int64", high=LLAMA["vocab"]),
                "labels": lg.Input([BATCH, 4], dtype="int64", high=LLAMA["vocab"])}


def tiny_llama():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LLAMA)

    def loss(model, ids, labels):
        return F.cross_entropy(model(ids).reshape(-1, LLAMA["vocab"]), labels.reshape(-1))

    return lg.Spec(model=model, loss=loss, inputs=LLAMA_TOKENS,
                   optimizers={"adamw": torch.optim.AdamW(model.parameters(), lr=1e-3)})


SPECS = ["encoder_layer", "gelu_encoder_layer", "decoder_layer", "transformer", "cross_attention",
         "causal_attention",
         "fused_attention", "tied_lm", "lstm", "lstm_2_layers", "lstm_bidirectional", "gru",
         "gru_bidirectional", "lstm_birnn", "gru_rnn", "tiny_llama"]
