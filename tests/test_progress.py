"""Progress of long runs: what ``lossgraph.progress`` tells a listener (the CLI's spinner on a
terminal), and nothing on stderr when stderr is not a terminal."""

from __future__ import annotations

from conftest import EXAMPLES

import lossgraph as lg
from lossgraph.progress import reporting, say

BUGS = EXAMPLES / "bugs"


def test_a_listener_hears_each_training_step_the_float64_rerun_and_the_localization(exported):
    ref = exported(f"{BUGS / 'bugs_torch.py'}:classifier")
    cand = exported(f"{BUGS / 'bugs_paddle.py'}:classifier_adam_epsilon")
    heard: list[str] = []
    with reporting(heard.append):
        result = lg.verify(ref, cand, grads=True, steps=2)
    assert not result.passed
    assert heard[:2] == ["training step 1/2", "training step 2/2"]
    assert any(m.startswith("float64 re-run") for m in heard)
    assert any(m.startswith("localizing the first divergence") for m in heard)


def test_nothing_listens_outside_a_reporting_block():
    heard: list[str] = []
    with reporting(heard.append):
        say("inside")
    say("outside")
    assert heard == ["inside"]


def test_no_progress_on_a_stderr_that_is_not_a_terminal(exported, cli):
    ref = exported(f"{BUGS / 'bugs_torch.py'}:classifier")
    cand = exported(f"{BUGS / 'bugs_paddle.py'}:classifier")
    result = cli("verify", ref, cand, "--steps", "2")
    assert result.exit_code == 0 and result.stderr == ""
