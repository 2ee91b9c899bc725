"""The float64 noise floor: is a float32 difference rounding noise or a real difference?

Both graphs are converted to float64 (``lossgraph.runtime.float64``) and everything that was
compared — the forward check, gradients, training steps — is run again from the same values
(the float32 inputs and weights, widened), with every hyper-parameter at the value the float32
program computes with (a framework that rounds 0.9 to float32 is re-run with that float32 0.9)
and the scalars derived from them exact (``scalars="hyper-float32"`` in :func:`build_update`).
The float64 run is the exact-arithmetic answer to "do the two graphs compute the same". The
rule: a difference above the tolerance is **noise** when the float64 re-run of the same
comparison is within the tolerance, and **semantic** otherwise. The verdict is ``noise`` when
every diff above the tolerance is noise, ``semantic`` when any is not.

Some computations amplify rounding so much that float64 cannot clear it: Adam divides a
gradient that is zero but for rounding (a bias before a normalization, at step 0) by its own
size, a step of full size in float32, of 1e-9 in float64, and the parameters part by 1e-6 a
step later. For a diff float64 does not clear but shrinks (``SHRUNK``-fold at least), the
reference is run once more in float64 from starting values moved by a rounding error (relative
``NUDGE``, random signs) and compared with itself: a diff no larger than ``AMPLIFIED`` times
what the reference's own nudge moves is **noise** too (reason ``amplified``), since the
reference cannot reproduce itself more closely than that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from lossgraph.graph import LossGraph, weights_as_inputs
from lossgraph.verify.compare import ValueDiff
from lossgraph.verify.results import GradDiff, StepResult

#: The rule, as reports and ``lossgraph verify --help`` state it.
NOISE_RULE = (
    "noise when the float64 re-run of the same comparison is within the tolerance, or within "
    "10x of what the reference itself moves in float64 when its starting values move by a "
    "rounding error (a computation that amplifies rounding)"
)
#: float32 over float64 diff above which a float64 diff is looked at as amplified rounding
SHRUNK = 10.0
#: relative size of the rounding error the reference's starting values are moved by
NUDGE = 2.0**-50
#: how many times the reference's own float64 movement a diff may be and still be rounding
AMPLIFIED = 10.0


def widen(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 arrays as float64 (the same numbers), everything else unchanged."""
    return {
        k: v.astype(np.float64) if np.asarray(v).dtype == np.float32 else v for k, v in values.items()
    }


def float64_graph(graph: LossGraph, fed: Iterable[str] = ()) -> LossGraph:
    """``graph`` in float64; the values named in ``fed`` (parameters and buffers, which every
    run feeds) become typed inputs, not float64 copies of their initializers (a second copy of
    the weights beside the widened starting values). Convolutions stay whole until a session is
    built: gradients are built over them (``to_float64``'s ``defer``)."""
    from lossgraph.runtime.float64 import to_float64

    return LossGraph(to_float64(weights_as_inputs(graph.model, fed), defer=True), graph.meta, graph.path)


def float64_setup(setup: Any) -> Any:
    """The same comparison with both graphs, inputs and starting values in float64."""
    inputs = widen(setup.inputs)
    return replace(
        setup,
        ref=float64_graph(setup.ref, setup.ref_params),
        cand=float64_graph(setup.cand, setup.cand_params),
        inputs=inputs,
        ref_params=widen(setup.ref_params),
        cand_params=widen(setup.cand_params),
        dtype="float64",
        draws=setup.draws.widened(inputs) if setup.draws is not None else None,
    )


def classify(
    steps32: list[StepResult], steps64: list[StepResult], nudged: list[StepResult] | None = None
) -> dict[str, Any]:
    """Each float32 diff above the tolerance, noise where the float64 re-run of the same
    comparison (``steps64``, compared under the same tolerance) passes, or where it is within
    ``AMPLIFIED`` times the reference's own float64 movement (``nudged``: the reference against
    itself from nudged starting values), semantic elsewhere."""
    own = {(s.step, what): d.max_abs_diff for s in nudged or [] for what, d, _ in _paired_diffs(s, s)}
    items = []
    for s32, s64 in zip(steps32, steps64):
        for what, d32, d64 in _paired_diffs(s32, s64):
            if d32.passed:
                continue
            item = {"step": s32.step, "what": what, "float32": d32.max_abs_diff,
                    "float64": d64.max_abs_diff, "verdict": "noise" if d64.passed else "semantic"}
            moved = own.get((s32.step, what))
            if moved is not None and not d64.passed:
                item["float64_nudged"] = moved
                if shrunk(item) and d64.max_abs_diff <= AMPLIFIED * moved:
                    item.update(verdict="noise", reason="amplified")
            items.append(item)
    verdict = "none" if not items else ("noise" if all(i["verdict"] == "noise" for i in items) else "semantic")
    return {
        "verdict": verdict,
        "rule": NOISE_RULE,
        "max_float32_diff": max((i["float32"] for i in items), default=0.0),
        "max_float64_diff": max((i["float64"] for i in items), default=0.0),
        "items": items,
    }


