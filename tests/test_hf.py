"""Hugging Face ``transformers`` models themselves (tiny configs, no hub download) against
Paddle ports (``examples/transformer``): LLaMA, Qwen2 and BERT masked LM with its tied decoder
train the same with no name map and no --allow-unmapped; planted configuration differences are
found with a hint. Slow: transformers is installed for the slow run only (``.ci/run``, with
``--no-deps -r tests/hf-requirements.txt``)."""

import pytest
from conftest import EXAMPLES

import lossgraph as lg

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

FOLDER = EXAMPLES / "transformer"


def hf(name):
    return f"{FOLDER}/transformer_hf.py:{name}"


def paddle_(name):
    return f"{FOLDER}/transformer_paddle.py:{name}"


@pytest.mark.parametrize("reference, candidate, buffers", [
    ("llama", "tiny_llama", ["model.rotary_emb.inv_freq"]),
    ("qwen2", "tiny_qwen2", ["model.rotary_emb.inv_freq"]),
    ("bert", "tiny_bert_mlm", ["bert.embeddings.position_ids", "bert.embeddings.token_type_ids"]),
])
def test_hugging_face_models_train_like_their_paddle_ports(exported, reference, candidate, buffers):
    result = lg.verify(exported(hf(reference)), exported(paddle_(candidate)), grads=True, steps=2)
    assert result.passed, result.first_divergence
    pmap = result.param_map
    assert sorted(pmap.unmapped_reference) == buffers
    assert not pmap.unmapped_candidate and not pmap.shape_mismatch


@pytest.mark.parametrize("reference, candidate, where, hint", [
    (hf("llama_rope_theta"), paddle_("tiny_llama"), (0, "forward", "model.layers.0."),
     "the reference's rotation angles imply rope_theta 500000, the candidate's 10000"),
    (hf("qwen2_rms_norm_eps"), paddle_("tiny_qwen2"), (0, "forward", "model.layers.0.input_layernorm"),
     "the reference adds 1e-05 under the square root, the candidate 1e-06"),
    (hf("llama"), f"{FOLDER}/transformer_paddle_planted.py:gqa_tiled",
     (0, "forward", "model.layers.0.self_attn"), "the candidate tiles them"),
    (hf("bert_layer_norm_eps"), paddle_("tiny_bert_mlm"), (0, "forward", "bert.embeddings.LayerNorm"),
     "the reference uses 1e-05; the candidate computes with 1e-12 instead"),
    (hf("bert_with_padding"), f"{FOLDER}/transformer_paddle_planted.py:bert_without_padding_idx",
     (0, "backward", "bert.embeddings.word_embeddings"),
     "gives row 0 (padding_idx) no gradient; the candidate's embedding"),
    # both pad row 0, each in its framework's convention: they part once the tied head trains it
    (hf("bert_with_padding"), paddle_("tiny_bert_mlm_padded"),
     (1, "forward", "bert.embeddings.word_embeddings"), "Paddle's outputs zeros for that id"),
])
def test_planted_differences_are_found_with_a_hint(exported, reference, candidate, where, hint):
    result = lg.verify(exported(reference), exported(candidate), grads=True, steps=2)
    assert not result.passed
    found = result.first_divergence
    step, phase, scope = where
    assert (found.step, found.phase) == (step, phase), found
    assert found.scope.startswith(scope), found
    assert 0 < found.max_abs_diff < float("inf")
    assert hint in (found.hint or ""), found.hint
    assert "without counterpart" not in found.hint  # the buffers only one side stores
