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
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import onnx
from onnx import TensorProto

from lossgraph.autodiff import build_gradients
from lossgraph.errors import VerificationError
from lossgraph.graph import (
    SCOPE_KEY,
    SOURCE_KEY,
    STOP_GRADIENT_KEY,
    TAP_KEY,
    LossGraph,
    live_nodes,
    node_meta,
    shown_op_type,
)
from lossgraph.runtime.session import OrtRunner
from lossgraph.verify.align import ParamMap
from lossgraph.verify.compare import Tolerance
from lossgraph.verify.results import Divergence

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
    """Reference module path -> candidate module path, from the paired parameters and the
    parents they imply (:func:`with_parents`)."""
    out: dict[str, str] = {}
    for pair in param_map.pairs:
        a = ref.meta.params[pair.reference].module
        b = [cand.meta.params[c].module for c in pair.candidates]
        if pair.parts:  # q_proj, k_proj, v_proj -> the module holding them all
            b = [".".join(os.path.commonprefix([m.split(".") for m in b]))]
        if pair.packed_in is not None:  # the same, the other way round
            a = a.rpartition(".")[0]
        out.setdefault(a, b[0])
    return with_parents(out)


def with_parents(modules: Mapping[str, str]) -> dict[str, str]:
    """The module correspondence with the parents it implies: ``enc.fc -> encoder.fc`` maps
    ``enc -> encoder`` too, so that modules without parameters of their own (containers,
    dropout layers' parents) pair. A parent implied two different ways is left out."""
    implied: dict[str, set[str]] = {}
    for a, b in modules.items():
        left, right = a.split("."), b.split(".")
        while len(left) > 1 and len(right) > 1 and left[-1] == right[-1]:
            left, right = left[:-1], right[:-1]
            implied.setdefault(".".join(left), set()).add(".".join(right))
    out = dict(modules)
    for a, targets in implied.items():
        if a not in out and len(targets) == 1 and _encloses(a, next(iter(targets)), modules):
            out[a] = next(iter(targets))
    return out


def _encloses(a: str, b: str, modules: Mapping[str, str]) -> bool:
    """Whether the paired modules inside ``a`` are exactly those paired inside ``b``: torch's
    shufflenet ``branch1`` (depthwise conv, BatchNorm, conv, BatchNorm, ReLU) is not Paddle's
    ``_conv_dw_1`` although its first conv is that one's, for its third is ``_conv_linear_1``'s."""
    return all(m.startswith(a + ".") == n.startswith(b + ".") for m, n in modules.items())


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
    """The values of ``names`` in one run of the graph, exposed in chunks. A bfloat16 value (a
    rounding step of emulated mixed precision, :mod:`lossgraph.runtime.precision`) is left out:
    numpy cannot hold one, and the float32 copy after it has the same number."""
    types = value_types(side.graph)
    names = [n for n in names if n not in types or types[n].elem_type != TensorProto.BFLOAT16]
    out: dict[str, np.ndarray] = {}
    params = {k: v for k, v in side.feeds.items() if k in side.graph.meta.params}
    for start in range(0, len(names), CHUNK):
        chunk = list(names[start : start + CHUNK])
        runner = OrtRunner(side.model, fed=params, extra_outputs=chunk, device=side.device, arena=False)
        out.update(runner.run(side.feeds, outputs=chunk))
    return out


def first_non_finite(side: Side) -> onnx.NodeProto | None:
    """The first node, in the graph's order, that outputs NaN or Inf with the side's feeds."""
    graph = side.model.graph
    names = _float_values(side.graph, [o for node in graph.node for o in node.output if o])
    values = run_values(side, names)
    for node in graph.node:
        if any(o in values and not np.all(np.isfinite(values[o])) for o in node.output):
            return node
    return None


def check_not_both_non_finite(
    ref: Mapping[str, object], cand: Mapping[str, object], what: str, when: str, ref_side,
) -> None:
    """NaN or Inf in the same value on both sides, from the same inputs, is bad input (exit 2),
    named by the reference's first node that produces it (``ref_side()`` makes the Side, only
    then); on one side only it is a divergence, measured as a difference of size inf."""
    both = [n for n in ref if n in cand
            and not np.all(np.isfinite(ref[n])) and not np.all(np.isfinite(cand[n]))]
    if both:
        node = first_non_finite(ref_side())
        raise VerificationError(
            f"Both graphs produce NaN or Inf in {what} {', '.join(both)}{when} from the same "
            f"inputs (the reference first at {describe_node(node)}): nothing to compare; check "
            f"the inputs' ranges (e.g. log of a non-positive value)."
        )


def describe_node(node: onnx.NodeProto | None) -> str:
    """``Log node 'n12' in scope criterion (from x, w)`` for messages."""
    if node is None:
        return "no node (the graph's inputs hold NaN or Inf)"
    scope = node_meta(node, SCOPE_KEY)
    where = f" in scope {scope}" if scope else ""
    inputs = ", ".join(i for i in node.input if i)
    return f"{node.op_type} node {node.name!r}{where} (from {inputs})"


#: Intermediate values agree when they differ by less than this fraction of their magnitude
#: (plus the absolute tolerance): float32 rounding grows along a graph, a real difference does
#: not stay below it. Inside a region they may also agree up to sign: exporters decompose
#: ``1 - t`` as ``-(t - 1)`` and the like.
MATCH_RTOL = 1e-4