def shrunk(item: dict[str, Any]) -> bool:
    """A float64 diff ``SHRUNK``-fold below its float32 one: rounding may be at work."""
    return item["float64"] * SHRUNK <= item["float32"]


def needs_nudge(floor: dict[str, Any]) -> bool:
    """Whether a semantic item might be amplified rounding (see the module's docstring)."""
    return any(i["verdict"] == "semantic" and shrunk(i) for i in floor["items"])


def amplified_native(diff: Any, nudged_steps: list[StepResult], as_reference: Mapping[str, str],
                     tol: Any) -> float | None:
    """Whether a native diff (one side's ONNX Runtime training against its framework's) is
    rounding the computation amplifies: every parameter whose float64 difference is above the
    tolerance shrank ``SHRUNK``-fold from float32 and stays within ``AMPLIFIED`` times how far
    the float64 reference's paired parameter moves at that step from nudged starting values
    (``as_reference``: the side's parameter names -> the reference's). Returns the largest such
    movement, or None where any parameter (or a loss) is not explained so."""
    exact = diff.float64
    if exact is None or exact.passed or not all(d.passed for d in exact.losses.values()):
        return None
    moved = {name: d.max_abs_diff for s in nudged_steps if s.step == diff.step for name, d in s.parameters.items()}
    used = []
    for name, size in exact.each.items():
        if size <= tol.atol:
            continue
        reference = as_reference.get(name)
        if reference not in moved or size * SHRUNK > diff.each.get(name, 0.0) or size > AMPLIFIED * moved[reference]:
            return None
        used.append(moved[reference])
    return max(used, default=None)


def nudged_setup(setup64: Any, param_map: Any, seed: int = 0) -> Any:
    """The float64 reference against itself (``param_map`` pairs it with itself), the
    candidate's starting values being the reference's moved by a rounding error (relative
    ``NUDGE``, random signs)."""
    rng = np.random.default_rng(seed)

    def nudge(value: np.ndarray) -> np.ndarray:
        value = np.asarray(value)
        if value.dtype != np.float64:
            return value
        return value * (1.0 + NUDGE * rng.choice([-1.0, 1.0], size=value.shape))

    return replace(
        setup64, cand=setup64.ref, param_map=param_map, warnings=[], dropout=None,
        cand_params={name: nudge(value) for name, value in setup64.ref_params.items()},
    )


def _paired_diffs(a: StepResult, b: StepResult):
    """(what, float32 diff, float64 diff) for every compared value of one step."""
    for name, diff in a.losses.items():
        yield f"loss {name}", diff.diff, b.losses[name].diff
    for name, diff in a.taps.items():
        if name in b.taps:
            yield f"module output {name}", diff, b.taps[name]
    for name, diff in a.gradients.items():
        for loss, d in diff.losses.items():
            other = b.gradients.get(name)
            if other is not None and loss in other.losses:
                yield f"gradient {name} ({loss})", d, other.losses[loss]
    for kind, left, right in (("parameter", a.parameters, b.parameters),
                              ("optimizer state", a.optimizer_state, b.optimizer_state)):
        for name, d in left.items():
            if name in right:
                yield f"{kind} {name}", d, right[name]
    if a.lr is not None and b.lr is not None:
        yield "learning rate", a.lr, b.lr



def semantic_view(steps: list[StepResult], floor: dict[str, Any]) -> list[StepResult]:
    """The steps as the verdict sees them: every diff the noise floor classified as noise
    counts as passed, so the first failing step and its phase are those of a semantic diff."""
    noise = {(i["step"], i["what"]) for i in floor.get("items", []) if i["verdict"] == "noise"}
    return [_with_noise_passed(step, {what for s, what in noise if s == step.step}) for step in steps]


def _passed(diff: ValueDiff) -> ValueDiff:
    return replace(diff, passed=True)


def _with_noise_passed(step: StepResult, noise: set[str]) -> StepResult:
    if not noise:
        return step

    def keep(what: str, diff: ValueDiff) -> ValueDiff:
        return _passed(diff) if what in noise else diff

    return replace(
        step,
        losses={n: replace(d, diff=keep(f"loss {n}", d.diff)) for n, d in step.losses.items()},
        taps={n: keep(f"module output {n}", d) for n, d in step.taps.items()},
        gradients={
            name: GradDiff({loss: keep(f"gradient {name} ({loss})", d) for loss, d in g.losses.items()})
            for name, g in step.gradients.items()
        },
        parameters={n: keep(f"parameter {n}", d) for n, d in step.parameters.items()},
        optimizer_state={n: keep(f"optimizer state {n}", d) for n, d in step.optimizer_state.items()},
        lr=keep("learning rate", step.lr) if step.lr is not None else None,
    )
