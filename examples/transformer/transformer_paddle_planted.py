"""Ports of ``transformer_torch.py`` with one porting bug each (``catalog.py`` style: the
function name says the bug, the docstring where lossgraph must find it).

    lossgraph export examples/transformer/transformer_paddle_planted.py:heads_split_4 -o bad.onnx
"""

from __future__ import annotations

import functools

import paddle
from paddle import nn
from transformer_paddle import (
    HIDDEN,
    LLAMA_TOKENS,
    Cells,
    _recurrent,
    causal_attention,
    encoder_layer,
    fused_attention,
    tied_lm,
    tiny_bert_mlm,
    tiny_llama,
)


def heads_split_4():
    """Four heads where torch has two: found in self_attn."""
    return encoder_layer(heads=4)


def pre_norm():
    """normalize_before=True where torch's layer is post-norm: found in the layer's first norm
    or attention input."""
    return encoder_layer(normalize_before=True)


def gelu_tanh():
    """GELU's tanh approximation where torch's layer has the exact one: found in the
    feed-forward block."""
    spec = encoder_layer(activation="gelu")
    spec.model.activation = functools.partial(paddle.nn.functional.gelu, approximate=True)
    return spec


def missing_scale():
    """Attention scores not divided by sqrt(E): found in the attention, before the softmax."""
    return fused_attention(scale=False)


def mask_not_inverted():
    """torch's boolean attn_mask passed on as it is: Paddle reads True as "attend", torch as
    "leave out", so the port attends to the future only: found in self_attn's softmax input."""
    return causal_attention(mask="leave out")


def mask_dropped():
    """The causal mask not passed: found in self_attn's softmax input."""
    return causal_attention(mask="none")


class SwappedGates(nn.LSTMCell):
    """An LSTMCell whose port reads the gates in the order i, g, f, o (torch's is i, f, g, o)."""

    def forward(self, inputs, states=None):
        if states is None:
            zeros = paddle.zeros([inputs.shape[0], HIDDEN], inputs.dtype)
            states = (zeros, zeros)
        h, c = states
        gates = paddle.matmul(inputs, self.weight_ih, transpose_y=True) + self.bias_ih
        gates = gates + paddle.matmul(h, self.weight_hh, transpose_y=True) + self.bias_hh
        i, g, f, o = paddle.split(gates, 4, axis=-1)
        c = paddle.nn.functional.sigmoid(f) * c + paddle.nn.functional.sigmoid(i) * paddle.tanh(g)
        h = paddle.nn.functional.sigmoid(o) * paddle.tanh(c)
        return h, (h, c)


def lstm_gate_order():
    """The 2-layer LSTM's cells with the forget and cell gates swapped: found in cell0."""
    paddle.seed(0)
    return _recurrent(Cells(SwappedGates))


def untied_head():
    """The output head a parameter of its own where torch ties it to the embedding: tied and
    untied weights train differently; pairing says so (exit 2)."""
    return tied_lm(tied=False)


def rope_theta():
    """rope_theta 500000 where the reference has 10000: found in the first attention."""
    return tiny_llama(rope_theta=500000.0)


def rms_norm_eps():
    """RMSNorm epsilon 1e-5 where the reference has 1e-6: found in the first input_layernorm."""
    return tiny_llama(eps=1e-5)


def gqa_tiled():
    """The kv heads tiled ([k0, k1, k0, k1]) where repeat_kv interleaves ([k0, k0, k1, k1]):
    found in the first attention."""
    return tiny_llama(repeat="tile")


def bert_without_padding_idx():
    """BERT's word embeddings without padding_idx, on a batch that holds the padding id 0."""
    return tiny_bert_mlm(tokens=LLAMA_TOKENS, pad=None)