def _agree(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> bool:
    if a.shape != b.shape:
        return False
    a64 = np.asarray(a, dtype=np.float64)
    scale = float(np.abs(a64).max()) if a64.size else 0.0
    return bool(np.abs(a64 - b).max(initial=0.0) <= tol.atol + max(tol.rtol, MATCH_RTOL) * scale)


class ValueIndex:
    """Candidate values by shape, with the two statistics that rule most of them out before an
    element-wise comparison: if ``|a - b| <= t`` everywhere then ``|max|a| - max|b|| <= t`` and
    ``|sum a - sum b| <= n t`` (and the same for ``-b``)."""

    def __init__(self, values: Mapping[str, np.ndarray]) -> None:
        self.values = values
        self.by_shape: dict[tuple[int, ...], list[tuple[str, float, float]]] = {}
        for name, value in values.items():
            v64 = np.asarray(value, dtype=np.float64)
            peak = float(np.abs(v64).max()) if v64.size else 0.0
            self.by_shape.setdefault(v64.shape, []).append((name, peak, float(v64.sum())))

    def same_shape(self, shape: tuple[int, ...]) -> list[str]:
        return [name for name, _, _ in self.by_shape.get(shape, [])]

    def matches(self, ref: np.ndarray, tol: Tolerance, first: bool = False) -> list[tuple[str, int]]:
        """The candidate values that correspond to ``ref``, each with its sign: 1 (equal) or -1
        (equal up to sign), in graph order; only the first with ``first``."""
        r64 = np.asarray(ref, dtype=np.float64)
        peak = float(np.abs(r64).max()) if r64.size else 0.0
        total, bound = float(r64.sum()), tol.atol + max(tol.rtol, MATCH_RTOL) * peak
        out = []
        for name, other_peak, other_total in self.by_shape.get(r64.shape, []):
            if abs(peak - other_peak) > bound:
                continue
            for sign in (1, -1):
                if abs(total - sign * other_total) > r64.size * bound:
                    continue
                if _agree(ref, sign * np.asarray(self.values[name]), tol):
                    out.append((name, sign))
                    break
            if first and out:
                break
        return out


def _cached(graph: LossGraph, key: str, compute):
    """A value computed once per graph (shape inference and constant folding are the slow
    parts of a search, and every search of one verification asks again)."""
    cache = graph.__dict__.setdefault("_lossgraph_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def value_types(graph: LossGraph):
    from lossgraph.runtime import infer_types

    return _cached(graph, "types", lambda: infer_types(graph.model))


def _float_values(graph: LossGraph, names: Iterable[str]) -> list[str]:
    types = value_types(graph)
    return [n for n in names if n in types and types[n].is_float and types[n].elem_type != TensorProto.BFLOAT16]


def _keeps_an_input(node: onnx.NodeProto, values: Mapping[str, np.ndarray]) -> bool:
    """Whether ``node``'s output equals one of its inputs exactly (``values`` has both)."""
    out = values.get(node.output[0]) if node.output else None
    return out is not None and any(
        i in values and np.shape(values[i]) == np.shape(out) and np.array_equal(values[i], out)
        for i in node.input
    )


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
    scope: str, diff: float, loss: str | None, computed_by_candidate: bool = False,
) -> Divergence:
    """``computed_by_candidate``: the reference only copies at ``ref_node``; the op named is the
    candidate's."""
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
        op_type=(shown_op_type(cand_node) if computed_by_candidate else "")
        or shown_op_type(ref_node) or shown_op_type(cand_node),
        reference_node=ref_node.name if ref_node is not None else "",
        candidate_node=cand_node.name if cand_node is not None else "",
        max_abs_diff=diff,
        loss=loss,
        localized=True,
        source=source,
    )


def _scope_of(
    node: onnx.NodeProto | None, tap: str, cand_node: onnx.NodeProto | None = None,
    modules: Mapping[str, str] | None = None, forward: bool = False,
) -> str:
    """The module path of a divergence, in the reference's names: the reference node's scope
    (in the forward pass ``""`` where the node is at the top level, outside every module);
    else the candidate node's, translated back through the module map (PaddlePaddle's graphs
    carry no scopes, so a Paddle reference relies on a torch candidate's) where it lies inside
    the diverging tap's module; else that module."""
    module = tap.partition("#")[0]
    scope = node_meta(node, SCOPE_KEY) if node is not None else None
    if scope == "" and forward:
        return ""  # a forward node at the top level, outside every module (the backward names
        # the module whose gradient parts instead)
    theirs = node_meta(cand_node, SCOPE_KEY) if cand_node is not None and not scope else None
    if theirs and modules is not None:
        mine = translate_tap(theirs, {b: a for a, b in modules.items()})
        if not module or mine == module or mine.startswith(module + "."):
            scope = mine
    return scope or module


#: How many nodes past a module output a boundary drawn elsewhere may end (an activation, a
#: reshape and an activation, ...).
BOUNDARY_DEPTH = 4
#: A boundary's later value matches the other side's to this fraction of the difference
#: between the two module outputs (or to the absolute tolerance).
BOUNDARY_MATCH = 1e-2


