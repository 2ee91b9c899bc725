"""Transformer and recurrent ports (``examples/transformer``): torch.nn against paddle.nn as users
write them -- packed attention weights, fused projections, tied embeddings, LSTM/GRU layers and
LSTMCells -- verify with gradients and training steps and no name map; planted bugs exit 1 in
the right place; tied against untied is said."""

import numpy as np
import pytest
from conftest import EXAMPLES

import lossgraph as lg
from lossgraph.cli import native_runner
from lossgraph.errors import VerificationError
from lossgraph.verify import hints
from lossgraph.verify.align import Part

FOLDER = EXAMPLES / "transformer"
E = 8


def torch_(name):
    return f"{FOLDER}/transformer_torch.py:{name}"


def paddle_(name):
    return f"{FOLDER}/transformer_paddle.py:{name}"


def planted(name):
    return f"{FOLDER}/transformer_paddle_planted.py:{name}"


def verify(exported, reference, candidate, **options):
    return lg.verify(exported(reference), exported(candidate), **options)


def assert_all_paired(result, buffers=()):
    """Every parameter paired; ``buffers``: the reference's buffers without counterpart."""
    pmap = result.param_map
    assert pmap.unmapped_reference == list(buffers)
    assert not pmap.unmapped_candidate and not pmap.shape_mismatch


@pytest.mark.parametrize("name", ["encoder_layer", "gelu_encoder_layer", "decoder_layer", "transformer",
                                  "cross_attention",
                                  "causal_attention", "fused_attention", "tied_lm", "lstm",
                                  "lstm_2_layers", "lstm_bidirectional", "gru", "gru_bidirectional",
                                  "lstm_birnn", "gru_rnn",
                                  "tiny_llama"])
def test_ports_train_the_same(exported, name):
    result = verify(exported, torch_(name), paddle_(name), grads=True, steps=2)
    assert result.passed, [(s.step, s.passed) for s in result.steps]
    # HF's rotary inv_freq is a buffer PaddleFormers computes in the forward: listed, no error
    assert_all_paired(result, ["model.rotary_emb.inv_freq"] if name == "tiny_llama" else [])


def test_llama_output_head_stored_either_way_round(exported):
    """torch's lm_head is a Linear [vocab, hidden]; the Paddle port stores [hidden, vocab] and
    reads h @ W (PaddleFormers 0.4.1): carried transposed, by how the graph reads it."""
    result = verify(exported, torch_("tiny_llama"), paddle_("tiny_llama"))
    pairs = {p.reference: p.transform for p in result.param_map.pairs}
    assert pairs["lm_head.weight"] == "transpose"
    assert pairs["model.layers.1.mlp.gate_proj.weight"] == "transpose"
    assert pairs["model.norm.weight"] == "identity"


def test_attention_weights_are_split_and_transposed(exported):
    result = verify(exported, torch_("encoder_layer"), paddle_("encoder_layer"))
    pairs = {p.reference: p for p in result.param_map.pairs}
    assert [(p.name, p.rows, p.transform) for p in pairs["self_attn.in_proj_weight"].parts] == [
        ("self_attn.q_proj.weight", (0, E), "transpose"),
        ("self_attn.k_proj.weight", (E, 2 * E), "transpose"),
        ("self_attn.v_proj.weight", (2 * E, 3 * E), "transpose")]
    assert [p.transform for p in pairs["self_attn.in_proj_bias"].parts] == ["identity"] * 3
    # out_proj is a NonDynamicallyQuantizableLinear: a Linear, its square weight transposed
    assert pairs["self_attn.out_proj.weight"].transform == "transpose"


def test_attention_modules_named_apart_pair_by_structure(exported):
    """torch's decoder calls its cross-attention ``multihead_attn``, Paddle's ``cross_attn``."""
    result = verify(exported, torch_("decoder_layer"), paddle_("decoder_layer"))
    pairs = {p.reference: p.candidate for p in result.param_map.pairs}
    assert pairs["multihead_attn.in_proj_weight"] == (
        "cross_attn.q_proj.weight + cross_attn.k_proj.weight + cross_attn.v_proj.weight")
    assert pairs["multihead_attn.out_proj.weight"] == "cross_attn.out_proj.weight"


