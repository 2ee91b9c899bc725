"""``lossgraph verify``: two LossGraphs, one runtime, the same inputs and weights, compared.

The reference's parameter values are carried into the candidate through the parameter map, both
graphs run on ONNX Runtime with the same seeded inputs, and every named loss is compared.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.autodiff import build_gradients
from lossgraph.errors import InternalError, VerificationError
from lossgraph.graph import SCOPE_KEY, SOURCE_KEY, LossGraph, node_meta, shown_op_type
from lossgraph.inputs import (
    Draws,
    describe_dropouts,
    draws_in,
    dropout_feeds,
    input_draw,
    load_inputs,
    make_inputs,
    mask_index,
)
from lossgraph.progress import say
from lossgraph.runtime.session import OrtRunner
from lossgraph.verify.align import (
    ParamMap,
    blocks_pairing,
    build_param_map,
    describe_unpaired_state,
    load_name_map,
    normalize_name_map,
    shown_names,
)
from lossgraph.verify.compare import (
    Tolerance,
    ValueDiff,
    compare_arrays,
    on_side,
    summarize,
)
from lossgraph.verify.dropouts import DropoutMatch, match_dropouts, with_masks_of
from lossgraph.verify.localize import check_not_both_non_finite
from lossgraph.verify.results import (
    Divergence,
    GradDiff,
    GraphInfo,
    LossDiff,
    NativeDiff,
    StepResult,
    VerifyResult,
)
from lossgraph.verify.steps import run_steps


@dataclass
class VerifyOptions:
    """What ``lossgraph verify`` was asked to do."""

    tol: float = 1e-6
    rtol: float = 0.0
    seed: int = 0
    inputs: str | None = None  # an .npz file overriding the seeded inputs
    name_map: str | Mapping[str, Any] | None = None  # a JSON file, or its parsed form
    allow_unmapped: bool = False
    device: str = "cpu"
    grads: bool = False  # also compare d(loss)/d(parameter) for every loss and mapped parameter
    steps: int = 0  # training steps to run and compare (0: the forward check only)
    localize: bool = True  # find the node where a divergence starts
    noise_floor: bool = True  # re-run in float64 to tell rounding noise from semantic diffs
    strict: bool = False  # count float32 noise above the tolerance as divergence
    native: bool = False  # also train each side in its framework, eagerly (needs native_runner)
    native_runner: Any = None  # (meta, start values, steps, inputs, seed) -> list[NativeStep]
    fresh_inputs: bool = False  # each training step draws its own inputs (Draws)


@dataclass
class Setup:
    """The two graphs, prepared for comparison: inputs, parameter map, starting values."""

    ref: LossGraph
    cand: LossGraph
    tol: Tolerance
    inputs: dict[str, np.ndarray]
    inputs_source: str
    param_map: ParamMap
    ref_params: dict[str, np.ndarray]
    cand_params: dict[str, np.ndarray]
    warnings: list[str]
    dtype: str = "float32"
    #: which reference mask each candidate dropout gets (written into ``cand``'s dropout calls)
    dropout: DropoutMatch | None = None
    #: the inputs of each micro-batch of each training step (draw 0 is ``inputs``)
    draws: Draws | None = None

    def step_feeds(self, graph: LossGraph, step: int, seed: int) -> dict[str, np.ndarray]:
        """The inputs and dropout masks of a training step's first micro-batch."""
        inputs = self.draws(step, 0) if self.draws is not None else self.inputs
        masks = dropout_feeds(graph.meta.dropout, seed, mask_index(graph.meta, step), np.dtype(self.dtype))
        return {**inputs, **masks}


#: what one training step keeps, per side, in its slim record (losses, learning rates, clipping;
#: measured: ~33 KB per step on a 10-parameter MLP); the whole values of a step (parameters,
#: gradients, optimizer state) are kept only for the latest step and the first failing one, and
#: replayed for any other (verify.steps.Trajectory), so they do not grow with the steps
STEP_OVERHEAD_BYTES = 64 * 1024
#: copies of both sides' parameters each step keeps with --native: the ONNX Runtime run's slim
#: record holds its parameters, and the eager run its own, to be compared step by step
NATIVE_STEP_COPIES = 2