def boundary_taps(
    ref: Side, cand: Side, paired: Mapping[str, tuple[str, str]],
    values: Mapping[str, tuple[np.ndarray, np.ndarray]], differing: Iterable[str], tol: Tolerance,
) -> list[str]:
    """The ``differing`` module outputs (reference tap names; ``paired``: tap -> its value
    names on both sides, ``values``: their values) that are no divergence. Modules pair
    through their parameters, but one side's layer may end elsewhere: Paddle's
    ``BatchNorm(act="relu")`` includes the ReLU its torch port has as a module of its own. Such
    an output has its value on the other side a few nodes later, before the next module output
    (torch's ReLU after the BatchNorm computes what Paddle's BatchNorm returns); a semantic
    difference does not. A module output no graph output reads is no divergence either."""
    differing = list(differing)
    if not differing:
        return []
    stops = [{r for r, _ in paired.values()}, {c for _, c in paired.values()}]
    later: list[dict[str, list[str]]] = [{}, {}]  # tap -> values after it, per side
    for i, side in enumerate((ref, cand)):
        graph = side.model.graph
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for tap in differing:
            later[i][tap] = _values_after(consumers, paired[tap][i], stops[i])
    found = [run_values(side, sorted({v for names in later[i].values() for v in names}))
             for i, side in enumerate((ref, cand))]
    outputs = {o.name for o in ref.model.graph.output}
    live = {o for n in live_nodes(list(ref.model.graph.node), outputs) for o in n.output}
    out = []
    for tap in differing:
        ref_value, cand_value = values[tap]
        # the value found later must be far closer to the other side's than the two module
        # outputs are to each other: a semantic difference too small for value matching
        # (Sigmoid for Hardsigmoid, 3e-5 apart) must not pass for a boundary
        close = max(tol.atol, BOUNDARY_MATCH * _max_diff(ref_value, cand_value))
        if paired[tap][0] not in live or any(
            _within(found[0][v], cand_value, close) for v in later[0][tap] if v in found[0]
        ) or any(_within(ref_value, found[1][v], close) for v in later[1][tap] if v in found[1]):
            out.append(tap)
    return out


def _within(a: np.ndarray, b: np.ndarray, bound: float) -> bool:
    return np.shape(a) == np.shape(b) and _max_diff(a, b) <= bound


def _values_after(
    consumers: Mapping[str, list[onnx.NodeProto]], start: str, stops: set[str]
) -> list[str]:
    """The values computed from ``start`` within :data:`BOUNDARY_DEPTH` nodes, short of the
    next module outputs (``stops``)."""
    out: list[str] = []
    frontier = [start]
    for _ in range(BOUNDARY_DEPTH):
        frontier = [o for v in frontier for n in consumers.get(v, []) for o in n.output
                    if o and o not in stops and o not in out]
        out.extend(frontier)
    return out


def tap_pairs(ref: LossGraph, cand: LossGraph, param_map: ParamMap) -> dict[str, tuple[str, str]]:
    """Every module output tapped on both sides, paired through the module map: reference tap
    name -> (its value, the candidate's value)."""
    modules = module_map(param_map, ref, cand)
    ref_taps, cand_taps = taps(ref), taps(cand)
    return {t: (ref_taps[t], cand_taps[translate_tap(t, modules)]) for t in ref_taps
            if translate_tap(t, modules) in cand_taps}


