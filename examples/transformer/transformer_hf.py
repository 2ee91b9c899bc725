"""Hugging Face ``transformers`` models themselves, built from tiny configs (no hub download),
against the Paddle ports in ``transformer_paddle.py`` (written after PaddleFormers' and
paddle.nn's architectures): LLaMA (rotary ``inv_freq`` buffer, GQA, SwiGLU), Qwen2 (q/k/v
biases) and BERT masked LM (post-norm encoder, exact GELU, the decoder tied to the word
embeddings, ``position_ids``/``token_type_ids`` buffers, ``pad_token_id`` 0). Needs
``pip install --no-deps -r tests/hf-requirements.txt``.

    lossgraph export examples/transformer/transformer_hf.py:llama -o llama_hf.onnx
    lossgraph export examples/transformer/transformer_paddle.py:tiny_llama -o llama_p.onnx
    lossgraph verify llama_hf.onnx llama_p.onnx --grads --steps 2
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import lossgraph as lg

VOCAB = 16
TOKENS = {"ids": lg.Input([2, 4], dtype="int64", high=VOCAB),
          "labels": lg.Input([2, 4], dtype="int64", high=VOCAB)}
# BERT's padding id is 0; the Paddle port's batch has none (see README.md)
BERT_TOKENS = {"ids": lg.Input([2, 4], dtype="int64", low=1, high=VOCAB),
               "labels": lg.Input([2, 4], dtype="int64", high=VOCAB)}
DECODER = dict(vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=12, num_hidden_layers=2, rms_norm_eps=1e-6,
               max_position_embeddings=32, tie_word_embeddings=False, attn_implementation="eager")


def _spec(model, tokens=TOKENS):
    def loss(model, ids, labels):
        logits = model(input_ids=ids).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))

    return lg.Spec(model=model, loss=loss, inputs=tokens,
                   optimizers={"adamw": torch.optim.AdamW(model.parameters(), lr=1e-3)})


def llama(**changes):
    torch.manual_seed(0)
    return _spec(LlamaForCausalLM(LlamaConfig(**{**DECODER, "rope_theta": 10000.0, **changes})))


def qwen2(**changes):
    torch.manual_seed(0)
    return _spec(Qwen2ForCausalLM(Qwen2Config(**{**DECODER, "rope_theta": 1000000.0, **changes})))


def bert(tokens=BERT_TOKENS, **changes):
    torch.manual_seed(0)
    config = dict(vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, intermediate_size=32,
                  num_hidden_layers=2, max_position_embeddings=8, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return _spec(BertForMaskedLM(BertConfig(**{**config, **changes})), tokens)


def qwen2_tied():
    """The output head tied to the embeddings, as small Qwen2 checkpoints have it."""
    return qwen2(tie_word_embeddings=True)


# --- planted differences -------------------------------------------------------------------------

def llama_rope_theta():
    """rope_theta 500000 (LLaMA 3's) against the port's 10000."""
    return llama(rope_theta=500000.0)


def qwen2_rms_norm_eps():
    """rms_norm_eps 1e-5 against the port's 1e-6."""
    return qwen2(rms_norm_eps=1e-5)


def bert_with_padding():
    """A batch with padding tokens: torch's padding row is an ordinary row in the forward (the
    tied decoder trains it), Paddle's Embedding(padding_idx) outputs zeros for it."""
    return bert(tokens=TOKENS)


def bert_layer_norm_eps():
    """layer_norm_eps 1e-5 (torch's LayerNorm default) against BERT's 1e-12."""
    return bert(layer_norm_eps=1e-5)
