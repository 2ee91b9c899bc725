"""``lossgraph verify``: two LossGraphs, one runtime, the same inputs and weights, compared.

The reference's parameter values are carried into the candidate through the parameter map, both
graphs run on ONNX Runtime with the same seeded inputs, and every named loss is compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.autodiff import build_gradients
from lossgraph.errors import VerificationError
from lossgraph.graph import SCOPE_KEY, SOURCE_KEY, LossGraph, node_meta
from lossgraph.verify.align import ParamMap, build_param_map, load_name_map
from lossgraph.verify.compare import Tolerance, ValueDiff, check_finite, compare_arrays
from lossgraph.verify.inputs import load_inputs, make_inputs
from lossgraph.verify.results import (
    Divergence,
    GradDiff,
    GraphInfo,
    LossDiff,
    StepResult,
    VerifyResult,
)
from lossgraph.verify.runtime import OrtRunner


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


def run_verify(
    reference: LossGraph | str | Path, candidate: LossGraph | str | Path, options: VerifyOptions
) -> VerifyResult:
    """Verify ``candidate`` against ``reference``. Raises VerificationError on bad input."""
    ref = reference if isinstance(reference, LossGraph) else LossGraph.load(reference)
    cand = candidate if isinstance(candidate, LossGraph) else LossGraph.load(candidate)
    tol = Tolerance(options.tol, options.rtol)
    warnings = check_compatible(ref, cand)
    if options.inputs:
        inputs = load_inputs(options.inputs, ref.meta.inputs)
        inputs_source = str(options.inputs)
    else:
        inputs = make_inputs(ref.meta.inputs, options.seed)
        inputs_source = f"seeded (seed {options.seed})"
    name_map = options.name_map
    if isinstance(name_map, (str, Path)):
        name_map = load_name_map(name_map)
    param_map = build_param_map(ref, cand, name_map, options.allow_unmapped)
    if param_map.unmapped_reference or param_map.unmapped_candidate or param_map.shape_mismatch:
        warnings.append(
            "Some parameters are not paired (--allow-unmapped); unpaired candidate parameters keep "
            "the candidate's own values."
        )
    ref_params = ref.param_values()
    cand_params = {**cand.param_values(), **param_map.carry(ref_params)}

    ref_losses = _run_losses(ref, ref_params, inputs, options.device, "reference")
    cand_losses = _run_losses(cand, cand_params, inputs, options.device, "candidate")
    losses = {
        name: LossDiff(
            name,
            float(ref_losses[name]),
            float(cand_losses[name]),
            compare_arrays(ref_losses[name], cand_losses[name], tol),
        )
        for name in ref.meta.losses
    }
    steps = [StepResult(step=0, losses=losses)]
    if options.grads:
        steps[0].gradients = compare_gradients(
            ref, cand, param_map, inputs, ref_params, cand_params, tol, options.device
        )
    result = VerifyResult(
        reference=_graph_info(ref),
        candidate=_graph_info(cand),
        tolerance=tol,
        seed=options.seed,
        inputs_source=inputs_source,
        param_map=param_map,
        steps=steps,
        warnings=warnings,
    )
    result.first_divergence = _loss_divergence(ref, cand, steps[0]) or _gradient_divergence(steps[0])
    return result


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
    result = build_gradients(graph.model, loss, wrt, feeds={**inputs, **params})
    outputs = [g for g in result.grads.values() if g]
    values = OrtRunner(result.model, fed=params, device=device).run(
        {**inputs, **params}, outputs=outputs
    )
    check_finite(values, side, f"gradient(s) of {loss}:")
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
) -> dict[str, GradDiff]:
    """Gradients of every loss w.r.t. every paired trainable parameter, the candidate's carried
    back into the reference's layout, compared under the tolerance rule."""
    pairs = [
        p
        for p in param_map.pairs
        if ref.meta.params[p.reference].trainable or cand.meta.params[p.candidate].trainable
    ]
    per_param: dict[str, dict[str, ValueDiff]] = {p.reference: {} for p in pairs}
    for loss in ref.meta.losses:
        ref_grads = loss_gradients(
            ref, loss, [p.reference for p in pairs], inputs, ref_params, device, "reference"
        )
        cand_grads = loss_gradients(
            cand, loss, [p.candidate for p in pairs], inputs, cand_params, device, "candidate"
        )
        for pair in pairs:
            per_param[pair.reference][loss] = compare_arrays(
                ref_grads[pair.reference], pair.carry_back(cand_grads[pair.candidate]), tol
            )
    return {name: GradDiff(diffs) for name, diffs in per_param.items()}


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
    device: str,
    side: str,
) -> dict[str, np.ndarray]:
    runner = OrtRunner(graph.model, fed=params, device=device)
    values = runner.run({**inputs, **params}, outputs=graph.meta.losses)
    check_finite(values, side, "loss")
    return values


def _graph_info(graph: LossGraph) -> GraphInfo:
    return GraphInfo(
        path=graph.path,
        framework=graph.framework,
        source=graph.meta.source,
        versions=dict(graph.meta.versions),
        eager=dict(graph.meta.eager),
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
        op_type=ref_node.op_type if ref_node is not None else "",
        reference_node=ref_node.name if ref_node is not None else worst.name,
        candidate_node=cand_node.name if cand_node is not None else worst.name,
        max_abs_diff=worst.abs_diff,
        loss=worst.name,
        localized=False,
        source=json.loads(source) if source else None,
    )


def _node_meta(node: Any, key: str) -> str | None:
    return node_meta(node, key) if node is not None else None
