"""PaddleFormers' own LLaMA, Qwen2 and BERT masked LM (0.4.1, tiny configs) against Hugging
Face's: correct ports train the same with no name map and no --allow-unmapped (the LLaMA head
stored [hidden, vocab], torch's ``inv_freq`` buffer, BERT's tied decoder and the pooler its
masked-LM loss never reads); planted configuration differences are found with a hint. Slow:
PaddleFormers is installed for the slow run only, into ``.paddleformers/`` (``.ci/run``, with
``--no-deps --target``: it needs transformers 4.x, the torch side transformers 5), which only
the Paddle side's exports put on PYTHONPATH -- as a user runs the two exports."""

import os
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT

import lossgraph as lg
from lossgraph.graph import LossGraph

pytest.importorskip("transformers")
SITE = ROOT / ".paddleformers"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SITE / "paddleformers").is_dir(), reason=(
        "PaddleFormers is not installed: pip install --no-deps --target .paddleformers "
        "-r tests/paddleformers-requirements.txt")),
]

FOLDER = EXAMPLES / "transformer"


@pytest.fixture(scope="module")
def paddleformers(tmp_path_factory):
    """Export ``transformer_paddleformers.py:NAME`` once, in a process of its own with
    PaddleFormers on PYTHONPATH; returns the .onnx path."""
    folder = tmp_path_factory.mktemp("paddleformers")
    cache = {}

    def get(name):
        if name not in cache:
            out = folder / f"{name}.onnx"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)])}
            run = subprocess.run(
                [sys.executable, "-m", "lossgraph.cli", "export",
                 f"{FOLDER}/transformer_paddleformers.py:{name}", "-o", str(out)],
                env=env, capture_output=True, text=True, timeout=900,
            )
            assert run.returncode == 0, run.stderr[-2000:]
            cache[name] = out
        return cache[name]

    return get


def hf(name):
    return f"{FOLDER}/transformer_hf.py:{name}"


@pytest.mark.parametrize("name, buffers, unreached", [
    ("llama", ["model.rotary_emb.inv_freq"], []),
    ("qwen2", ["model.rotary_emb.inv_freq"], []),
    ("qwen2_tied", ["model.rotary_emb.inv_freq"], []),
    ("bert", ["bert.embeddings.position_ids", "bert.embeddings.token_type_ids"],
     ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]),
])
def test_paddleformers_models_train_like_hugging_face_ones(exported, paddleformers, name, buffers,
                                                            unreached):
    result = lg.verify(exported(hf(name)), paddleformers(name), grads=True, steps=2)
    assert result.passed, result.first_divergence
    pmap = result.param_map
    assert sorted(pmap.unmapped_reference) == buffers
    assert not pmap.unmapped_candidate and not pmap.shape_mismatch
    candidate = LossGraph.load(paddleformers(name))
    assert [n for o in candidate.meta.optimizers.values() for n in o.unreached] == unreached
    if unreached:
        assert any("reached by no loss" in w for w in result.warnings)


@pytest.mark.parametrize("reference, candidate, scope, hint", [
    ("llama", "llama_rope_theta", "model.layers.0.",
     "the reference's rotation angles imply rope_theta 10000, the candidate's 500000"),
    ("qwen2", "qwen2_rms_norm_eps", "model.layers.0.input_layernorm",
     "the reference adds 1e-06 under the square root, the candidate 1e-05"),
    ("bert", "bert_layer_norm_eps", "bert.embeddings.LayerNorm",
     "the reference uses 1e-12; the candidate computes with 1e-05 instead"),
])
def test_planted_differences_are_found_with_a_hint(exported, paddleformers, reference, candidate,
                                                   scope, hint):
    result = lg.verify(exported(hf(reference)), paddleformers(candidate), grads=True, steps=2)
    assert not result.passed
    found = result.first_divergence
    assert (found.step, found.phase) == (0, "forward"), found
    assert found.scope.startswith(scope), found
    assert 0 < found.max_abs_diff < float("inf")
    assert hint in (found.hint or ""), found.hint
