"""A port checked in a user's own test suite with ``lossgraph.testing.assert_same_training``.

    pytest examples/testing/test_port.py

The reference (PyTorch) and its Paddle port are the bug gallery's classifier (Adam with L2 weight
decay, a StepLR schedule, dropout in training mode). Spec files are exported side by side and
cached: re-running after an edit of the port exports the port only.
"""

from pathlib import Path

import pytest

from lossgraph.testing import assert_same_training

BUGS = Path(__file__).resolve().parents[1] / "bugs"


def test_the_port_trains_the_same():
    assert_same_training(f"{BUGS / 'bugs_torch.py'}:classifier", f"{BUGS / 'bugs_paddle.py'}:classifier",
                         grads=True, steps=3, tol=1e-6)


def test_a_port_with_another_adam_epsilon_is_caught():
    with pytest.raises(AssertionError) as caught:
        assert_same_training(f"{BUGS / 'bugs_torch.py'}:classifier",
                             f"{BUGS / 'bugs_paddle.py'}:classifier_adam_epsilon", steps=3)
    assert "epsilon" in str(caught.value)  # the likely cause names it
    assert caught.value.report["passed"] is False  # the whole JSON report