def paired_taps(
    ref: Side, cand: Side, param_map: ParamMap, tol: Tolerance
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Every module output tapped on both sides (reference tap name -> both values), paired
    through the module map, where both have one shape, less those whose difference is a
    module boundary drawn elsewhere (:func:`boundary_taps`); and those (reference tap ->
    candidate tap)."""
    pairs = tap_pairs(ref.graph, cand.graph, param_map)
    if not pairs:
        return {}, {}
    ref_values = run_values(ref, [r for r, _ in pairs.values()])
    cand_values = run_values(cand, [c for _, c in pairs.values()])
    values = {t: (ref_values[r], cand_values[c]) for t, (r, c) in pairs.items()
              if np.shape(ref_values[r]) == np.shape(cand_values[c])}
    differing = [t for t, (a, b) in values.items() if not _agree(a, b, tol)]
    boundaries = boundary_taps(ref, cand, pairs, values, differing, tol)
    modules = module_map(param_map, ref.graph, cand.graph)
    return ({t: v for t, v in values.items() if t not in boundaries},
            {t: translate_tap(t, modules) for t in boundaries})


def localize_forward(
    ref: Side, cand: Side, param_map: ParamMap, tol: Tolerance, step: int, loss: str | None,
    loss_agrees: bool | None = None, failing_taps: Sequence[str] = (),
) -> tuple[Divergence | None, dict[str, object]]:
    """The forward origin of a divergence (None if neither a tap nor the loss diverges), and
    what the hints need to know about it (see :class:`Origin`). ``loss_agrees``: whether the
    loss is already known to agree (measured here when None); ``failing_taps``: module outputs
    the comparison found diverging (under the tolerance rule, noise aside), which diverge here
    too although value matching, looser by :data:`MATCH_RTOL`, would let them agree."""
    modules = module_map(param_map, ref.graph, cand.graph)
    named = tap_pairs(ref.graph, cand.graph, param_map)
    ref_taps = {t: r for t, (r, _) in named.items()}
    pairs = {t: c for t, (_, c) in named.items()}
    ref_values = run_values(ref, list(ref_taps.values()))
    cand_values = run_values(cand, list(pairs.values()))
    diverged = [t for t in pairs
                if t in failing_taps or not _agree(ref_values[ref_taps[t]], cand_values[pairs[t]], tol)]
    boundaries = boundary_taps(
        ref, cand, named, {t: (ref_values[ref_taps[t]], cand_values[pairs[t]]) for t in diverged},
        diverged, tol,
    )
    diverged = [t for t in diverged if t not in boundaries]
    tap = diverged[0] if diverged else ""
    if diverged:
        target, cand_target = ref_taps[tap], pairs[tap]
    else:
        # no module output parts: the divergence, if any, is in the loss computation itself
        target = cand_target = loss or ref.graph.meta.losses[0]
        if loss_agrees is None:
            ref_values.update(run_values(ref, [target]))
            cand_values.update(run_values(cand, [target]))
            loss_agrees = _agree(ref_values[target], cand_values[target], tol)
        if loss_agrees:
            return None, {}

    def measured() -> float:
        """The difference at the tap (or loss) being localized."""
        if target not in ref_values:
            ref_values.update(run_values(ref, [target]))
            cand_values.update(run_values(cand, [cand_target]))
        return _max_diff(ref_values[target], cand_values[cand_target])

    agreed = {ref_taps[t]: pairs[t] for t in pairs if t not in diverged and t not in boundaries}
    # a module output agreeing is the value its tap copies agreeing
    agreed.update({_copied(ref.model.graph, r): _copied(cand.model.graph, c) for r, c in list(agreed.items())
                   if _copied(ref.model.graph, r) and _copied(cand.model.graph, c)})
    agreed.update({name: name for name in ref.graph.meta.inputs})
    agreed.update({p.reference: p.candidate for p in param_map.pairs
                   if not p.parts and p.packed_in is None})
    origin = _origin_in_region(ref, cand, target, cand_target, agreed, tol)
    if origin is None and diverged:
        # value matching can be fooled where parameters are still identities (BatchNorm scale
        # 1 and shift 0 at initialization): search again with every parameter perturbed alike
        origin = _origin_in_region(
            perturbed(ref, param_map.pairs, "reference"),
            perturbed(cand, param_map.pairs, "candidate", ref),
            target, cand_target, agreed, tol,
        )
        if origin is not None:  # report the difference the actual weights make, at the tap;
            # the values measured at the origin were the perturbed ones: no statistics of them
            origin = replace(origin, diff=measured(), ref_value=None, cand_value=None, ref_inputs={})
    if origin is not None and origin.cand_value is None and origin.ref_value is not None:
        # the other side computes nothing of the origin's shape (another decomposition: a
        # BatchNorm's var + eps): the size of the difference is the one measured at the tap
        origin = replace(origin, diff=measured())
    if origin is not None:
        scope = _scope_of(origin.ref_node, tap, origin.cand_node, modules, forward=True)
        if origin.copies and tap:  # the module whose output parts: the reference copies there
            scope = tap.partition("#")[0]
        found = _divergence(step, "forward", origin.ref_node, origin.cand_node, scope, origin.diff, loss,
                            computed_by_candidate=origin.copies)
        if origin.copies:  # the source line of the module that parts, not of the copy's origin
            text = next((node_meta(n, SOURCE_KEY) for n in ref.model.graph.node
                         if node_meta(n, SCOPE_KEY) == scope and node_meta(n, SOURCE_KEY)), None)
            found = replace(found, source=json.loads(text)) if text else found
        return found, origin.hint_values()
    if diverged:
        node = _producer(ref.model.graph, target)
        cand_node = _producer(cand.model.graph, cand_target)
        return _divergence(step, "forward", node, cand_node, tap.partition("#")[0], measured(), loss), {}
    return None, {}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, element by element in memory order where only the shapes differ ([1] vs
    []); inf where the sizes differ too."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b)
    if a.shape != b.shape:
        if a.size != b.size:
            return float("inf")
        b = b.reshape(a.shape)
    return float(np.abs(a - b).max(initial=0.0))


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
            feeds.update(pair.carry_to(changed, feeds))
    return Side(side.graph, feeds, side.device)


@dataclass(frozen=True)
class Origin:
    """The node where the values part, on both sides, with what the hints look at."""

    ref_node: onnx.NodeProto
    cand_node: onnx.NodeProto | None
    diff: float  # to the nearest candidate value of the same shape
    ref_value: np.ndarray | None  # None where the search ran on perturbed weights
    cand_value: np.ndarray | None  # that nearest candidate value
    ref_constants: tuple[float, ...]  # float constants the reference computes with between the
    cand_constants: tuple[float, ...]  # agreeing inputs and the diverging value; the candidate's
    origin_constants: tuple[float, ...]  # those the origin node itself consumes
    #: (reference parameter, candidate parameter, perm): parameters the origin consumes that
    #: the candidate transposes on the way
    transposed_params: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    #: the same for parameters the reference transposes and the candidate uses as stored
    ref_transposed_params: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    #: value name -> "agrees" / "differs", on each side, for the neighbourhood in reports
    ref_status: Mapping[str, str] = field(default_factory=dict)
    cand_status: Mapping[str, str] = field(default_factory=dict)

    #: the origin's float inputs on the reference side (they agree with the candidate's)
    ref_inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: the reference only copies agreeing values there; the candidate computes something
    copies: bool = False
    #: the candidate's values that agree with the origin's inputs
    cand_sources: tuple[str, ...] = ()

    def hint_values(self) -> dict[str, object]:
        """Everything but the nodes and the diff, by field name (shallow: arrays not copied)."""
        skip = {"ref_node", "cand_node", "diff", "copies"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


#: Ops whose output depends on the shape or type of an input, not on its values: how many of
#: their leading inputs carry values.
SHAPE_OPS = {"Shape": 0, "Size": 0, "CastLike": 1}


def _value_dependent(graph: onnx.GraphProto, feeds: Iterable[str]) -> set[str]:
    """The values that depend on the values fed (inputs, parameters, masks); everything else
    (constants, shapes, ``ones_like``) is the same whatever is fed."""
    out = set(feeds)
    for node in graph.node:
        inputs = node.input[: SHAPE_OPS.get(node.op_type, len(node.input))]
        if any(i in out for i in inputs):
            out.update(node.output)
    return out


def _producer(graph: onnx.GraphProto, value: str) -> onnx.NodeProto | None:
    return next((n for n in graph.node if value in n.output), None)


def _between(
    graph: onnx.GraphProto, sources: Iterable[str], target: str, stop: set[str] | None = None
) -> list[onnx.NodeProto]:
    """The nodes downstream of ``sources`` that ``target`` depends on, in graph order, not
    looking past the values in ``stop``."""
    upstream = _ancestors(graph, target)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in upstream:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reached, stack, stop = set(), list(sources), stop or set()
    while stack:
        for node in consumers.get(stack.pop(), []):
            if id(node) not in reached:
                reached.add(id(node))
                stack.extend(o for o in node.output if o not in stop)
    return [n for n in upstream if id(n) in reached]


def _origin_in_region(
    ref: Side, cand: Side, target: str, cand_target: str, known: Mapping[str, str], tol: Tolerance,
) -> Origin | None:
    """The origin of the divergence at ``target`` (its candidate counterpart ``cand_target``).

    Every value-dependent reference value computing ``target`` (after the values already known
    to agree) is given a candidate counterpart where one agrees with it. A reference value
    without one may be an intermediate of a computation the candidate decomposes otherwise
    (``a * 0.5 + b`` vs ``(a + 2b) / 2``); the origin is where the difference persists: walking
    back from ``target`` through values without counterparts, the earliest node whose
    value-dependent inputs all have counterparts."""
    region = [n for n in _ancestors(ref.model.graph, target) if n.op_type != "Constant"]
    ref_dependent = _value_dependent(ref.model.graph, ref.feeds)
    cand_dependent = _value_dependent(cand.model.graph, cand.feeds)
    ref_names = _float_values(ref.graph, [o for n in region for o in n.output if o in ref_dependent])
    cand_names = _float_values(
        cand.graph, [o for n in cand.model.graph.node for o in n.output if o in cand_dependent]
    )
    ref_vals = run_values(ref, ref_names)
    cand_vals = run_values(cand, cand_names)
    index = ValueIndex(cand_vals)
    counterpart: dict[str, str] = dict(known)
    moved = _moved_parameters(region, ref.graph.meta.params, counterpart)
    counterpart.update({value: counterpart[param] for value, (param, _) in moved.items()})
    for node in region:
        for out in node.output:
            # the diverging value was compared with its counterpart already: it has none
            if out in ref_vals and out not in counterpart and out != target:
                match = index.matches(ref_vals[out], tol, first=True)
                if match:
                    counterpart[out] = match[0][0]
                elif (reshaped := _reshaped_counterpart(node, out, ref_vals, counterpart, index)) is not None:
                    counterpart[out] = reshaped
    if target not in ref_vals or target in counterpart:
        return None
    producers = {o: n for n in region for o in n.output}
    order = {id(n): i for i, n in enumerate(region)}
    origins, stack, seen = [], [target], set()
    while stack:
        value = stack.pop()
        node = producers.get(value)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        # a value that only moves (Identity, Reshape, ...) parts where its input does: an input
        # counterpart found by value there was a coincidence (BatchNorm at its initial
        # identity statistics leaves its input unchanged)
        # (a Transpose reorders what it moves: its input may agree where its output does not)
        moves = node.op_type in PASS_THROUGH and node.op_type != "Transpose"
        parted = [
            i for i in node.input
            if i in ref_vals and (i not in counterpart or (moves and i not in known))
        ]
        if parted:
            for name in parted:  # they part: no counterpart stands, whatever matched by value
                counterpart.pop(name, None)
            stack.extend(parted)
        else:
            origins.append((node, value))
    if not origins:
        return None
    node, out = min(origins, key=lambda item: order[id(item[0])])
    sources = [i for i in node.input if i in counterpart and (i in ref_vals or i in ref.feeds)]
    cand_sources = [counterpart[i] for i in sources]
    ref_between = _between(ref.model.graph, sources, target) or [node]
    cand_between = _between(cand.model.graph, cand_sources, cand_target)
    cand_node = next((n for n in cand_between if n.op_type == node.op_type), None)
    diff, closest = _closest(ref_vals[out], index)
    computing = next((n for n in cand_between if n.op_type not in PASS_THROUGH
                      and any(o in cand_vals for o in n.output)), None)  # a value, not a shape
    copies = node.op_type in RESHAPES and computing is not None and cand_target in cand_vals
    if copies:
        # the reference only copies agreeing values here; the candidate computes something of
        # its own (Paddle's Dropout scaling by 1 - p in eval mode, which torch's leaves out)
        cand_node, closest = computing, cand_vals[cand_target]
        diff = _max_diff(ref_vals[target], closest)
    elif cand_node is None:
        # the first node that computes something new: not one that leaves an input as it is at
        # these values (a BatchNorm's scale of ones and shift of zeros at initialization, where
        # the values matched the source by coincidence)
        working = [n for n in cand_between if n.op_type not in PASS_THROUGH]
        cand_node = next((n for n in working if not _keeps_an_input(n, cand_vals)), None) or next(iter(working), None)
    params = ref.graph.meta.params
    transposed = tuple(
        (i, n.input[0], tuple(_perm(n)))
        for i in node.input if i in params and i in counterpart
        for n in cand_between if n.op_type == "Transpose" and n.input[0] == counterpart[i]
    )
    ref_transposed = tuple(
        (moved[i][0], counterpart[moved[i][0]], moved[i][1])
        for i in node.input if i in moved and moved[i][1] and list(moved[i][1]) != sorted(moved[i][1])
    )
    ref_consts = constant_scalars(ref.graph, ref_dependent)
    cand_consts = constant_scalars(cand.graph, cand_dependent)
    return Origin(
        ref_node=node,
        cand_node=cand_node,
        diff=diff,
        ref_value=ref_vals[out],
        cand_value=closest if cand_node is not None else None,  # no counterpart: nothing to set beside it
        ref_constants=_consumed(ref_between, ref_consts),
        cand_constants=_consumed(cand_between, cand_consts),
        origin_constants=_consumed([node], ref_consts),
        transposed_params=transposed,
        ref_transposed_params=ref_transposed,
        ref_inputs={i: ref_vals[i] for i in node.input if i in ref_vals},
        copies=copies,
        cand_sources=tuple(cand_sources),
        ref_status={v: "agrees" if v in counterpart else "differs" for v in ref_vals},
        cand_status={
            **{o: "differs" for n in cand_between for o in n.output if o in cand_vals},
            **dict.fromkeys(counterpart.values(), "agrees"),
        },
    )


def _copied(graph: onnx.GraphProto, value: str) -> str | None:
    """The value an Identity (a module-output tap) copies into ``value``; None when no
    Identity writes it."""
    node = next((n for n in graph.node if value in n.output), None)
    return node.input[0] if node is not None and node.op_type == "Identity" and node.input else None


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _moved_parameters(
    region: Sequence[onnx.NodeProto], params: Mapping[str, object], counterpart: Mapping[str, str]
) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """Values of the region that only move a paired parameter (PASS_THROUGH ops, chained), as
    value -> (parameter, perm): the composed Transpose permutation (``()`` where none is on the
    way), or None where another move (a Reshape of a bias to [1, C, 1, 1]) is. The candidate
    may use the parameter as stored, so such a value has no counterpart of its own to be found
    by value: it stands for the candidate's parameter, and a wrong move shows at its consumer."""
    moved: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for node in region:
        if node.op_type not in PASS_THROUGH or node.domain not in ("", "ai.onnx") or not node.input:
            continue
        source = node.input[0]
        if source in moved:
            param, perm = moved[source]
        elif source in params and source in counterpart:
            param, perm = source, ()
        else:
            continue
        if node.op_type == "Transpose" and perm is not None:
            order = _perm(node)
            perm = tuple(perm[i] for i in order) if perm else tuple(order)
        elif node.op_type not in ("Identity", "Cast"):
            perm = None
        moved[node.output[0]] = (param, perm)
    return moved


#: Ops that relabel or move values without computing: the candidate's version of an origin is
#: the first node after them.
PASS_THROUGH = ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast")
#: The moves among them that keep the values and their order: the output is the input reshaped.
RESHAPES = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _reshaped_counterpart(
    node: onnx.NodeProto, out: str, ref_vals: Mapping[str, np.ndarray], counterpart: Mapping[str, str],
    index: ValueIndex,
) -> str | None:
    """The counterpart of a reshape's output that matching by value cannot find because the
    other side never has that shape (Paddle reshapes a sum to [1] where torch keeps []): its
    input's counterpart. None where the shape is unchanged or the other side has values of that
    shape: then no match is a sign that the values differ."""
    source = node.input[0] if node.input else ""
    if node.op_type not in RESHAPES or node.domain not in ("", "ai.onnx") or source not in counterpart:
        return None
    shape = ref_vals[out].shape
    if source not in ref_vals or ref_vals[source].shape == shape or index.same_shape(shape):
        return None
    return counterpart[source]

#: Attributes that are numeric constants of a computation (an epsilon, a slope, a bound), and
#: the ops they are that for ("*": every op).
CONSTANT_ATTRIBUTES = {
    "epsilon": "*", "momentum": "*", "alpha": ("LeakyRelu", "Elu", "Celu", "Selu", "HardSigmoid"),
    "min": ("Clip",), "max": ("Clip",), "ratio": ("Dropout",),
}


def constant_scalars(graph: LossGraph, dependent: set[str]) -> dict[str, float]:
    """Float constants of a graph that do not depend on what is fed: scalars, or tensors of one
    repeated value (``full``, ``ones_like * m``), as value name -> number."""
    from lossgraph.runtime.types import constant_values

    def fold() -> dict[str, np.ndarray]:
        model = onnx.ModelProto()
        model.opset_import.extend(graph.model.opset_import)
        model.graph.node.extend(graph.model.graph.node)  # without the initializers: not constants
        return constant_values(model, value_types(graph))

    out = {}
    for name, value in _cached(graph, "constants", fold).items():
        value = np.asarray(value)
        if name in dependent or value.size == 0 or not np.issubdtype(value.dtype, np.floating):
            continue
        unique = np.unique(value)
        if unique.size == 1:
            out[name] = float(np.float32(unique[0]))
    return out


#: Ops whose constant inputs are weights, not scalars of the computation.
WEIGHTED_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization",
)