def check_steps_fit(setup: Setup, options: VerifyOptions) -> None:
    """Raise VerificationError when ``--steps N`` would keep more than this machine's free
    memory: each step leaves a slim record (with --native, its parameters too), so a large N is
    refused in one line before the run instead of ending out of memory."""
    from lossgraph.inputs import available_memory

    if options.steps <= 1:
        return
    values = sum(v.nbytes for v in setup.ref_params.values()) + sum(
        v.nbytes for v in setup.cand_params.values())
    per_step = 2 * STEP_OVERHEAD_BYTES + NATIVE_STEP_COPIES * values * options.native
    available = available_memory()
    if available is None or options.steps * per_step <= available:
        return
    fits = max(1, int(available // per_step))
    kept = "its losses, and with --native its parameters" if options.native else "its losses"
    raise VerificationError(
        f"--steps {options.steps} needs about {options.steps * per_step / 2**30:.1f} GiB (every step keeps "
        f"{kept}), more than the {available / 2**30:.1f} GiB this machine has free; use "
        f"--steps {fits} or fewer."
    )


def _same_source_warnings(ref: LossGraph, cand: LossGraph) -> list[str]:
    """A graph compared with itself, or two graphs of one framework, pass for reasons that say
    nothing about a port: say so."""
    if ref.path and cand.path and os.path.exists(ref.path) and os.path.exists(cand.path) and (
        os.path.samefile(ref.path, cand.path)
    ):
        return [f"The reference and the candidate are the same file ({ref.path}): this compares a "
                f"graph with itself."]
    if ref.framework == cand.framework:
        return [f"Both graphs come from {ref.framework}: this compares two {ref.framework} "
                f"versions, not a port between the frameworks."]
    return []


def prepare(
    reference: LossGraph | str | Path, candidate: LossGraph | str | Path, options: VerifyOptions
) -> Setup:
    """Load and check both graphs, draw the inputs, pair the parameters and carry the values."""
    ref = reference if isinstance(reference, LossGraph) else LossGraph.load(reference)
    cand = candidate if isinstance(candidate, LossGraph) else LossGraph.load(candidate)
    tol = Tolerance(options.tol, options.rtol)
    warnings = check_compatible(ref, cand)
    warnings += _same_source_warnings(ref, cand)
    if options.inputs:
        loaded = load_inputs(options.inputs, ref.meta.inputs)
        inputs = input_draw(loaded, ref.meta.inputs, 0)
        inputs_source = str(options.inputs)
        _check_draws(loaded, ref, options)
    else:
        inputs = make_inputs(ref.meta.inputs, options.seed)
        inputs_source = f"seeded (seed {options.seed})"
    name_map = options.name_map
    if isinstance(name_map, (str, Path)):
        name_map = load_name_map(name_map)
    elif name_map is not None:
        name_map = normalize_name_map(name_map)
    param_map = build_param_map(ref, cand, name_map, options.allow_unmapped)
    ref_params = ref.param_values()
    if blocks_pairing(ref, cand, param_map):
        warnings.append(
            "Some parameters are not paired (--allow-unmapped); unpaired candidate parameters keep "
            "the candidate's own values."
        )
    state = describe_unpaired_state(ref, cand, param_map)
    if state:
        warnings.append(
            f"Without counterpart, each side keeps its own values: {state}; a difference they make "
            f"is reported as a divergence."
        )
    unreached = [
        f"in the {side} {shown_names(names)}"
        for side, graph in (("reference", ref), ("candidate", cand))
        if (names := [n for o in graph.meta.optimizers.values() for n in o.unreached])
    ]
    if unreached:
        warnings.append(
            f"Held by an optimizer but reached by no loss (no gradient; neither framework "
            f"updates them): {'; '.join(unreached)}."
        )
    own = cand.param_values()
    cand_params = {**own, **param_map.carry(ref_params, own)}
    dropout = _match_dropouts(ref, cand, param_map, warnings)
    draws = _draws(ref, options, loaded if options.inputs else inputs)
    return Setup(
        ref, with_masks_of(cand, dropout), tol, inputs, inputs_source, param_map, ref_params, cand_params, warnings,
        dropout=dropout, draws=draws,
    )


def _match_dropouts(
    ref: LossGraph, cand: LossGraph, param_map: ParamMap, warnings: list[str]
) -> DropoutMatch | None:
    """Pair the graphs' dropouts (scope translated through the parameter map, then position);
    warn, naming them, about those that get no common mask."""
    from lossgraph.verify.localize import module_map

    if not ref.meta.dropout and not cand.meta.dropout:
        return None
    match = match_dropouts(ref.meta.dropout, cand.meta.dropout, module_map(param_map, ref, cand))
    if not match.complete:
        sides = []
        if match.unmatched_reference:
            sides.append(f"reference {describe_dropouts(ref, match.unmatched_reference)}")
        if match.unmatched_candidate:
            sides.append(f"candidate {describe_dropouts(cand, match.unmatched_candidate)}")
        warnings.append(
            "Dropout masks cannot all be matched (by scope and mask shape, size-1 axes aside); these dropouts get "
            "masks of their own: " + "; ".join(sides) + "."
        )
    if match.by_position:
        warnings.append(
            "Dropouts paired by order and mask shape only (their scopes do not correspond): "
            + "; ".join(
                f"reference {describe_dropouts(ref, [j])} with candidate {describe_dropouts(cand, [k])}"
                for j, k in match.by_position
            )
            + "."
        )
    return match


def compare(setup: Setup, options: VerifyOptions, dtype: str = "float32", taps: bool = True):
    """The step results (the forward check, or ``options.steps`` training steps) and, for
    training, both sides' trajectories. ``taps=False``: the module outputs are not compared
    (the float64 re-run, where none differed in float32)."""
    if options.steps:
        steps, ref_run, cand_run = run_steps(
            setup.ref, setup.cand, setup.param_map, setup.draws or setup.inputs, setup.ref_params,
            setup.cand_params, setup.tol, options.steps, options.device, options.seed, dtype,
            # the float64 re-run is read for its step results and slim records only
            slim_params=bool(options.native), whole=dtype == "float32",
        )
        steps[0].taps = compare_taps(setup, options) if taps else {}
        return steps, ref_run, cand_run
    ref_losses = _run_losses(setup.ref, setup.ref_params, setup.inputs, options, "reference")
    cand_losses = _run_losses(setup.cand, setup.cand_params, setup.inputs, options, "candidate")
    check_not_both_non_finite(
        ref_losses, cand_losses, "loss", "",
        lambda: _side(setup.ref, {**_with_masks(setup.inputs, setup.ref, options.seed, 0, setup.dtype),
                                  **setup.ref_params}, options.device),
    )
    losses = {
        name: LossDiff(
            name,
            float(ref_losses[name]),
            float(cand_losses[name]),
            compare_arrays(ref_losses[name], cand_losses[name], setup.tol),
        )
        for name in setup.ref.meta.losses
    }
    step = StepResult(step=0, losses=losses, taps=compare_taps(setup, options) if taps else {})
    if options.grads:
        step.gradients = compare_gradients(
            setup.ref, setup.cand, setup.param_map,
            _with_masks(setup.inputs, setup.ref, options.seed, 0, setup.dtype),
            setup.ref_params, setup.cand_params, setup.tol, options.device,
            cand_inputs=_with_masks(setup.inputs, setup.cand, options.seed, 0, setup.dtype),
        )
    return [step], None, None


def compare_taps(setup: Setup, options: VerifyOptions) -> dict[str, ValueDiff]:
    """Every module output paired on both sides, from the starting values, under the tolerance
    rule: a port can part inside the model while its losses agree (a flat loss at random
    initialization hides a BatchNorm epsilon of 1e-3 for 1e-5)."""
    from lossgraph.verify.localize import paired_taps

    ref = _side(setup.ref, {**_with_masks(setup.inputs, setup.ref, options.seed, 0, setup.dtype),
                            **setup.ref_params}, options.device)
    cand = _side(setup.cand, {**_with_masks(setup.inputs, setup.cand, options.seed, 0, setup.dtype),
                              **setup.cand_params}, options.device)
    values, boundaries = paired_taps(ref, cand, setup.param_map, setup.tol)
    if boundaries and setup.dtype == "float32":  # the float64 re-run shares the warnings
        shown = [f"reference {t.partition('#')[0]} vs candidate {c.partition('#')[0]}"
                 for t, c in list(boundaries.items())[:4]]
        setup.warnings.append(
            "Module outputs that differ only by where a module ends (the other side computes "
            "the same value a few nodes later, e.g. an activation inside one side's layer), or "
            "that nothing reads, so no divergence: " + ", ".join(shown)
            + (f" and {len(boundaries) - 4} more" if len(boundaries) > 4 else "") + "."
        )
    return {name: compare_arrays(a, b, setup.tol) for name, (a, b) in values.items()}


def run_verify(
    reference: LossGraph | str | Path, candidate: LossGraph | str | Path, options: VerifyOptions
) -> VerifyResult:
    """Verify ``candidate`` against ``reference``. Raises VerificationError on bad input."""
    setup = prepare(reference, candidate, options)
    check_steps_fit(setup, options)
    ref, cand = setup.ref, setup.cand
    steps, ref_run, cand_run = compare(setup, options)
    result = VerifyResult(
        reference=_graph_info(ref),
        candidate=_graph_info(cand),
        tolerance=setup.tol,
        seed=options.seed,
        inputs_source=setup.inputs_source,
        param_map=setup.param_map,
        steps=steps,
        warnings=setup.warnings,
        strict=options.strict,
    )
    runs64: list[Any] = []
    setups64: list[Setup] = []

    def float64_runs():
        """The float64 re-run, made once for the noise floor and --native alike."""
        if not runs64:
            from lossgraph.verify.noise import float64_setup

            say("float64 re-run (is a difference rounding noise?)")
            for run in (ref_run, cand_run):  # the step the localization reads waits on disk
                if run is not None:
                    run.spill()
            setups64.append(float64_setup(setup))
            taps = any(not d.passed for d in steps[0].taps.values())
            runs64.extend(compare(setups64[0], options, dtype="float64", taps=taps))
        return runs64

    nudged: list[Any] = []

    def nudged_run():
        """The float64 reference against itself from nudged starting values, made once."""
        if not nudged:
            from lossgraph.verify.noise import nudged_setup

            float64_runs()
            self_map = build_param_map(setups64[0].ref, setups64[0].ref, None, False)
            nudged.extend(compare(nudged_setup(setups64[0], self_map, options.seed), options, dtype="float64")[0])
        return nudged

    failing = next((step for step in steps if not step.passed), None)
    if failing is not None and options.noise_floor:
        from lossgraph.verify.noise import classify, needs_nudge, semantic_view

        # every float32 diff above the tolerance, against the same comparison in float64
        result.noise_floor = classify(steps, float64_runs()[0])
        if needs_nudge(result.noise_floor):
            # a float64 diff that shrank but stayed: is it rounding the computation amplifies?
            result.noise_floor = classify(steps, float64_runs()[0], nudged_run())
        if not options.strict:
            # the first divergence is the first semantic diff, never one the report calls noise
            semantic = next((s for s in semantic_view(steps, result.noise_floor) if not s.passed), None)
            failing = semantic or failing
    if failing is not None:
        noise = result.noise_only and not options.strict
        quick = replace(options, localize=options.localize and not noise)
        say(f"localizing the first divergence (step {failing.step})")
        result.first_divergence = locate(setup, quick, failing, ref_run, cand_run)
    if options.native and options.native_runner is not None and options.steps:
        say("training each side eagerly in its framework (--native)")
        result.native = {
            "reference": native_diffs(ref, setup.ref_params, ref_run, options, setup.tol),
            "candidate": native_diffs(cand, setup.cand_params, cand_run, options, setup.tol),
        }
        if options.noise_floor and any(not d.passed for ds in result.native.values() for d in ds):
            # the same rule as between the graphs: above the tolerance counts when the float64
            # runs (ONNX Runtime and the framework both in float64) part as well
            _, ref_run64, cand_run64 = float64_runs()
            for side, graph, start, run in (("reference", ref, setup.ref_params, ref_run64),
                                            ("candidate", cand, setup.cand_params, cand_run64)):
                exact = native_diffs(graph, start, run, options, setup.tol, dtype="float64")
                result.native[side] = [
                    replace(d, float64=e) if not d.passed else d
                    for d, e in zip(result.native[side], exact)
                ]
            if result.native_failures:
                # float64 runs that part by rounding the computation amplifies are noise too
                from lossgraph.verify.noise import amplified_native

                as_reference = {"reference": {p.reference: p.reference for p in setup.param_map.pairs},
                                "candidate": {p.candidate: p.reference for p in setup.param_map.pairs}}
                result.native = {
                    side: [replace(d, amplified=amplified_native(d, nudged_run(), as_reference[side], setup.tol))
                           if d.semantic else d for d in diffs]
                    for side, diffs in result.native.items()
                }
    return result


def _with_masks(
    inputs: Mapping[str, np.ndarray], graph: LossGraph, seed: int, step: int = 0,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    masks = dropout_feeds(graph.meta.dropout, seed, step, np.dtype(dtype))
    return {**inputs, **masks}


def locate(setup: Setup, options: VerifyOptions, step: StepResult, ref_run, cand_run) -> Divergence:
    """The origin of the first failing step's divergence, with the likely cause."""
    from lossgraph.verify.hints import HintContext, hints_for
    from lossgraph.verify.localize import Side, localize_backward, localize_forward, neighbourhood

    phase = step.phase_failed() or "forward"
    ref_before = ref_run.before[step.step] if ref_run else setup.ref_params
    cand_before = cand_run.before[step.step] if cand_run else setup.cand_params
    ref_side = Side(setup.ref, {**setup.step_feeds(setup.ref, step.step, options.seed), **ref_before}, options.device)
    cand_side = Side(setup.cand, {**setup.step_feeds(setup.cand, step.step, options.seed), **cand_before},
                     options.device)
    if phase == "forward":
        non_finite = _non_finite_divergence(step, ref_side, cand_side, setup)
        if non_finite is not None:
            return non_finite
    failing = [d.name for d in step.losses.values() if not d.passed]
    # the forward search follows a diverging loss; the backward one the step's loss
    loss = failing[0] if phase == "forward" and failing else (step.loss or next(iter(failing), None))
    found = None
    values: dict[str, Any] = {}
    if options.localize and phase in ("forward", "backward"):
        found, origin = localize_forward(
            ref_side, cand_side, setup.param_map, setup.tol, step.step, loss,
            loss_agrees=step.losses[loss].passed if loss in step.losses else None,
            failing_taps=[t for t, d in step.taps.items() if not d.passed],
        )
        values.update(origin)
        if found is None and phase == "backward":
            grad_loss = step.loss or _worst_gradient_loss(step)
            found, grads = localize_backward(
                ref_side, cand_side, setup.param_map, setup.tol, step.step, grad_loss
            )
            values.update(grads)
    if found is None and phase == "update":
        found, values = _update_divergence(setup, step, ref_run, cand_run)
    if found is not None and not _has_size(found):
        # a localization that measured no difference at its node names no origin: report where
        # the difference was observed instead, and let no hint speak of that node
        found, values = None, {}
    if found is None:
        found = (_loss_divergence(setup.ref, setup.cand, step) or _tap_divergence(step)
                 or _gradient_divergence(step))
    if found is None:
        found, values = _update_divergence(setup, step, ref_run, cand_run)
    if found is None:
        raise InternalError(f"step {step.step} failed, but none of its diffs did")
    if phase == "forward" and step.losses:
        worst = max(step.losses.values(), key=lambda d: d.abs_diff)
        values.update(ref_loss=worst.reference, cand_loss=worst.candidate)
    values["dropout"] = setup.dropout
    values["param_map"] = setup.param_map
    context = HintContext(setup.ref, setup.cand, found, values)
    around = {
        "reference": neighbourhood(setup.ref, found.reference_node, values.get("ref_status")),
        "candidate": neighbourhood(setup.cand, found.candidate_node, values.get("cand_status")),
    }
    statistics = divergence_statistics(values, setup.tol)
    if phase == "forward" and not math.isfinite(found.max_abs_diff) and (
            statistics is None or statistics.get("shapes_differ")):
        # values of other shapes (NaN and Inf were reported above) have no difference to
        # measure: the size is the losses' one
        sizes = [d.abs_diff for d in step.losses.values() if math.isfinite(d.abs_diff) and d.abs_diff > 0]
        if sizes:
            found = replace(found, max_abs_diff=max(sizes))
    return replace(found, hint=hints_for(context), neighbourhood=around, statistics=statistics)


def _non_finite_divergence(step: StepResult, ref_side: Any, cand_side: Any, setup: Setup) -> Divergence | None:
    """Where a loss is NaN or Inf on one side only: the first node of that side that outputs
    NaN or Inf, a divergence of size inf."""
    from lossgraph.verify.localize import describe_node, first_non_finite, neighbourhood

    for diff in step.losses.values():
        ref_ok, cand_ok = np.isfinite(diff.reference), np.isfinite(diff.candidate)
        if ref_ok == cand_ok:
            continue
        which, side = ("candidate", cand_side) if ref_ok else ("reference", ref_side)
        node = first_non_finite(side)
        source = _node_meta(node, SOURCE_KEY)
        name = node.name if node is not None else ""
        around = neighbourhood(side.graph, name or None, None)
        return Divergence(
            step=step.step,
            phase="forward",
            scope=_node_meta(node, SCOPE_KEY) or "",
            op_type=shown_op_type(node),
            reference_node=name if which == "reference" else "",
            candidate_node=name if which == "candidate" else "",
            max_abs_diff=float("inf"),
            loss=diff.name,
            localized=node is not None,
            source=json.loads(source) if source else None,
            hint=(f"Only the {which} computes NaN or Inf ({diff.name} = "
                  f"{diff.reference if which == 'reference' else diff.candidate}); it appears "
                  f"first at {describe_node(node)}."),
            neighbourhood={"reference": around if which == "reference" else None,
                           "candidate": around if which == "candidate" else None},
        )
    return None


def _side(graph: LossGraph, feeds: Mapping[str, np.ndarray], device: str):
    from lossgraph.verify.localize import Side

    return Side(graph, feeds, device)


def _has_size(found: Divergence) -> bool:
    return bool(found.max_abs_diff > 0)  # inf counts; zero and NaN do not


def divergence_statistics(values: Mapping[str, Any], tol: Tolerance) -> dict[str, Any] | None:
    """Statistics of the diverging value on both sides (a forward value or a gradient, as the
    localization measured them), of the origin's inputs, and the tolerance it needed."""
    for ref_key, cand_key, what in (("ref_value", "cand_value", "value"),
                                    ("ref_grad", "cand_grad", "gradient")):
        ref, cand = values.get(ref_key), values.get(cand_key)
        if ref is None or cand is None:
            continue
        if np.shape(ref) != np.shape(cand):
            return {"what": what, "reference": summarize(ref), "candidate": summarize(cand),
                    "shapes_differ": True}
        diff = compare_arrays(ref, cand, tol)
        return {
            "what": what,
            "reference": summarize(ref),
            "candidate": summarize(cand),
            "max_abs_diff": diff.max_abs_diff,
            "max_rel_diff": diff.max_rel_diff,
            "required_tol": diff.required_tol,
            "inputs": {name: summarize(v) for name, v in (values.get("ref_inputs") or {}).items()},
        }
    return None


def _worst_gradient_loss(step: StepResult) -> str:
    worst = max(step.gradients.values(), key=lambda d: d.max_abs_diff)
    return max(worst.losses, key=lambda k: worst.losses[k].max_abs_diff)


def _update_divergence(setup: Setup, step: StepResult, ref_run, cand_run):
    """The parameter, buffer or optimizer state that parts first in an update."""
    failed = [(n, d) for n, d in step.parameters.items() if not d.passed]
    failed += [(n, d) for n, d in step.optimizer_state.items() if not d.passed]
    values: dict[str, Any] = {}
    if ref_run is not None and cand_run is not None:  # what each side's gradient clipping did
        values.update(ref_clip=ref_run.outcomes[step.step].clip, cand_clip=cand_run.outcomes[step.step].clip)
    if step.lr is not None and not step.lr.passed:
        values.update(ref_lr=ref_run.outcomes[step.step].lr, cand_lr=cand_run.outcomes[step.step].lr)
        name, diff = "lr", step.lr
    elif failed:
        name, diff = max(failed, key=lambda item: item[1].max_abs_diff)
    else:
        return None, values
    param = name.partition(":")[0]
    pair = setup.param_map.by_reference().get(param)
    if pair is not None and ref_run is not None:
        values.update(
            ref_before=ref_run.before[step.step][param],
            ref_after=ref_run.outcomes[step.step].params[param],
            cand_after=pair.gather(cand_run.outcomes[step.step].params),
        )
    info = setup.ref.meta.params.get(param)
    is_state = info is not None and info.kind == "buffer"
    divergence = Divergence(
        step=step.step,
        phase="update",
        scope=info.module if info is not None else "",
        op_type="running statistics" if is_state else (step.optimizer or "optimizer"),
        reference_node=name,
        candidate_node=pair.candidate + name[len(param):] if pair else name,
        max_abs_diff=diff.max_abs_diff,
        loss=step.loss,
        localized=True,
    )
    return divergence, values


def native_diffs(
    graph: LossGraph,
    start: Mapping[str, np.ndarray],
    run: Any,
    options: VerifyOptions,
    tol: Tolerance,
    dtype: str = "float32",
) -> list[NativeDiff]:
    """One side's ONNX Runtime trajectory (``run``, a Trajectory) against the framework's own
    eager training from the same values ``start``, with the same dropout masks; ``dtype``
    ``float64``: the framework trains in float64 (``run`` is then the float64 one)."""
    inputs = _draws(graph, options, _base_inputs(options, graph))
    if dtype == "float32":
        native = options.native_runner(graph.meta, start, options.steps, inputs, options.seed)
    else:
        native = options.native_runner(graph.meta, start, options.steps, inputs, options.seed,
                                       dtype=dtype)
    out = []
    for index, (eager, ours) in enumerate(zip(native, run.records())):
        losses = {
            name: compare_arrays(np.asarray(ours.losses[name]), np.asarray(value), tol)
            for name, value in eager.losses.items()
        }
        worst_name, worst, each = "", None, {}
        mine = {**ours.params, **{k: v for k, v in ours.opt_state.items() if k.endswith(":ema")}}
        for name, value in eager.params.items():
            if name not in mine or np.shape(mine[name]) != np.shape(value):
                continue
            diff = compare_arrays(mine[name], value, tol)
            each[name] = diff.max_abs_diff
            if worst is None or diff.max_abs_diff > worst.max_abs_diff:
                worst_name, worst = name, diff
        if worst is None:  # nothing comparable (not `not worst`: a failing diff is falsy)
            worst = compare_arrays(np.zeros(1), np.zeros(1), tol)
        out.append(NativeDiff(index, losses, worst, worst_name, each=each))
    return out


def _draws(graph: LossGraph, options: VerifyOptions, given: Mapping[str, np.ndarray]) -> Draws:
    """The inputs of each micro-batch of each step: ``given`` (seeded inputs, or an inputs
    file's arrays, with a leading draw axis or without)."""
    specs = graph.meta.inputs
    stepped = dict(given) if options.inputs and draws_in(given, specs) is not None else None
    base = input_draw(given, specs, 0) if options.inputs else dict(given)
    return Draws(specs, options.seed, base, accumulate=graph.meta.accumulate, fresh=options.fresh_inputs,
                 loaded=bool(options.inputs), stepped=stepped)


def _check_draws(loaded: Mapping[str, np.ndarray], graph: LossGraph, options: VerifyOptions) -> None:
    """An inputs file with a leading draw axis must hold a draw for every micro-batch of every
    step verified."""
    count = draws_in(loaded, graph.meta.inputs)
    needed = max(options.steps, 1) * graph.meta.accumulate
    if count is not None and count < needed:
        raise VerificationError(
            f"{options.inputs} holds {count} draw(s) along its leading axis; --steps {options.steps}"
            + (f" with Spec.accumulate={graph.meta.accumulate}" if graph.meta.accumulate > 1 else "")
            + f" needs {needed}."
        )


def _base_inputs(options: VerifyOptions, graph: LossGraph) -> dict[str, np.ndarray]:
    if options.inputs:
        return load_inputs(options.inputs, graph.meta.inputs)
    return make_inputs(graph.meta.inputs, options.seed)


def loss_gradients(
    graph: LossGraph,
    loss: str,
    wrt: list[str],
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    device: str,
    side: str,
) -> dict[str, np.ndarray]:
    """d(loss)/d(w) for every ``w`` (zeros where the loss does not depend on it)."""
    with on_side(side, graph.path):
        result = build_gradients(graph.model, loss, wrt, feeds={**inputs, **params})
    outputs = [g for g in result.grads.values() if g]
    values = OrtRunner(result.model, fed=params, device=device).run(
        {**inputs, **params}, outputs=outputs
    )
    return {
        w: values[g] if g else np.zeros_like(params[w]) for w, g in result.grads.items()
    }


def compare_gradients(
    ref: LossGraph,
    cand: LossGraph,
    param_map: ParamMap,
    inputs: Mapping[str, np.ndarray],
    ref_params: Mapping[str, np.ndarray],
    cand_params: Mapping[str, np.ndarray],
    tol: Tolerance,
    device: str,
    cand_inputs: Mapping[str, np.ndarray] | None = None,
) -> dict[str, GradDiff]:
    """Gradients of every loss w.r.t. every paired trainable parameter, the candidate's carried
    back into the reference's layout, compared under the tolerance rule. ``cand_inputs``: the
    candidate's feeds where they differ from ``inputs`` (its dropout masks)."""
    pairs = [
        p
        for p in param_map.pairs
        if ref.meta.params[p.reference].trainable
        or any(cand.meta.params[c].trainable for c in p.candidates)
    ]
    per_param: dict[str, dict[str, ValueDiff]] = {p.reference: {} for p in pairs}
    for loss in ref.meta.losses:
        ref_grads = loss_gradients(
            ref, loss, [p.reference for p in pairs], inputs, ref_params, device, "reference"
        )
        cand_grads = loss_gradients(
            cand, loss, list(dict.fromkeys(c for p in pairs for c in p.candidates)),
            inputs if cand_inputs is None else cand_inputs, cand_params, device, "candidate",
        )
        check_not_both_non_finite(
            {p.reference: ref_grads[p.reference] for p in pairs},
            {p.reference: p.gather(cand_grads) for p in pairs}, f"the gradient of {loss} w.r.t.", "",
            lambda: _side(ref, {**inputs, **ref_params}, device),
        )
        for pair in pairs:
            per_param[pair.reference][loss] = compare_arrays(
                ref_grads[pair.reference], pair.gather(cand_grads), tol
            )
    return {name: GradDiff(diffs) for name, diffs in per_param.items()}


def _tap_divergence(step: StepResult) -> Divergence | None:
    """The first module output that parts (in the graph's order), where the losses agree."""
    name, diff = next(((n, d) for n, d in step.taps.items() if not d.passed), (None, None))
    if diff is None:
        return None
    return Divergence(
        step=step.step,
        phase="forward",
        scope=name.partition("#")[0],
        op_type="",
        reference_node=f"module output {name}",
        candidate_node=f"module output {name}",
        max_abs_diff=diff.max_abs_diff,
        loss=step.loss,
        localized=False,
    )


def _gradient_divergence(step: StepResult) -> Divergence | None:
    """The parameter whose gradient parts most, where the losses themselves agree."""
    failed = [(name, d) for name, d in step.gradients.items() if not d.passed]
    if not failed:
        return None
    name, worst = max(failed, key=lambda item: item[1].max_abs_diff)
    loss = max(worst.losses, key=lambda k: worst.losses[k].max_abs_diff)
    return Divergence(
        step=step.step,
        phase="backward",
        scope=name.rpartition(".")[0],
        op_type="",
        reference_node=f"grad:{name}",
        candidate_node=f"grad:{name}",
        max_abs_diff=worst.max_abs_diff,
        loss=loss,
        localized=False,
    )


def check_compatible(ref: LossGraph, cand: LossGraph) -> list[str]:
    """Check both graphs take the same inputs and return the same losses; return warnings."""
    ref_inputs, cand_inputs = ref.meta.inputs, cand.meta.inputs
    if set(ref_inputs) != set(cand_inputs):
        raise VerificationError(
            f"The graphs take different inputs: reference ({', '.join(ref_inputs)}), candidate "
            f"({', '.join(cand_inputs)})."
        )
    warnings = []
    for name, spec in ref_inputs.items():
        other = cand_inputs[name]
        if (spec.shape, spec.dtype) != (other.shape, other.dtype):
            raise VerificationError(
                f"Input {name!r} differs: reference {spec.dtype}{list(spec.shape)}, candidate "
                f"{other.dtype}{list(other.shape)}."
            )
        if spec != other:
            warnings.append(
                f"Input {name!r} is drawn differently in the two specs ({spec.to_dict()} vs "
                f"{other.to_dict()}); the reference's spec is used for both."
            )
    if set(ref.meta.losses) != set(cand.meta.losses):
        raise VerificationError(
            f"The graphs return different losses: reference ({', '.join(ref.meta.losses)}), "
            f"candidate ({', '.join(cand.meta.losses)})."
        )
    return warnings


def _run_losses(
    graph: LossGraph,
    params: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    options: VerifyOptions,
    side: str,
) -> dict[str, np.ndarray]:
    dtype = "float64" if any(np.asarray(v).dtype == np.float64 for v in params.values()) else "float32"
    feeds = {**_with_masks(inputs, graph, options.seed, 0, dtype), **params}
    with on_side(side, graph.path):
        runner = OrtRunner(graph.model, fed=params, device=options.device)
        return runner.run(feeds, outputs=graph.meta.losses)


def _graph_info(graph: LossGraph) -> GraphInfo:
    return GraphInfo(
        path=graph.path,
        framework=graph.framework,
        source=graph.meta.source,
        versions=dict(graph.meta.versions),
        eager=dict(graph.meta.eager),
        low_precision=dict(graph.meta.low_precision),
    )


#: Ops that only relabel or reshape a value; the report looks past them to the computing node.
PASS_THROUGH_OPS = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def producer(graph: LossGraph, value: str) -> Any:
    """The node that computes a value, looking past reshapes and Identity; None for inputs."""
    producers = {out: node for node in graph.model.graph.node for out in node.output}
    node = producers.get(value)
    while node is not None and node.op_type in PASS_THROUGH_OPS and node.input[0] in producers:
        node = producers[node.input[0]]
    return node


def _loss_divergence(ref: LossGraph, cand: LossGraph, step: StepResult) -> Divergence | None:
    """The first diverging loss, pointed at the nodes that compute it (not yet localized)."""
    failed = [d for d in step.losses.values() if not d.passed]
    if not failed:
        return None
    worst = failed[0]
    ref_node = producer(ref, worst.name)
    cand_node = producer(cand, worst.name)
    scope = _node_meta(ref_node, SCOPE_KEY) or _node_meta(cand_node, SCOPE_KEY) or ""
    source = _node_meta(ref_node, SOURCE_KEY) or _node_meta(cand_node, SOURCE_KEY)
    return Divergence(
        step=step.step,
        phase="forward",
        scope=scope,
        op_type=shown_op_type(ref_node),
        reference_node=ref_node.name if ref_node is not None else worst.name,
        candidate_node=cand_node.name if cand_node is not None else worst.name,
        max_abs_diff=worst.abs_diff,
        loss=worst.name,
        localized=False,
        source=json.loads(source) if source else None,
    )


def _node_meta(node: Any, key: str) -> str | None:
    return node_meta(node, key) if node is not None else None
