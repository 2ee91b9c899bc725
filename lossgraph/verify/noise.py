"""The float64 noise floor: is a float32 difference rounding noise or a real difference?

Both graphs are converted to float64 (``lossgraph.autodiff.float64``) and everything that was
compared — the forward check, gradients, training steps — is run again from the same values
(the float32 inputs and weights, widened). A difference that comes from float32 rounding
shrinks by orders of magnitude in float64; a semantic difference (another formula, another
constant) stays. Each diff above the tolerance is classified; the verdict is ``noise`` when all
of them are noise, ``semantic`` when any is not.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from lossgraph.graph import LossGraph
from lossgraph.verify.results import StepResult

#: A diff is rounding noise when its float64 counterpart is smaller than this fraction of it.
NOISE_RATIO = 1e-2


def widen(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 arrays as float64 (the same numbers), everything else unchanged."""
    return {
        k: v.astype(np.float64) if np.asarray(v).dtype == np.float32 else v for k, v in values.items()
    }


def float64_graph(graph: LossGraph) -> LossGraph:
    from lossgraph.autodiff.float64 import to_float64

    return LossGraph(to_float64(graph.model), graph.meta, graph.path)


def noise_floor(setup: Any, options: Any, steps32: list[StepResult]) -> dict[str, Any]:
    """Re-run the comparison in float64 and classify every float32 diff above the tolerance."""
    from lossgraph.verify.pipeline import compare

    setup64 = replace(
        setup,
        ref=float64_graph(setup.ref),
        cand=float64_graph(setup.cand),
        inputs=widen(setup.inputs),
        ref_params=widen(setup.ref_params),
        cand_params=widen(setup.cand_params),
        dtype="float64",
    )
    steps64, _, _ = compare(setup64, options, dtype="float64")
    items = []
    for s32, s64 in zip(steps32, steps64):
        for what, d32, d64 in _paired_diffs(s32, s64):
            if d32.passed:
                continue
            noise = d64.max_abs_diff <= NOISE_RATIO * d32.max_abs_diff
            items.append({
                "step": s32.step,
                "what": what,
                "float32": d32.max_abs_diff,
                "float64": d64.max_abs_diff,
                "verdict": "noise" if noise else "semantic",
            })
    verdict = "none" if not items else ("noise" if all(i["verdict"] == "noise" for i in items) else "semantic")
    return {
        "verdict": verdict,
        "ratio": NOISE_RATIO,
        "rule": f"noise when the float64 diff is below {NOISE_RATIO:g} x the float32 diff",
        "max_float32_diff": max((i["float32"] for i in items), default=0.0),
        "max_float64_diff": max((i["float64"] for i in items), default=0.0),
        "items": items,
    }


def _paired_diffs(a: StepResult, b: StepResult):
    """(what, float32 diff, float64 diff) for every compared value of one step."""
    for name, diff in a.losses.items():
        yield f"loss {name}", diff.diff, b.losses[name].diff
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