def _consumed(nodes: Iterable[onnx.NodeProto], constants: Mapping[str, float]) -> tuple[float, ...]:
    """The constant numbers these nodes compute with: constant inputs and numeric attributes."""
    found: list[float] = []
    for node in nodes:
        if node.op_type not in WEIGHTED_OPS:  # a constant weight is no margin or epsilon
            found += [constants[i] for i in node.input if i in constants]
        for attr in node.attribute:
            ops = CONSTANT_ATTRIBUTES.get(attr.name, ())
            if attr.type == onnx.AttributeProto.FLOAT and (ops == "*" or node.op_type in ops):
                found.append(float(np.float32(attr.f)))
    return tuple(sorted(set(found)))


def _closest(ref_value: np.ndarray, index: ValueIndex) -> tuple[float, np.ndarray | None]:
    """The candidate value of the same shape nearest the reference value, and its distance."""
    candidates = [index.values[c] for c in index.same_shape(ref_value.shape)]  # as they are
    if not candidates:
        return float("inf"), None
    diffs = [_max_diff(ref_value, c) for c in candidates]
    best = int(np.argmin(diffs))
    return diffs[best], candidates[best]


def localize_backward(
    ref: Side, cand: Side, param_map: ParamMap, tol: Tolerance, step: int, loss: str
) -> tuple[Divergence | None, dict[str, object]]:
    """Walk the taps from the loss: the first whose gradient diverges, every later one agreeing;
    then, between that tap and the loss, the node where the gradients part (see
    :func:`_backward_origin`). Also returns both gradients at the tap (``ref_grad``,
    ``cand_grad``) and the tap's value on each side (``ref_tap``, ``cand_tap``) for the hints."""
    modules = module_map(param_map, ref.graph, cand.graph)
    ref_taps, cand_taps = taps(ref.graph), taps(cand.graph)
    names = [t for t in ref_taps if translate_tap(t, modules) in cand_taps]
    ref_grads = _tap_gradients(ref, loss, [ref_taps[t] for t in names])
    cand_grads = _tap_gradients(cand, loss, [cand_taps[translate_tap(t, modules)] for t in names])
    for index in range(len(names) - 1, -1, -1):
        tap = names[index]
        value, cand_value = ref_taps[tap], cand_taps[translate_tap(tap, modules)]
        a, b = ref_grads[value], cand_grads[cand_value]
        if _agree(a, b, tol):
            continue
        values: dict[str, object] = {"ref_grad": a, "cand_grad": b, "ref_tap": value, "cand_tap": cand_value}
        later = {ref_taps[t]: cand_taps[translate_tap(t, modules)] for t in names[index + 1:]}
        origin = _backward_origin(ref, cand, loss, value, cand_value, later, tol)
        if origin is not None:
            node, cand_node, diff, status = origin
            values.update(ref_status=status[0], cand_status=status[1])
            scope = _scope_of(node, tap, cand_node, modules)
            found = _divergence(step, "backward", node, cand_node, scope, diff, loss)
        else:
            node = _producer(ref.model.graph, value)
            cand_node = _producer(cand.model.graph, cand_value)
            diff = _max_diff(a, b)
            found = _divergence(step, "backward", node, cand_node, tap.partition("#")[0], diff, loss)
        return found, values
    return None, {}


