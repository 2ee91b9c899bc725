"""The training-loop example (``examples/training``): a tiny transformer LM trained as most
language-model ports train it (AdamW with no-decay groups, warmup-cosine, global-norm clipping,
4 accumulated micro-batches), in torch and its Paddle port, and Paddle ports with one loop
mistake each. The correct port passes over fresh batches; each planted mistake is found at its
step, phase and parameter, with the hint that names it; each side trains like its framework."""

import pytest
from conftest import EXAMPLES

import lossgraph as lg
from lossgraph.cli import native_runner

FOLDER = EXAMPLES / "training"


@pytest.fixture(scope="module")
def reference(exported):
    return exported(f"{FOLDER}/lm_torch.py:lm")


@pytest.mark.parametrize("target", ["lm_torch.py:lm", "lm_paddle.py:lm"])
def test_each_side_trains_like_its_framework(exported, target):
    path = exported(f"{FOLDER}/{target}")
    result = lg.verify(path, path, steps=3, native=True, native_runner=native_runner(), fresh_inputs=True)
    assert not result.native_failures, result.native_failures


@pytest.mark.parametrize("fresh", [False, True])
def test_the_port_trains_the_same(exported, reference, fresh):
    result = lg.verify(reference, exported(f"{FOLDER}/lm_paddle.py:lm"), grads=True, steps=5, fresh_inputs=fresh)
    assert result.passed, result.first_divergence


#: planted port -> (step, phase, where it parts (start of the node name), words of the hint)
PLANTED = {
    "clip_threshold": (0, "update", "", "global 2-norm <= 0.3 (torch.nn.utils.clip_grad_norm_"),
    "clip_per_tensor": (0, "update", "", "each gradient's own L2 norm <= 0.3"),
    "loss_not_divided": (0, "forward", "", "the reference divides the loss by 4, the candidate does not"),
    "never_cleared": (1, "update", "", "The candidate never clears its gradients"),
    "decay_everything": (0, "update", "layer.norm", "Weight decay reaches layer.norm"),
}


@pytest.mark.parametrize("name", PLANTED)
def test_a_planted_loop_mistake_is_found(exported, reference, name):
    step, phase, node, said = PLANTED[name]
    result = lg.verify(reference, exported(f"{FOLDER}/lm_paddle_planted.py:{name}"), grads=True, steps=5)
    divergence = result.first_divergence
    assert not result.passed and (divergence.step, divergence.phase) == (step, phase), divergence
    assert divergence.reference_node.startswith(node), divergence.reference_node
    assert said in (divergence.hint or ""), divergence.hint


@pytest.mark.slow
def test_the_gan_loop_of_discogan(exported):
    """DiscoGAN as GANs train (training mode, both optimizers clipping, an EMA of the
    generators): the port trains the same, and the EMA decay passed as 1 - decay is found at
    the generator's first step (step 1: the schedule steps the discriminator first)."""
    discogan = EXAMPLES / "discogan"
    reference = exported(f"{discogan}/discogan_torch.py:spec_gan_loop")
    result = lg.verify(reference, exported(f"{discogan}/discogan_paddle.py:spec_gan_loop"), grads=True, steps=2)
    assert result.passed, result.first_divergence
    result = lg.verify(reference, exported(f"{discogan}/discogan_paddle_planted.py:ema_decay_swapped"),
                       grads=True, steps=2)
    divergence = result.first_divergence
    assert not result.passed and (divergence.step, divergence.phase) == (1, "update"), divergence
    assert divergence.reference_node.endswith(":ema")
    assert "gen decay 0.999 vs 0.001: one side passes 1 - decay" in (divergence.hint or "")