def test_paddle_reference_reads_slices_of_torch_packed_weights(exported):
    result = verify(exported, paddle_("encoder_layer"), torch_("encoder_layer"), grads=True, steps=2)
    assert result.passed
    assert_all_paired(result)
    pairs = {p.reference: p for p in result.param_map.pairs}
    assert pairs["self_attn.k_proj.bias"].packed_in == Part("self_attn.in_proj_bias", (E, 2 * E))
    assert pairs["self_attn.v_proj.weight"].packed_in == Part(
        "self_attn.in_proj_weight", (2 * E, 3 * E), "transpose")


@pytest.mark.parametrize("reference, candidate", [
    (paddle_("fused_attention"), torch_("fused_attention")),  # split against fused
    (paddle_("fused_qkv"), paddle_("fused_attention")),  # Paddle's fused [in, 3E]: columns
    (paddle_("fused_attention"), paddle_("fused_qkv")),
    (torch_("fused_attention"), paddle_("fused_qkv")),  # fused against fused, across layouts
])
def test_fused_projections_pair_with_split_ones(exported, reference, candidate):
    result = verify(exported, reference, candidate, grads=True, steps=2)
    assert result.passed
    assert_all_paired(result)


def test_tied_weights_are_one_parameter(exported):
    from lossgraph.graph import LossGraph

    torch_params = LossGraph.load(exported(torch_("tied_lm"))).meta.params
    assert torch_params["embed.weight"].aliases == ["lm_head.weight"]
    assert "lm_head.weight" not in torch_params
    paddle_params = LossGraph.load(exported(paddle_("tied_lm"))).meta.params
    assert paddle_params["embed.weight"].aliases == ["lm_head.weight"]
    # a name map may name a tied tensor by any of its names
    mapped = verify(exported, torch_("tied_lm"), paddle_("tied_lm"),
                    name_map={"lm_head.weight": {"name": "lm_head.weight"}})
    assert mapped.passed and mapped.param_map.pairs[0].how == "map"


@pytest.mark.parametrize("reverse", [False, True])
def test_tied_against_untied_is_said(exported, reverse):
    ref, cand = torch_("tied_lm"), planted("untied_head")
    side = "candidate"
    if reverse:
        ref, cand, side = cand, ref, "reference"
    with pytest.raises(VerificationError, match=rf"ties lm_head\.weight to embed\.weight .*the {side} "
                                                r"has lm_head\.weight as a parameter of its own"):
        verify(exported, ref, cand)


def test_recurrent_ports_train_like_each_framework_eagerly(exported):
    """A 2-layer torch LSTM against two Paddle LSTMCells, Adam, against both frameworks' own
    eager training."""
    result = verify(exported, torch_("lstm_2_layers"), paddle_("lstm_2_layers"), grads=True,
                    steps=3, native=True, native_runner=native_runner())
    assert result.passed
    pairs = {p.reference: p.candidate for p in result.param_map.pairs}
    assert pairs["weight_ih_l1"] == "cell1.weight_ih" and pairs["bias_hh_l0"] == "cell0.bias_hh"
    assert all(d.passed for side in result.native.values() for d in side)


