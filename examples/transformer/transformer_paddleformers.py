"""PaddleFormers' own models (0.4.1), built from the tiny configs ``transformer_hf.py`` gives
Hugging Face's, against those: LLaMA (head stored [hidden, vocab]), Qwen2 (q/k/v biases) and
BERT masked LM (the decoder tied to the word embeddings, and a pooler the masked-LM loss never
reads). PaddleFormers needs transformers 4.x and an older huggingface_hub than the torch side's,
so it lives in a folder of its own, on PYTHONPATH for the Paddle side's export only::

    pip install --no-deps --target .paddleformers -r tests/paddleformers-requirements.txt
    lossgraph export examples/transformer/transformer_hf.py:llama -o llama_hf.onnx
    PYTHONPATH=.paddleformers lossgraph export \\
        examples/transformer/transformer_paddleformers.py:llama -o llama_pf.onnx
    lossgraph verify llama_hf.onnx llama_pf.onnx --grads --steps 2
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddleformers.transformers import (
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
# BERT's padding id is 0, and the frameworks' padding conventions differ (see README.md)
BERT_TOKENS = {"ids": lg.Input([2, 4], dtype="int64", low=1, high=VOCAB),
               "labels": lg.Input([2, 4], dtype="int64", high=VOCAB)}
DECODER = dict(vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=12, num_hidden_layers=2, rms_norm_eps=1e-6,
               max_position_embeddings=32, tie_word_embeddings=False)


def _spec(model, tokens=TOKENS):
    def loss(model, ids, labels):
        out = model(input_ids=ids)
        logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
        return F.cross_entropy(logits.reshape([-1, VOCAB]), labels.reshape([-1]))

    return lg.Spec(model=model, loss=loss, inputs=tokens,
                   optimizers={"adamw": paddle.optimizer.AdamW(parameters=model.parameters(),
                                                               learning_rate=1e-3)})


def llama(**changes):
    paddle.seed(0)
    return _spec(LlamaForCausalLM(LlamaConfig(**{**DECODER, "rope_theta": 10000.0, **changes})))


def qwen2(**changes):
    paddle.seed(0)
    return _spec(Qwen2ForCausalLM(Qwen2Config(**{**DECODER, "rope_theta": 1000000.0, **changes})))


def bert(**changes):
    """PaddleFormers' BertConfig defaults to 16 token types, Hugging Face's to 2: set here as the
    torch side has it (a port that forgot would be refused: the shapes differ)."""
    paddle.seed(0)
    config = dict(vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, intermediate_size=32,
                  num_hidden_layers=2, max_position_embeddings=8, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, type_vocab_size=2)
    return _spec(BertForMaskedLM(BertConfig(**{**config, **changes})), BERT_TOKENS)


def qwen2_tied():
    """The output head tied to the embeddings, as small Qwen2 checkpoints have it."""
    return qwen2(tie_word_embeddings=True)


# --- planted differences -------------------------------------------------------------------------

def llama_rope_theta():
    """rope_theta 500000 against Hugging Face's 10000."""
    return llama(rope_theta=500000.0)


def qwen2_rms_norm_eps():
    """rms_norm_eps 1e-5 against Hugging Face's 1e-6."""
    return qwen2(rms_norm_eps=1e-5)


def bert_layer_norm_eps():
    """layer_norm_eps 1e-5 against Hugging Face's 1e-12."""
    return bert(layer_norm_eps=1e-5)
