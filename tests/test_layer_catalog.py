"""The layer catalog (``examples/catalog``): each torch.nn layer against its paddle.nn
counterpart, as a user writes them, verified with gradients and two Adam steps -- exports on
both sides, pairs with no name map (PReLU's ``_weight``), has a gradient rule for every op,
and passes. The full list is slow; the default run takes a representative few."""

import sys

import pytest
from conftest import EXAMPLES

import lossgraph as lg

FOLDER = EXAMPLES / "catalog"
sys.path.insert(0, str(FOLDER))
from layers_torch import LAYERS  # noqa: E402

#: in the default run: a rule or a pairing each needed (PRelu, Celu through Elu, Mish, Shrink,
#: ThresholdedRelu through Relu's kink at the threshold, GLU's Split)
DEFAULT = ("prelu_channels", "celu", "mish", "softshrink", "threshold", "glu")


def _params(names):
    return [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _params(LAYERS))
def test_layer_trains_like_its_port(exported, name):
    result = lg.verify(exported(f"{FOLDER}/layers_torch.py:{name}"),
                       exported(f"{FOLDER}/layers_paddle.py:{name}"), grads=True, steps=2)
    assert result.passed, result.first_divergence
    pmap = result.param_map
    assert not pmap.unmapped_reference and not pmap.unmapped_candidate
