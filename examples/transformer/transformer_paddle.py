"""The PaddlePaddle ports of ``transformer_torch.py`` (same function names): ``paddle.nn``'s
TransformerEncoderLayer (MultiHeadAttention with separate ``q_proj``/``k_proj``/``v_proj``),
the attention with three projections where torch has one fused, a language model whose output
head reads the embedding's weight transposed (as PaddleFormers does), ``paddle.nn.LSTM`` and
``GRU``, and -- for the 2-layer LSTM -- two LSTMCells stepped by hand (a port PaDiff's tests
have). Pairing needs no name map: lossgraph splits the packed weights, follows the tie and
pairs the cells with the layers.

    lossgraph export examples/transformer/transformer_paddle.py:encoder_layer -o enc_p.onnx
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

import lossgraph as lg

E, HEADS, FF = 8, 2, 16
BATCH, SEQ, FEATURES, HIDDEN = 2, 3, 4, 5
VOCAB = 10
X = lg.Input([BATCH, SEQ, E])


def _square_mean(model, x):
    out = model(x)
    return ((out[0] if isinstance(out, tuple) else out) ** 2).mean()


def _adam(model) -> dict:
    return {"adam": paddle.optimizer.Adam(parameters=model.parameters(), learning_rate=1e-3)}


def encoder_layer(heads: int = HEADS, normalize_before: bool = False, activation: str = "relu"):
    paddle.seed(0)
    model = nn.TransformerEncoderLayer(E, heads, dim_feedforward=FF, dropout=0.0,
                                       normalize_before=normalize_before, activation=activation)
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


def gelu_encoder_layer():
    return encoder_layer(activation="gelu")


def decoder_layer():
    paddle.seed(0)
    model = nn.TransformerDecoderLayer(E, HEADS, dim_feedforward=FF, dropout=0.0)

    def loss(model, x, memory):
        return (model(x, memory) ** 2).mean()

    return lg.Spec(model=model, loss=loss, inputs={"x": X, "memory": lg.Input([BATCH, 4, E])},
                   optimizers=_adam(model))


class CrossAttention(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiHeadAttention(E, HEADS, kdim=6, vdim=6)

    def forward(self, x, memory):
        return self.attn(x, memory, memory)


def cross_attention():
    paddle.seed(0)
    model = CrossAttention()

    def loss(model, x, memory):
        return (model(x, memory) ** 2).mean()

    return lg.Spec(model=model, loss=loss, inputs={"x": X, "memory": lg.Input([BATCH, 4, 6])},
                   optimizers=_adam(model))


class Seq2Seq(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Transformer(E, HEADS, 1, 1, FF, dropout=0.0)

    def forward(self, x, y):
        mask = self.transformer.generate_square_subsequent_mask(y.shape[1])
        return self.transformer(x, y, tgt_mask=mask)


def transformer():
    paddle.seed(0)
    model = Seq2Seq()

    def loss(model, x, y):
        return (model(x, y) ** 2).mean()

    return lg.Spec(model=model, loss=loss, inputs={"x": X, "y": lg.Input([BATCH, 4, E])},
                   optimizers=_adam(model))


class CausalAttention(nn.Layer):
    """paddle.nn.MultiHeadAttention with a boolean causal mask: in Paddle, True marks a
    position to attend to (torch's mask, inverted)."""

    def __init__(self, mask: str = "keep") -> None:
        super().__init__()
        self.attn = nn.MultiHeadAttention(E, HEADS)
        self.mask = mask  # "keep" (Paddle's convention), "leave out" (torch's), or "none"

    def forward(self, x):
        t = x.shape[1]
        future = paddle.triu(paddle.ones([t, t]), diagonal=1).astype("bool")
        mask = {"keep": ~future, "leave out": future, "none": None}[self.mask]
        return self.attn(x, x, x, attn_mask=mask)


def causal_attention(mask: str = "keep"):
    paddle.seed(0)
    model = CausalAttention(mask)
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


class Attention(nn.Layer):
    def __init__(self, scale: bool = True) -> None:
        super().__init__()
        self.q_proj = nn.Linear(E, E)
        self.k_proj = nn.Linear(E, E)
        self.v_proj = nn.Linear(E, E)
        self.o_proj = nn.Linear(E, E)
        self.scale = scale

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        scores = paddle.matmul(q, k, transpose_y=True)
        if self.scale:
            scores = scores / E**0.5
        return self.o_proj(paddle.matmul(F.softmax(scores, axis=-1), v))


def fused_attention(scale: bool = True):
    paddle.seed(0)
    model = Attention(scale)
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


class FusedAttention(nn.Layer):
    """The same attention with one fused projection, stored [in, 3E] as Paddle's Linear is:
    q, k and v are its column blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(E, 3 * E)
        self.o_proj = nn.Linear(E, E)

    def forward(self, x):
        q, k, v = paddle.split(self.qkv_proj(x), 3, axis=-1)
        scores = paddle.matmul(q, k, transpose_y=True) / E**0.5
        return self.o_proj(paddle.matmul(F.softmax(scores, axis=-1), v))


def fused_qkv():
    paddle.seed(0)
    model = FusedAttention()
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": X}, optimizers=_adam(model))


class LMHead(nn.Layer):
    """An output head stored [vocab, hidden] and read as h @ W.T, sharing the embedding's
    weight when given it."""

    def __init__(self, weight=None) -> None:
        super().__init__()
        self.weight = weight if weight is not None else self.create_parameter([VOCAB, E])

    def forward(self, h):
        return paddle.matmul(h, self.weight, transpose_y=True)


class TiedLM(nn.Layer):
    def __init__(self, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, E)
        self.mid = nn.Linear(E, E)
        self.lm_head = LMHead(self.embed.weight if tied else None)

    def forward(self, ids):
        return self.lm_head(paddle.tanh(self.mid(self.embed(ids))))


TOKENS = {"ids": lg.Input([BATCH, SEQ], dtype="int64", high=VOCAB),
          "labels": lg.Input([BATCH, SEQ], dtype="int64", high=VOCAB)}


def tied_lm(tied: bool = True):
    paddle.seed(0)
    model = TiedLM(tied)

    def loss(model, ids, labels):
        return F.cross_entropy(model(ids).reshape([-1, VOCAB]), labels.reshape([-1]))

    return lg.Spec(model=model, loss=loss, inputs=TOKENS,
                   optimizers={"adamw": paddle.optimizer.AdamW(parameters=model.parameters(),
                                                               learning_rate=1e-2)})


def _recurrent(model):
    return lg.Spec(model=model, loss=_square_mean, inputs={"x": lg.Input([BATCH, SEQ, FEATURES])},
                   optimizers=_adam(model))


def lstm():
    paddle.seed(0)
    return _recurrent(nn.LSTM(FEATURES, HIDDEN))


class Cells(nn.Layer):
    """A 2-layer LSTM as two LSTMCells stepped over time by hand."""

    def __init__(self, cell=nn.LSTMCell) -> None:
        super().__init__()
        self.cell0 = cell(FEATURES, HIDDEN)
        self.cell1 = cell(HIDDEN, HIDDEN)

    def forward(self, x):
        states0 = states1 = None
        outs = []
        for t in range(x.shape[1]):
            h0, states0 = self.cell0(x[:, t], states0)
            h1, states1 = self.cell1(h0, states1)
            outs.append(h1)
        return paddle.stack(outs, axis=1)


def lstm_2_layers():
    paddle.seed(0)
    return _recurrent(Cells())


def lstm_bidirectional():
    paddle.seed(0)
    return _recurrent(nn.LSTM(FEATURES, HIDDEN, num_layers=2, direction="bidirect"))


def gru():
    paddle.seed(0)
    return _recurrent(nn.GRU(FEATURES, HIDDEN))


def gru_bidirectional():
    paddle.seed(0)
    return _recurrent(nn.GRU(FEATURES, HIDDEN, num_layers=2, direction="bidirect"))


class Recurrent(nn.Layer):
    """nn.RNN or nn.BiRNN of cells: the output sequence only."""

    def __init__(self, rnn: nn.Layer) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def lstm_birnn():
    paddle.seed(0)
    return _recurrent(Recurrent(nn.BiRNN(nn.LSTMCell(FEATURES, HIDDEN), nn.LSTMCell(FEATURES, HIDDEN))))


def gru_rnn():
    paddle.seed(0)
    return _recurrent(Recurrent(nn.RNN(nn.GRUCell(FEATURES, HIDDEN))))


# --- a tiny LLaMA, following PaddleFormers' LlamaForCausalLM ----------------------------------
# (module names; the rotary frequencies computed in the forward, no buffer; the output head
# stored [hidden, vocab] and read as h @ W, as PaddleFormers 0.4.1 stores it); PaddleFormers
# itself is not needed.

LLAMA = {"vocab": 16, "hidden": 16, "heads": 4, "kv_heads": 2, "ff": 12, "layers": 2,
         "rope_theta": 10000.0, "eps": 1e-6, "repeat": "interleave"}


class LlamaRMSNorm(nn.Layer):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = self.create_parameter([hidden], default_initializer=nn.initializer.Constant(1.0))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * paddle.rsqrt(variance + self.variance_epsilon))


def _rotary(t: int, dim: int, theta: float):
    inv_freq = 1.0 / (theta ** (paddle.arange(0, dim, 2, dtype="float32") / dim))
    freqs = paddle.arange(t, dtype="float32")[:, None] * inv_freq[None, :]
    emb = paddle.concat([freqs, freqs], axis=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x):
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


class LlamaAttention(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.repeat = c["heads"], c["kv_heads"], c["repeat"]
        self.head_dim = c["hidden"] // c["heads"]
        qkv_bias = None if c.get("qkv_bias") else False  # Qwen2: biases on q, k and v
        self.q_proj = nn.Linear(c["hidden"], self.heads * self.head_dim, bias_attr=qkv_bias)
        self.k_proj = nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias_attr=qkv_bias)
        self.v_proj = nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias_attr=qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c["hidden"], bias_attr=False)

    def forward(self, x, cos, sin):
        b, t = x.shape[0], x.shape[1]
        q = self.q_proj(x).reshape([b, t, self.heads, self.head_dim]).transpose([0, 2, 1, 3])
        k = self.k_proj(x).reshape([b, t, self.kv_heads, self.head_dim]).transpose([0, 2, 1, 3])
        v = self.v_proj(x).reshape([b, t, self.kv_heads, self.head_dim]).transpose([0, 2, 1, 3])
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        if self.repeat == "interleave":
            k, v = k.repeat_interleave(groups, axis=1), v.repeat_interleave(groups, axis=1)
        else:
            k, v = k.tile([1, groups, 1, 1]), v.tile([1, groups, 1, 1])
        scores = paddle.matmul(q, k, transpose_y=True) / self.head_dim**0.5
        causal = paddle.triu(paddle.ones([t, t]), diagonal=1) * -1e9
        weights = F.softmax(scores + causal, axis=-1)
        return self.o_proj(paddle.matmul(weights, v).transpose([0, 2, 1, 3]).reshape([b, t, -1]))


class LlamaMLP(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c["hidden"], c["ff"], bias_attr=False)
        self.up_proj = nn.Linear(c["hidden"], c["ff"], bias_attr=False)
        self.down_proj = nn.Linear(c["ff"], c["hidden"], bias_attr=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(c)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = LlamaRMSNorm(c["hidden"], c["eps"])
        self.post_attention_layernorm = LlamaRMSNorm(c["hidden"], c["eps"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.LayerList([LlamaDecoderLayer(c) for _ in range(c["layers"])])
        self.norm = LlamaRMSNorm(c["hidden"], c["eps"])

    def forward(self, ids):
        x = self.embed_tokens(ids)
        cos, sin = _rotary(ids.shape[1], self.c["hidden"] // self.c["heads"], self.c["rope_theta"])
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class LlamaLMHead(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.weight = self.create_parameter([c["hidden"], c["vocab"]])  # [hidden, vocab]

    def forward(self, h):
        return paddle.matmul(h, self.weight)


class LlamaForCausalLM(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.model = LlamaModel(c)
        self.lm_head = LlamaLMHead(c)

    def forward(self, ids):
        return self.lm_head(self.model(ids))


LLAMA_TOKENS = {"ids": lg.Input([BATCH, 4], dtype="int64", high=LLAMA["vocab"]),
                "labels": lg.Input([BATCH, 4], dtype="int64", high=LLAMA["vocab"])}


def tiny_llama(**changes):
    paddle.seed(0)
    model = LlamaForCausalLM({**LLAMA, **changes})

    def loss(model, ids, labels):
        return F.cross_entropy(model(ids).reshape([-1, LLAMA["vocab"]]), labels.reshape([-1]))

    return lg.Spec(model=model, loss=loss, inputs=LLAMA_TOKENS,
                   optimizers={"adamw": paddle.optimizer.AdamW(parameters=model.parameters(),
                                                               learning_rate=1e-3)})


def tiny_qwen2():
    """Qwen2 is LLaMA with biases on q, k and v (and a larger rotary base)."""
    return tiny_llama(qkv_bias=True, rope_theta=1000000.0)


# --- a tiny BERT masked LM: paddle.nn.TransformerEncoder (post-norm, exact GELU), the decoder
# tied to the word embeddings (as Hugging Face's BertForMaskedLM and PaddleFormers' BERT) -------

BERT = {"vocab": 16, "hidden": 16, "heads": 4, "ff": 32, "layers": 2, "positions": 8, "eps": 1e-12,
        "pad": 0}


class BertEmbeddings(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab"], c["hidden"], padding_idx=c["pad"])
        self.position_embeddings = nn.Embedding(c["positions"], c["hidden"])
        self.token_type_embeddings = nn.Embedding(2, c["hidden"])
        self.LayerNorm = nn.LayerNorm(c["hidden"], epsilon=c["eps"])

    def forward(self, ids):
        positions = paddle.arange(ids.shape[1], dtype="int64")[None, :]
        types = paddle.zeros_like(ids)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types)
        return self.LayerNorm(x + self.position_embeddings(positions))


class BertModel(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        layer = nn.TransformerEncoderLayer(
            c["hidden"], c["heads"], c["ff"], dropout=0.0, activation="gelu",
            normalize_before=False, layer_norm_eps=c["eps"],
        )
        self.encoder = nn.TransformerEncoder(layer, c["layers"])

    def forward(self, ids):
        return self.encoder(self.embeddings(ids))


class BertPredictionHeadTransform(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden"], c["hidden"])
        self.LayerNorm = nn.LayerNorm(c["hidden"], epsilon=c["eps"])

    def forward(self, h):
        return self.LayerNorm(F.gelu(self.dense(h)))


class BertLMPredictionHead(nn.Layer):
    def __init__(self, c: dict, embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(c)
        self.embeddings = embeddings  # tied: the decoder reads the word embeddings transposed
        self.bias = self.create_parameter([c["vocab"]], is_bias=True)

    def forward(self, h):
        return paddle.matmul(self.transform(h), self.embeddings.weight, transpose_y=True) + self.bias


class BertOnlyMLMHead(nn.Layer):
    def __init__(self, c: dict, embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(c, embeddings)

    def forward(self, h):
        return self.predictions(h)


class BertForMaskedLM(nn.Layer):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.bert = BertModel(c)
        self.cls = BertOnlyMLMHead(c, self.bert.embeddings.word_embeddings)

    def forward(self, ids):
        return self.cls(self.bert(ids))


# token 0 is the padding id: a batch without it (with it, see examples/transformer/README.md)
BERT_TOKENS = {"ids": lg.Input([BATCH, 4], dtype="int64", low=1, high=BERT["vocab"]),
               "labels": lg.Input([BATCH, 4], dtype="int64", high=BERT["vocab"])}


def tiny_bert_mlm(tokens=BERT_TOKENS, **changes):
    paddle.seed(0)
    config = {**BERT, **changes}
    model = BertForMaskedLM(config)

    def loss(model, ids, labels):
        return F.cross_entropy(model(ids).reshape([-1, config["vocab"]]), labels.reshape([-1]))

    return lg.Spec(model=model, loss=loss, inputs=tokens,
                   optimizers={"adamw": paddle.optimizer.AdamW(parameters=model.parameters(),
                                                               learning_rate=1e-3)})


def tiny_bert_mlm_padded():
    """The same port on a batch holding the padding id 0: torch's padding row is an ordinary
    row in the forward (zero at init, trained by the tied decoder), Paddle's lookup outputs
    zeros for it, so the two part at step 1 (a convention, named by the hint)."""
    return tiny_bert_mlm(tokens=LLAMA_TOKENS)