@pytest.mark.parametrize("reference, candidate, scope, hint", [
    ("encoder_layer", "heads_split_4", "self_attn",
     "the reference's scores contract heads of 4 features, the candidate's heads of 2"),
    ("encoder_layer", "pre_norm", "self_attn",
     "the candidate has already applied norm1, the reference not (pre-norm against post-norm"),
    ("causal_attention", "mask_not_inverted", "attn",
     "the candidate leaves out exactly the positions the reference attends to"),
    ("causal_attention", "mask_dropped", "attn",
     "the reference leaves out 3 of 9 score positions before the softmax, the candidate none"),
    ("fused_attention", "missing_scale", "",
     "the reference divides the scores by 2.82843 (head size 8), which the candidate does not"),
    ("gelu_encoder_layer", "gelu_tanh", "", "the reference computes the exact one, the candidate the tanh"),
    ("lstm_2_layers", "lstm_gate_order", "",
     "the reference computes the cell candidate (the tanh gate) from block 2 of the 4 gate blocks"),
    ("tiny_llama", "rope_theta", "model.layers.0.self_attn", "imply rope_theta 10000, the candidate's 500000"),
    ("tiny_llama", "rms_norm_eps", "model.layers.0.input_layernorm", "adds 1e-06 under the square root, the candidate 1e-05"),
    ("tiny_llama", "gqa_tiled", "model.layers.0.self_attn", "the reference interleaves them"),
])
def test_planted_bugs_are_found(cli, exported, reference, candidate, scope, hint):
    result = verify(exported, torch_(reference), planted(candidate), grads=True, steps=2)
    assert not result.passed
    found = result.first_divergence
    assert (found.step, found.phase) == (0, "forward") and found.scope == scope, found
    assert 0 < found.max_abs_diff < float("inf")
    if hint:
        assert hint in (found.hint or ""), found.hint
    if candidate == "rope_theta":  # the inv_freq buffer it computes inline is no port bug
        assert "without counterpart" not in found.hint
    run = cli("verify", exported(torch_(reference)), exported(planted(candidate)))
    assert run.exit_code == 1


def _cosine_table(theta, dim=8, positions=32, interleaved=False, layout=(32, 8)):
    freqs = theta ** (-np.arange(0, dim, 2) / dim)
    freqs = np.repeat(freqs, 2) if interleaved else np.concatenate([freqs, freqs])
    return np.cos(np.arange(positions)[:, None] * freqs).astype(np.float32).reshape(layout)


@pytest.mark.parametrize("theta", [10000.0, 500000.0, 1000000.0])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("layout", [(32, 8), (1, 32, 1, 8), (1, 1, 32, 8)])
def test_rope_base_read_off_a_cached_cosine_table(theta, interleaved, layout):
    """A model that computes its rotary tables at construction (PaddleFormers' LLaMA) leaves
    only cos(position x frequency) in the graph: theta is read off it through float32 rounding."""
    found = hints._cosine_table_theta(_cosine_table(theta, interleaved=interleaved, layout=layout))
    assert found is not None and abs(found - theta) < 1e-3 * theta, found


@pytest.mark.parametrize("table", [
    np.ones((32, 8), np.float32),                               # no angle at all
    np.random.default_rng(0).uniform(-1, 1, (32, 8)).astype(np.float32),
    _cosine_table(10000.0)[:, :1],                              # too narrow
    np.cos(np.arange(32)[:, None] * np.full(8, 0.3)).astype(np.float32),  # one frequency, not 1
    np.sin(np.arange(32)[:, None] * np.ones(8)).astype(np.float32),       # a sine table
])
def test_what_is_not_a_rotary_cosine_table_gives_no_base(table):
    assert hints._cosine_table_theta(table) is None


@pytest.mark.parametrize("value, op, size, scale", [
    (8**0.5, "Div", 8, True), (8**-0.5, "Mul", 8, True), (float(np.float32(64**-0.25)), "Mul", 64, True),
    (8**-0.5, "Div", 8, False),  # dividing by 1/sqrt(d) is no attention scale
    (2.0, "Div", 8, False), (0.5, "Mul", 8, False),  # a softmax temperature
    (0.5, "Mul", 16, True),  # 16^-1/4: queries and keys each scaled
])
def test_attention_scales_are_read_against_the_contracted_size(value, op, size, scale):
    assert hints._is_scale_of(value, op, size) == scale
