"""The op audit: every op in every exported example graph, on both sides, has a gradient rule or
is declared non-differentiable, so ``--grads`` never is the first to find an op it cannot pass
(the vision zoo's graphs: ``test_zoo.py``, slow)."""

import sys

import pytest
from conftest import EXAMPLES

from lossgraph.autodiff.registry import known_ops
from lossgraph.graph import LossGraph

sys.path.insert(0, str(EXAMPLES / "bugs"))
sys.path.insert(0, str(EXAMPLES / "transformer"))
from catalog import BUGS, CORRECT  # noqa: E402
from losses_torch import SPECS as LOSS_SPECS  # noqa: E402
from transformer_torch import SPECS as TRANSFORMER_SPECS  # noqa: E402

PENALTIES = ["wgan_gp", "wgan_lp", "dragan", "r1"]
TRANSFORMER_PLANTED = ["heads_split_4", "pre_norm", "missing_scale", "gelu_tanh", "lstm_gate_order",
                       "untied_head", "rope_theta", "rms_norm_eps", "gqa_tiled", "mask_not_inverted",
                       "mask_dropped"]


def targets() -> list[str]:
    found = [f"losses/losses_{fw}.py:{n}" for fw in ("torch", "paddle") for n in LOSS_SPECS]
    found += [f"losses/penalties_{fw}.py:{n}" for fw in ("torch", "paddle") for n in PENALTIES]
    found += [f"transformer/transformer_{fw}.py:{n}" for fw in ("torch", "paddle")
              for n in TRANSFORMER_SPECS]
    found += [f"transformer/transformer_paddle_planted.py:{n}" for n in TRANSFORMER_PLANTED]
    found += [t for bug in BUGS for t in (bug.reference, bug.candidate)]
    found += [t for ref, cand, _ in CORRECT for t in (ref, cand)]
    found += ["discogan/discogan_torch.py", "discogan/discogan_paddle.py", "resnet/resnet_torch.py:resnet18"]
    return sorted(set(found))


def unknown_ops(path) -> set[str]:
    graph = LossGraph.load(path)
    return {n.op_type for n in graph.model.graph.node} - known_ops()


@pytest.mark.parametrize("target", targets())
def test_every_op_can_be_differentiated(exported, target):
    assert not unknown_ops(exported(str(EXAMPLES / target))), target
