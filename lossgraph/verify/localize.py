"""Where two graphs part: the earliest nodes whose inputs correspond but whose outputs do not.

Correspondence between a torch graph and a Paddle graph comes in three layers:

1. inputs and parameters, through the parameter map;
2. module boundaries, through the taps both exporters emit (``lossgraph.tap`` =
   ``<module path>#<call>``), module paths translated through the parameter map;
3. everything else, by value: a reference value corresponds to a candidate value of the same
   shape that agrees with it within tolerance, whatever ops computed them (Gemm vs MatMul+Add,
   decomposed losses and BatchNorm, Identity chains).

Forward: the first tap (in the reference's topological order) that diverges names the module;
inside the region between the taps that still agree and that one, the first node whose float
inputs all have counterparts but whose output has none is the origin. Backward: gradients with
respect to the taps, walked from the loss: the first tap whose gradient diverges although every
tap after it agrees. Only the region is run with its intermediate values exposed, so graphs of
thousands of nodes are localized without marking every tensor at once.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from lossgraph.autodiff import build_gradients
from lossgraph.graph import SCOPE_KEY, SOURCE_KEY, TAP_KEY, LossGraph, node_meta
from lossgraph.verify.align import ParamMap
from lossgraph.verify.compare import Tolerance
from lossgraph.verify.results import Divergence
from lossgraph.verify.runtime import OrtRunner

#: Values exposed per ORT run while searching a region (bounds peak memory on large graphs).
CHUNK = 256


@dataclass(frozen=True)
class Side:
    """One graph of the comparison with the feeds of the step being localized."""

    graph: LossGraph
    feeds: Mapping[str, np.ndarray]
    device: str

    @property
    def model(self) -> onnx.ModelProto:
        return self.graph.model


def taps(graph: LossGraph) -> dict[str, str]:
    """Tap name -> value name, in topological order."""
    return {
        node_meta(n, TAP_KEY): n.output[0] for n in graph.model.graph.node if node_meta(n, TAP_KEY)
    }


def module_map(param_map: ParamMap, ref: LossGraph, cand: LossGraph) -> dict[str, str]:
    """Reference module path -> candidate module path, from the paired parameters."""
    out: dict[str, str] = {}
    for pair in param_map.pairs:
        a = ref.meta.params[pair.reference].module
        b = cand.meta.params[pair.candidate].module
        out.setdefault(a, b)
    return out


def translate_tap(name: str, modules: Mapping[str, str]) -> str:
    """A reference tap name in the candidate's module paths (parent modules map too)."""
    path, sep, rest = name.partition("#")
    if path in modules:
        return modules[path] + sep + rest
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in modules:
            return ".".join([modules[prefix], *parts[cut:]]) + sep + rest
    return name