def _backward_origin(
    ref: Side, cand: Side, loss: str, value: str, cand_value: str, later: Mapping[str, str],
    tol: Tolerance,
):
    """The node between tap ``value`` and the loss where the gradients part.

    Values of the two graphs in that region are paired by their forward values; then d(loss)/d
    of each is compared. The origin is a consumer of the latest value whose gradient differs,
    among those whose own outputs' gradients all agree: the backward of that node computes
    different input gradients from the same output gradients (a stop-gradient on one side
    only, another subgradient). Returns (reference node, candidate node, |diff|, statuses) or
    None."""
    ref_region = _between(ref.model.graph, [value], loss, stop=set(later))
    cand_region = _between(cand.model.graph, [cand_value], loss, stop=set(later.values()))
    ref_names = [value, *_float_values(ref.graph, [o for n in ref_region for o in n.output])]
    cand_names = [cand_value, *_float_values(cand.graph, [o for n in cand_region for o in n.output])]
    ref_names = [n for n in dict.fromkeys(ref_names) if n != loss]
    cand_names = [n for n in dict.fromkeys(cand_names) if n != loss]
    ref_vals, cand_vals = run_values(ref, ref_names), run_values(cand, cand_names)
    ref_grads = _tap_gradients(ref, loss, ref_names, ref_vals)
    cand_grads = _tap_gradients(cand, loss, cand_names, cand_vals)
    index = ValueIndex(cand_vals)
    pairs: dict[str, list[tuple[str, int]]] = {value: [(cand_value, 1)]}
    for name in ref_names[1:]:
        pairs[name] = index.matches(ref_vals[name], tol)
    # a value equal up to sign has a gradient equal up to the same sign
    parted = {
        name for name, others in pairs.items()
        if others and not any(_agree(ref_grads[name], sign * cand_grads[c], tol) for c, sign in others)
    }
    if value not in parted:
        return None
    agreeing = {name for name, others in pairs.items() if others and name not in parted}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in ref_region:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    order = {name: i for i, name in enumerate(ref_names)}
    for name in sorted(parted, key=lambda n: -order[n]):
        ok = [
            node for node in consumers.get(name, [])
            if all(o in agreeing for o in node.output if o in ref_vals)
            and any(o in agreeing for o in node.output)
        ]
        if ok:
            node = next((n for n in ok if node_meta(n, STOP_GRADIENT_KEY) == "1"), ok[0])
            others = pairs[name]
            diff = min(
                float(np.abs(ref_grads[name].astype(np.float64) - sign * cand_grads[c]).max())
                for c, sign in others
            )
            cand_between = _between(
                cand.model.graph, [c for c, _ in others], loss, stop=set(later.values())
            )
            cand_node = cand_between[0] if cand_between else None
            status = (
                {n: "differs" if n in parted else "agrees" for n in pairs if pairs[n]},
                {c: "agrees" for n in agreeing for c, _ in pairs[n]},
            )
            return node, cand_node, diff, status
    return None