def run_values(side: Side, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of ``names`` in one run of the graph, exposed in chunks."""
    out: dict[str, np.ndarray] = {}
    params = {k: v for k, v in side.feeds.items() if k in side.graph.meta.params}
    for start in range(0, len(names), CHUNK):
        chunk = list(names[start : start + CHUNK])
        runner = OrtRunner(side.model, fed=params, extra_outputs=chunk, device=side.device, arena=False)
        out.update(runner.run(side.feeds, outputs=chunk))
    return out


#: Intermediate values agree when they differ by less than this fraction of their magnitude
#: (plus the absolute tolerance): float32 rounding grows along a graph, a real difference does
#: not stay below it.
MATCH_RTOL = 1e-4


def _agree(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> bool:
    if a.shape != b.shape:
        return False
    a64 = np.asarray(a, dtype=np.float64)
    scale = float(np.abs(a64).max()) if a64.size else 0.0
    return bool(np.abs(a64 - b).max(initial=0.0) <= tol.atol + max(tol.rtol, MATCH_RTOL) * scale)


def _float_values(graph: LossGraph, names: Iterable[str]) -> list[str]:
    from lossgraph.autodiff.shapes import infer_types

    types = infer_types(graph.model)
    return [n for n in names if n in types and types[n].is_float and types[n].shape]


def _ancestors(graph: onnx.GraphProto, value: str) -> list[onnx.NodeProto]:
    producers = {o: n for n in graph.node for o in n.output}
    seen, stack, out = set(), [value], []
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    return sorted(out, key=lambda n: order[id(n)])


def _divergence(
    step: int, phase: str, ref_node: onnx.NodeProto | None, cand_node: onnx.NodeProto | None,
    scope: str, diff: float, loss: str | None,
) -> Divergence:
    source = None
    for node in (ref_node, cand_node):
        text = node_meta(node, SOURCE_KEY) if node is not None else None
        if text:
            source = json.loads(text)
            break
    return Divergence(
        step=step,
        phase=phase,
        scope=scope,
        op_type=ref_node.op_type if ref_node is not None else (cand_node.op_type if cand_node else ""),
        reference_node=ref_node.name if ref_node is not None else "",
        candidate_node=cand_node.name if cand_node is not None else "",
        max_abs_diff=diff,
        loss=loss,
        localized=True,
        source=source,
    )


def _scope_of(node: onnx.NodeProto | None, tap: str) -> str:
    scope = node_meta(node, SCOPE_KEY) if node is not None else None
    return scope or tap.partition("#")[0]


def localize_forward(
    ref: Side, cand: Side, param_map: ParamMap, tol: Tolerance, step: int, loss: str | None
) -> Divergence | None:
    """The forward origin of a divergence, or None if no tap or node diverges."""
    modules = module_map(param_map, ref.graph, cand.graph)
    ref_taps, cand_taps = taps(ref.graph), taps(cand.graph)
    pairs = {t: cand_taps[translate_tap(t, modules)] for t in ref_taps if translate_tap(t, modules) in cand_taps}
    ref_values = run_values(ref, [ref_taps[t] for t in pairs])
    cand_values = run_values(cand, list(pairs.values()))
    diverged = [t for t in pairs if not _agree(ref_values[ref_taps[t]], cand_values[pairs[t]], tol)]
    target = ref_taps[diverged[0]] if diverged else None
    tap = diverged[0] if diverged else ""
    if target is None:
        # no module output parts: the divergence is in the loss computation itself
        target = loss or ref.graph.meta.losses[0]
    agreed = {ref_taps[t]: pairs[t] for t in pairs if t not in diverged}
    agreed.update({name: name for name in ref.graph.meta.inputs})
    agreed.update({p.reference: p.candidate for p in param_map.pairs})
    found = _origin_in_region(ref, cand, target, agreed, tol, step, "forward", tap, loss)
    if found is None and diverged:
        # value matching can be fooled where parameters are still identities (BatchNorm scale
        # 1 and shift 0 at initialization): search again with every parameter perturbed alike
        found = _origin_in_region(
            perturbed(ref, param_map.pairs, "reference"), perturbed(cand, param_map.pairs, "candidate", ref),
            target, agreed, tol, step, "forward", tap, loss,
        )
        if found is not None:  # report the difference the actual weights make, at the tap
            actual = float(np.abs(ref_values[target].astype(np.float64) - cand_values[pairs[tap]]).max())
            found = replace(found, max_abs_diff=actual)
    if found is None and diverged:
        node = next(n for n in ref.model.graph.node if node_meta(n, TAP_KEY) == tap)
        cand_node = next(
            n for n in cand.model.graph.node if node_meta(n, TAP_KEY) == translate_tap(tap, modules)
        )
        diff = float(np.abs(ref_values[target].astype(np.float64) - cand_values[pairs[tap]]).max())
        return _divergence(step, "forward", node, cand_node, tap.partition("#")[0], diff, loss)
    return found


def perturbed(side: Side, pairs, which: str, ref: Side | None = None) -> Side:
    """The same feeds with every paired parameter changed by a fixed pseudo-random factor in
    [0.9, 1.1] plus 0.01, the candidate's carried over from the reference's."""
    feeds = dict(side.feeds)
    for pair in pairs:
        source = ref.feeds if ref is not None else side.feeds
        value = source.get(pair.reference)
        if value is None or not np.issubdtype(value.dtype, np.floating):
            continue
        rng = np.random.default_rng(zlib.crc32(pair.reference.encode()))
        changed = (value * rng.uniform(0.9, 1.1, value.shape) + 0.01).astype(value.dtype)
        if which == "reference":
            feeds[pair.reference] = changed
        else:
            feeds[pair.candidate] = pair.carry(changed)
    return Side(side.graph, feeds, side.device)


def _origin_in_region(
    ref: Side, cand: Side, target: str, known: Mapping[str, str], tol: Tolerance,
    step: int, phase: str, tap: str, loss: str | None,
) -> Divergence | None:
    """Search the reference nodes that compute ``target`` (after the values already known to
    agree) for the first one whose output has no counterpart in the candidate."""
    region = [n for n in _ancestors(ref.model.graph, target) if n.op_type != "Constant"]
    ref_names = _float_values(ref.graph, [o for n in region for o in n.output])
    cand_names = _float_values(cand.graph, [o for n in cand.model.graph.node for o in n.output])
    ref_vals = run_values(ref, ref_names)
    cand_vals = run_values(cand, cand_names)
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name in cand_names:
        by_shape.setdefault(cand_vals[name].shape, []).append(name)
    counterpart: dict[str, str] = dict(known)
    leaves = set(ref.feeds) | {t.name for t in ref.model.graph.initializer}
    for node in region:
        outs = [o for o in node.output if o in ref_vals]
        for out in outs:
            if out in counterpart:
                continue
            match = next(
                (c for c in by_shape.get(ref_vals[out].shape, []) if _agree(ref_vals[out], cand_vals[c], tol)),
                None,
            )
            if match is not None:
                counterpart[out] = match
        inputs_ok = all(
            i in counterpart or i in leaves or i not in ref_vals for i in node.input if i
        )
        unmatched = [o for o in outs if o not in counterpart]
        if inputs_ok and unmatched:
            inputs = [counterpart[i] for i in node.input if i in counterpart]
            cand_node = _candidate_node(cand, inputs, node.op_type, cand_vals, ref_vals[unmatched[0]])
            diff = _closest_diff(ref_vals[unmatched[0]], cand_vals, by_shape)
            return _divergence(step, phase, node, cand_node, _scope_of(node, tap), diff, loss)
    return None


def _candidate_node(
    cand: Side, inputs: list[str], op_type: str, cand_vals, ref_value
) -> onnx.NodeProto | None:
    """The candidate's version of the origin: a node consuming the counterparts of the origin's
    inputs, preferably of the same op type, else one computing a value of the origin's shape."""
    wanted = set(inputs)
    graph = cand.model.graph
    for node in graph.node:  # the same values under other names (Identity chains, taps)
        if node.op_type == "Identity" and node.input[0] in wanted:
            wanted.add(node.output[0])
    consumers = [n for n in graph.node if n.op_type != "Identity" and wanted & set(n.input)]
    same_op = [n for n in consumers if n.op_type == op_type]
    same_shape = [
        n for n in consumers
        if any(o in cand_vals and cand_vals[o].shape == ref_value.shape for o in n.output)
    ]
    return (same_op or same_shape or consumers or [None])[0]


def _closest_diff(ref_value, cand_vals, by_shape) -> float:
    candidates = [cand_vals[c] for c in by_shape.get(ref_value.shape, [])]
    if not candidates:
        return float("inf")
    return min(float(np.abs(ref_value.astype(np.float64) - c).max()) for c in candidates)


def localize_backward(
    ref: Side, cand: Side, param_map: ParamMap, tol: Tolerance, step: int, loss: str
) -> tuple[Divergence | None, dict[str, np.ndarray]]:
    """Walk the taps from the loss: the first whose gradient diverges, every later one agreeing.
    Also returns both gradients there (``ref_grad``, ``cand_grad``) for the hints."""
    modules = module_map(param_map, ref.graph, cand.graph)
    ref_taps, cand_taps = taps(ref.graph), taps(cand.graph)
    names = [t for t in ref_taps if translate_tap(t, modules) in cand_taps]
    ref_grads = _tap_gradients(ref, loss, [ref_taps[t] for t in names])
    cand_grads = _tap_gradients(cand, loss, [cand_taps[translate_tap(t, modules)] for t in names])
    for tap in reversed(names):
        a = ref_grads[ref_taps[tap]]
        b = cand_grads[cand_taps[translate_tap(tap, modules)]]
        if not _agree(a, b, tol):
            node = next(n for n in ref.model.graph.node if node_meta(n, TAP_KEY) == tap)
            cand_node = next(n for n in cand.model.graph.node if node_meta(n, TAP_KEY) == translate_tap(tap, modules))
            diff = float(np.abs(a.astype(np.float64) - b).max())
            found = _divergence(step, "backward", node, cand_node, tap.partition("#")[0], diff, loss)
            return found, {"ref_grad": a, "cand_grad": b}
    return None, {}


def _tap_gradients(side: Side, loss: str, values: list[str]) -> dict[str, np.ndarray]:
    params = {k: v for k, v in side.feeds.items() if k in side.graph.meta.params}
    result = build_gradients(side.model, loss, values, feeds=side.feeds)
    outputs = [g for g in result.grads.values() if g]
    got = OrtRunner(result.model, fed=params, device=side.device, arena=False).run(
        side.feeds, outputs=outputs
    )
    shapes = run_values(side, values)
    return {v: got[g] if g else np.zeros_like(shapes[v]) for v, g in result.grads.items()}