def tapped_values(model: onnx.ModelProto) -> dict[str, str]:
    """Each tap's value -> the module output it taps (a tap is an Identity)."""
    return {n.output[0]: n.input[0] for n in model.graph.node if node_meta(n, TAP_KEY)}


def _tap_gradients(
    side: Side, loss: str, values: list[str], known: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """d(loss)/d(value) for each value (zeros where the loss does not depend on it; their
    shapes from ``known`` values where given, else measured). A tap's gradient is its module
    output's: the exporter may leave consumers reading the output itself rather than the tap
    (Hugging Face's BERT: the tap alone would have a zero gradient)."""
    params = {k: v for k, v in side.feeds.items() if k in side.graph.meta.params}
    tapped = tapped_values(side.model)
    wrt = {v: tapped.get(v, v) for v in values}
    result = build_gradients(side.model, loss, list(dict.fromkeys(wrt.values())), feeds=side.feeds)
    outputs = [g for g in result.grads.values() if g]
    got = OrtRunner(result.model, fed=params, device=side.device, arena=False).run(
        side.feeds, outputs=outputs
    )
    grads = {v: result.grads[w] for v, w in wrt.items()}
    zero = [v for v, g in grads.items() if not g and v not in (known or {})]
    shapes = {**(known or {}), **(run_values(side, zero) if zero else {})}
    return {v: got[g] if g else np.zeros_like(shapes[v]) for v, g in grads.items()}


#: Nodes shown around a divergence in reports: this many hops up and down, at most this many
#: per hop.
NEIGHBOURHOOD_HOPS = 2
NEIGHBOURHOOD_WIDTH = 6


def neighbourhood(
    graph: LossGraph, center: str, status: Mapping[str, str] | None = None
) -> dict[str, object] | None:
    """The nodes around node ``center``: producers of its inputs and consumers of its outputs,
    up to NEIGHBOURHOOD_HOPS away (Constant nodes left out), each with its op, scope, distance
    (negative upstream) and, where known, whether its output agrees with the other side."""
    nodes = [n for n in graph.model.graph.node if n.op_type != "Constant"]
    by_name = {n.name: n for n in nodes if n.name}
    if center not in by_name:
        return None
    producers = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layer = {center: 0}
    for direction in (-1, 1):
        frontier = [by_name[center]]
        for hop in range(1, NEIGHBOURHOOD_HOPS + 1):
            found = []
            for node in frontier:
                if direction < 0:
                    near = [producers[i] for i in node.input if i in producers]
                else:
                    near = [c for o in node.output for c in consumers.get(o, [])]
                found += [n for n in near if n.name not in layer and n.name not in {f.name for f in found}]
            found = found[:NEIGHBOURHOOD_WIDTH]
            layer.update({n.name: direction * hop for n in found})
            frontier = found
    status = status or {}
    shown = [n for n in nodes if n.name in layer]
    outputs = {o: n.name for n in shown for o in n.output}
    return {
        "center": center,
        "nodes": [
            {
                "name": n.name,
                "op_type": n.op_type,
                "scope": node_meta(n, SCOPE_KEY) or node_meta(n, TAP_KEY) or "",
                "layer": layer[n.name],
                "status": "origin" if n.name == center else next(
                    (status[o] for o in n.output if o in status), ""
                ),
            }
            for n in shown
        ],
        "edges": [[outputs[i], n.name] for n in shown for i in n.input if i in outputs],
    }
