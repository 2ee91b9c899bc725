"""Known porting pitfalls, recognized from the pattern of a divergence.

Each hint is a function of a :class:`HintContext` that returns a sentence naming the likely
cause, or None. They run in order; every hint that recognizes its pattern contributes. The
catalog starts from DESIGN.md's list: transposed Linear weights, BatchNorm momentum (m vs 1-m)
and running-variance conventions, epsilons, AvgPool ``exclusive``, the cross-entropy class
axis, BCE's log clamp, KL ``mean`` vs ``batchmean``, optimizer conventions (epsilon, weight
decay coupled or decoupled), a missing ``detach``, dropout masks, learning-rate schedules, and
constants (margins, clamps) that differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from lossgraph.autodiff.builder import GRAD_OF_KEY
from lossgraph.autodiff.custom_vjp import CustomVjp
from lossgraph.autodiff.registry import RULES
from lossgraph.graph import (
    LSTM_CELL_GATE_KEY,
    PADDING_IDX_KEY,
    SCOPE_KEY,
    SOURCE_KEY,
    STOP_GRADIENT_KEY,
    LossGraph,
    OptimizerInfo,
    live_nodes,
    lowered_from,
    node_meta,
    source_line,
)
from lossgraph.verify.conventions import BY_KEY, for_attribute, in_code
from lossgraph.verify.results import Divergence

Hint = Callable[["HintContext"], "str | None"]
HINTS: list[Hint] = []


#: hints that speak only when no other hint does (a generic reading of the same evidence)
FALLBACKS: set[Hint] = set()


def hint(fn: Hint) -> Hint:
    HINTS.append(fn)
    return fn


def fallback(fn: Hint) -> Hint:
    FALLBACKS.add(fn)
    return fn


@dataclass
class HintContext:
    """What a hint may look at: both graphs, the divergence, and measured values."""

    ref: LossGraph
    cand: LossGraph
    divergence: Divergence
    #: measurements of the diverging step, e.g. "ref_before"/"ref_after"/"cand_after" buffers,
    #: "ref_lr"/"cand_lr", "ref_grad"/"cand_grad" at the diverging tap
    values: dict[str, Any] = field(default_factory=dict)
    #: constant_values of each graph, by id, folded on first use
    folded: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    #: static_types of each graph, by id, inferred on first use
    typed: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)
    #: value -> the nodes reading it, of each graph, by id, on first use
    read_by: dict[int, dict[str, list[onnx.NodeProto]]] = field(default_factory=dict, repr=False)

    def constants(self, graph: LossGraph) -> dict[str, np.ndarray]:
        """``constant_values`` of one side's graph, folded once however many hints ask."""
        from lossgraph.runtime.types import constant_values

        if id(graph) not in self.folded:
            self.folded[id(graph)] = constant_values(graph.model)
        return self.folded[id(graph)]

    def types(self, graph: LossGraph) -> dict[str, Any]:
        """``static_types`` of one side's graph (element type and shape of each value), once."""
        from lossgraph.runtime.types import static_types

        if id(graph) not in self.typed:
            self.typed[id(graph)] = static_types(graph.model)
        return self.typed[id(graph)]

    def consumers(self, graph: LossGraph) -> dict[str, list[onnx.NodeProto]]:
        """Value -> the nodes reading it, of one side's graph, once however many hints ask."""
        if id(graph) not in self.read_by:
            self.read_by[id(graph)] = _consumers(graph)
        return self.read_by[id(graph)]

    def node(self, side: str) -> onnx.NodeProto | None:
        graph = self.ref if side == "ref" else self.cand
        name = self.divergence.reference_node if side == "ref" else self.divergence.candidate_node
        return next((n for n in graph.model.graph.node if n.name == name), None) if name else None


def hints_for(context: HintContext) -> str | None:
    """Every recognized cause, joined; None when nothing is recognized."""
    found: dict[str, bool] = {}  # text -> from a fallback hint
    for fn in HINTS:
        text = fn(context)
        if text and text not in found:
            found[text] = fn in FALLBACKS
    specific = [text for text, generic in found.items() if not generic]
    chosen = specific or list(found)
    return " ".join(chosen) if chosen else None


# --- forward ----------------------------------------------------------------------------------


@hint
def unpaired_state(ctx: HintContext) -> str | None:
    """A buffer or frozen parameter that has no counterpart on the other side and feeds the
    diverging node (``values["param_map"]``): a loss's ``pos_weight`` the port left out."""
    from lossgraph.verify.align import describe_unpaired_state

    pmap = ctx.values.get("param_map")
    if pmap is None or rope_base(ctx):
        return None
    upstream = []
    for side, graph in (("ref", ctx.ref), ("cand", ctx.cand)):
        node = ctx.node(side)
        nodes = live_nodes(graph.model.graph.node, set(node.output)) if node is not None else []
        # integer buffers (position_ids, token_type_ids) are indices: the other side computes
        # them inline as often as not, and their effect shows where they are looked up
        params = graph.meta.params
        upstream.append({
            i for n in nodes for i in n.input
            if i not in params or not params[i].dtype.startswith(("int", "uint"))
        })
    state = describe_unpaired_state(ctx.ref, ctx.cand, pmap, (upstream[0], upstream[1]))
    if not state:
        return None
    return (
        f"Upstream of the diverging node, tensors without counterpart on the other side: {state}. "
        f"The port leaves one out (a loss weight, a mask, a constant of the model) or names it so "
        f"that it cannot be paired (give a --name-map)."
    )


@hint
def rope_base(ctx: HintContext) -> str | None:
    """Rotary position embeddings with another base (``rope_theta``): each side's angle table (the
    constant input of its Cos/Sin nodes, position x frequency) gives its frequencies
    ``theta^(-2k/d)``, hence its theta. A buffer such as torch's ``inv_freq`` that the port
    computes in its forward instead is no port bug; the base it implies can be."""
    ref, cand = _rope_theta(ctx, ctx.ref), _rope_theta(ctx, ctx.cand)
    if ref is None or cand is None or abs(ref - cand) <= 1e-3 * max(ref, cand):
        return None
    return (
        f"Rotary embedding base differs: the reference's rotation angles imply rope_theta "
        f"{ref:.6g}, the candidate's {cand:.6g} (rope_theta / base in the model config)."
    )


def _rope_theta(ctx: HintContext, graph: LossGraph) -> float | None:
    """theta of the graph's rotary tables, if it has any and they agree (None else): the angle
    tables its Cos/Sin nodes read, or, where the model computed them at construction (a cached
    buffer, as PaddleFormers' LLaMA does), the cosine tables themselves."""
    trig = {n.input[0] for n in graph.model.graph.node if n.op_type in ("Cos", "Sin")}
    found = []
    for name, table in ctx.constants(graph).items():
        theta = _angle_table_theta(table) if name in trig else _cosine_table_theta(table)
        if theta is not None:
            found.append(theta)
    # a cosine table's arccos carries float32 rounding: thetas agree to 1e-3, shown to 4 digits
    if not found or max(found) > min(found) * (1 + 1e-3):
        return None
    return float(f"{np.median(found):.4g}")


def _angle_table_theta(table: np.ndarray) -> float | None:
    """theta of an angle table (position x frequency, positions on the next-to-last axis):
    its frequencies are position 1 minus position 0, exactly."""
    if np.ndim(table) < 2 or np.shape(table)[-2] < 2:
        return None
    step = np.asarray(table, np.float64).reshape(-1, *np.shape(table)[-2:])[0]
    distinct: list[float] = []
    for f in sorted(step[1] - step[0], reverse=True):
        if not distinct or f < distinct[-1] * (1 - 1e-9):
            distinct.append(float(f))
    if len(distinct) < 2 or distinct[-1] <= 0:
        return None
    return _theta(distinct[0], distinct[1], len(distinct))


def _cosine_table_theta(table: np.ndarray) -> float | None:
    """theta of a cosine table ``cos(position * f)`` ([positions, dim] once its axes of 1 are
    dropped; each frequency once, or twice as halves or pairs); None for anything else. Each
    frequency is read at the furthest position where its angle is still below pi; those too
    low for float32 to resolve are left out, the highest two give theta."""
    raw = np.asarray(table)
    if raw.dtype.kind != "f" or sum(d > 1 for d in raw.shape) != 2:
        return None  # checked on the stored array: most constants are weights, left unconverted
    first = raw.reshape(-1, raw.shape[-1])[0] if raw.shape[-1] > 1 else None
    if first is None or not np.allclose(first, 1.0, atol=1e-6):
        return None
    cos = np.squeeze(raw.astype(np.float64))
    if cos.ndim != 2 or cos.shape[0] < 2 or cos.shape[1] < 2:
        return None
    if not np.allclose(cos[0], 1.0, atol=1e-6) or np.any(np.abs(cos) > 1 + 1e-6):
        return None
    half = cos.shape[1] // 2
    if cos.shape[1] % 2 == 0 and np.array_equal(cos[:, :half], cos[:, half:]):
        cos = cos[:, :half]
    elif cos.shape[1] % 2 == 0 and np.array_equal(cos[:, 0::2], cos[:, 1::2]):
        cos = cos[:, 0::2]
    angles = np.arccos(np.clip(cos, -1.0, 1.0))
    positions = np.arange(cos.shape[0])[:, None]
    last = np.maximum((positions * angles[1][None, :] < 3.0).sum(axis=0) - 1, 1)
    freqs = np.where(angles[1] > 0, angles[last, np.arange(cos.shape[1])] / last, 0.0)
    if not np.allclose(np.cos(positions * freqs), cos, atol=1e-4):
        return None
    top = sorted(freqs, reverse=True)
    return _theta(top[0], top[1], cos.shape[1]) if len(top) > 1 else None


def _theta(first: float, second: float, count: int) -> float | None:
    """The base of ``count`` rotary frequencies ``theta^(-2k/d)`` (d = 2 * count) from the two
    highest, 1 and ``theta^(-2/d)``; None when they are not that."""
    if not np.isclose(first, 1.0, atol=1e-4) or not 0 < second < 1 - 1e-4 or count < 2:
        return None
    return float(second) ** -count


@hint
def root_epsilon(ctx: HintContext) -> str | None:
    """An epsilon of a normalization written out (``x * rsqrt(mean(x^2) + eps)``, RMSNorm, a
    hand-written LayerNorm): near the diverging node each side adds a small constant before a
    square root (Sqrt, Rsqrt as Reciprocal, Pow), and the two differ."""
    if normalization_epsilon(ctx):
        return None
    ref, cand = (_root_epsilons(ctx, graph, ctx.node(side)) for graph, side in
                 ((ctx.ref, "ref"), (ctx.cand, "cand")))
    if len(ref) != 1 or len(cand) > 1 or not _missing(ref, cand):
        return None
    instead = f", the candidate {cand[0]:g}" if cand else ", which the candidate does not"
    where = f" at {ctx.divergence.scope}" if ctx.divergence.scope else ""
    return (
        f"Normalization epsilon{where}: the reference adds {ref[0]:g} under the square root"
        f"{instead} (eps, epsilon, variance_epsilon, rms_norm_eps: defaults differ)."
    )


#: How many producers back from the diverging node an epsilon is looked for.
_EPSILON_DEPTH = 8
_ROOTS = ("Sqrt", "Reciprocal", "Pow", "Div")


def _root_epsilons(ctx: HintContext, graph: LossGraph, node: onnx.NodeProto | None) -> list[float]:
    """Small positive constants (below 0.1) added right before a square root (or the division
    or power it takes part in) among the ``_EPSILON_DEPTH`` producers before ``node``."""
    nodes = _ancestors(graph, node, _EPSILON_DEPTH)
    consumers = ctx.consumers(graph)
    adds = [n for n in nodes if n.op_type == "Add"
            and any(c.op_type in _ROOTS for c in consumers.get(n.output[0], []))]
    constants = ctx.constants(graph) if adds else {}
    found = []
    for add in adds:
        for name in add.input:
            value = constants.get(name)
            if value is not None and np.size(value) == 1 and 0 < float(np.ravel(value)[0]) < 0.1:
                found.append(float(np.ravel(value)[0]))
    return sorted(set(found))


def _ancestors(graph: LossGraph, node: onnx.NodeProto | None, depth: int) -> list[onnx.NodeProto]:
    """``node`` and the nodes producing its inputs, up to ``depth`` producers back."""
    if node is None:
        return []
    producers = {o: n for n in graph.model.graph.node for o in n.output}
    found: dict[int, onnx.NodeProto] = {}
    frontier = [node]
    for _ in range(depth):
        ahead = []
        for current in frontier:
            if id(current) not in found:
                found[id(current)] = current
                ahead += [producers[i] for i in current.input if i in producers]
        frontier = ahead
    return list(found.values())


#: How many producers back from the diverging node a GELU is looked for.
_GELU_DEPTH = 12


@hint
def gelu_approximation(ctx: HintContext) -> str | None:
    """GELU exact (erf) on one side, its tanh approximation on the other: near the divergence,
    or, where one side has none near it, every GELU of that side's graph. An ONNX Gelu node says
    which by its ``approximate`` attribute; a decomposed one by Erf, or by Tanh with the
    approximation's 0.044715."""
    kinds = [_gelu_kind(ctx, graph, _ancestors(graph, ctx.node(side), _GELU_DEPTH))
             for graph, side in ((ctx.ref, "ref"), (ctx.cand, "cand"))]
    if (kinds[0] is None) != (kinds[1] is None):
        # the other side's counterpart lies elsewhere: its GELUs, if all of one kind
        for k, graph in enumerate((ctx.ref, ctx.cand)):
            if kinds[k] is None:
                kinds[k] = _gelu_kind(ctx, graph, list(graph.model.graph.node))
    if None in kinds or kinds[0] == kinds[1]:
        return None
    return (
        f"GELU differs: the reference computes the {kinds[0]} one, the candidate the {kinds[1]} "
        f"(torch gelu(approximate='tanh'), Paddle gelu(approximate=True), HF 'gelu_new')."
    )


def _gelu_kind(ctx: HintContext, graph: LossGraph, nodes: list[onnx.NodeProto]) -> str | None:
    """"exact" or "tanh approximation": the GELUs among ``nodes``, if all of one kind."""
    kinds = set()
    for n in nodes:
        if n.op_type == "Gelu":
            kinds.add("tanh approximation" if _attributes(n).get("approximate") in ("tanh", b"tanh")
                      else "exact")
        elif n.op_type == "Erf":
            kinds.add("exact")
    if any(n.op_type == "Tanh" for n in nodes):
        constants = ctx.constants(graph)
        values = [constants.get(i) for n in nodes for i in n.input]
        if any(v is not None and np.size(v) == 1 and abs(float(np.ravel(v)[0]) - 0.044715) < 1e-6
               for v in values):
            kinds.add("tanh approximation")
    return kinds.pop() if len(kinds) == 1 else None


@hint
def transposed_weight(ctx: HintContext) -> str | None:
    """One side transposes a parameter that the other uses as stored, at the origin (the
    candidate: ``transposed_params``; the reference: ``ref_transposed_params``)."""
    moved = ctx.values.get("transposed_params") or []
    if not moved:
        kept = ctx.values.get("ref_transposed_params") or []
        if not kept:
            return None
        ref_param, cand_param, perm = kept[0]
        return (
            f"The reference transposes {ref_param} (perm {list(perm)}) before "
            f"{ctx.divergence.op_type}; the candidate uses {cand_param} as stored: the port leaves "
            f"out a transposition, or its weight was converted to another layout than the one "
            f"the reference reads."
        )
    ref_param, cand_param, perm = moved[0]
    info = ctx.ref.meta.params.get(ref_param)
    if info is not None and info.layer_type == "Linear":
        square = len(info.shape) == 2 and info.shape[0] == info.shape[1]
        return (
            f"Linear weight layout: torch stores {ref_param} as [out, in], Paddle as [in, out]; "
            f"the port multiplies by the weight the other way round"
            + (" (it is square, so the shapes still fit)." if square else ".")
        )
    return (
        f"The candidate transposes {cand_param} (perm {list(perm)}) before "
        f"{ctx.divergence.op_type}; the reference uses {ref_param} as stored: a weight converted "
        f"to the wrong layout, or transposed once too often."
    )


def _attributes(node: onnx.NodeProto | None) -> dict[str, Any]:
    if node is None:
        return {}
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@hint
def differing_attributes(ctx: HintContext) -> str | None:
    """Same op on both sides with different attributes (epsilon, axis, count_include_pad)."""
    ref_node, cand_node = ctx.node("ref"), ctx.node("cand")
    ref_node, cand_node = (lowered_from(n) or n for n in (ref_node, cand_node))  # GridSample's settings
    if ref_node is None or cand_node is None or ref_node.op_type != cand_node.op_type:
        return None
    a, b = _attributes(ref_node), _attributes(cand_node)
    names = {"epsilon": "epsilon", "axis": "class/softmax axis", "count_include_pad":
             "AvgPool count_include_pad (Paddle: exclusive=not count_include_pad)", "alpha": "slope",
             "momentum": "momentum", "strides": "strides", "pads": "padding",
             "dilations": "dilation", "group": "groups", "kernel_shape": "kernel size",
             "ceil_mode": "ceil_mode", "transB": "transposed weight (transB)",
             "mode": "interpolation mode", "nearest_mode": "nearest rounding",
             "cubic_coeff_a": "cubic coefficient",
             "coordinate_transformation_mode": "coordinate transformation",
             "align_corners": "align_corners", "padding_mode": "padding_mode"}
    # an attribute left out means its ONNX default; those without one compare only when given
    defaults = {"count_include_pad": 0, "epsilon": 1e-5, "ceil_mode": 0, "group": 1, "transB": 0}
    if ref_node.op_type == "GridSample":
        defaults.update({"mode": "linear", "padding_mode": "zeros", "align_corners": 0})
    if ref_node.op_type == "Resize":
        defaults.update({"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                         "nearest_mode": "round_prefer_floor", "cubic_coeff_a": -0.75})
    a, b = ({k: v.decode() if isinstance(v, bytes) else v for k, v in {**defaults, **d}.items()}
            for d in (a, b))
    if ref_node.op_type == "Resize":
        # torch's pytorch_half_pixel is half_pixel but for an output of size 1
        a, b = ({**d, "coordinate_transformation_mode": _RESIZE_COORDINATES.get(
            d["coordinate_transformation_mode"], d["coordinate_transformation_mode"])} for d in (a, b))
        for mode, setting in (("nearest", "nearest_mode"), ("cubic", "cubic_coeff_a")):
            if a["mode"] != mode and b["mode"] != mode:  # a setting neither side uses
                a, b = ({k: v for k, v in d.items() if k != setting} for d in (a, b))
    diffs = [
        f"{names[k]} {a[k]:g} vs {b[k]:g}" if isinstance(a[k], float) else f"{names[k]} {a[k]} vs {b[k]}"
        for k in sorted(set(a) & set(b))
        if k in names and _as_stored(a[k]) != _as_stored(b[k])
    ]
    if not diffs:
        return None
    known = [c.sentence() for k in sorted(set(a) & set(b)) if k in names and _as_stored(a[k]) != _as_stored(b[k])
             if (c := for_attribute(ref_node.op_type, k)) is not None]
    return (f"{ref_node.op_type} differs in its settings: " + ", ".join(diffs) + " (reference vs candidate)."
            + "".join(f" {text}" for text in dict.fromkeys(known)))


#: Resize's coordinate transformations as the frameworks' arguments say them.
_RESIZE_COORDINATES = {
    "half_pixel": "half_pixel (align_corners=False; Paddle align_mode=0)",
    "pytorch_half_pixel": "half_pixel (align_corners=False; Paddle align_mode=0)",
    "align_corners": "align_corners (align_corners=True)",
    "asymmetric": "asymmetric (Paddle align_mode=1, or torch's nearest)",
}


def _as_stored(value: Any) -> Any:
    """An attribute as ONNX stores it: floats are float32 (a default of 1e-5 written in Python
    and one read back from a graph must compare equal)."""
    return float(np.float32(value)) if isinstance(value, float) else value


def _fmt_list(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _missing(values, others) -> list[float]:
    """The values with no counterpart (equal within float32 rounding) among ``others``."""
    return [v for v in values if not any(abs(v - o) <= 1e-6 * max(abs(v), abs(o)) for o in others)]


def _constant_difference(ctx: HintContext) -> tuple[list[float], list[float]] | None:
    """The constants only the reference / only the candidate computes with at the origin."""
    ref, cand = ctx.values.get("ref_constants"), ctx.values.get("cand_constants")
    if ref is None or cand is None:
        return None
    return _missing(ref, cand), _missing(cand, ref)


#: Normalization ops and the name of their epsilon in each framework.
NORMALIZATIONS = {"BatchNormalization": "BatchNorm", "LayerNormalization": "LayerNorm",
                  "InstanceNormalization": "InstanceNorm", "GroupNormalization": "GroupNorm"}


@hint
def normalization_epsilon(ctx: HintContext) -> str | None:
    """A BatchNorm/LayerNorm epsilon of one side that the other does not use. The side whose
    origin is the normalization op says which epsilon it has; the other side may decompose
    the normalization (Paddle's ``var + eps``), so its constants say which it uses instead."""
    diff = _constant_difference(ctx)
    if not diff:
        return None
    only_ref, only_cand = diff
    for side, other, node, mine, theirs in (("reference", "candidate", ctx.node("ref"), only_ref, only_cand),
                                            ("candidate", "reference", ctx.node("cand"), only_cand, only_ref)):
        if node is None or node.op_type not in NORMALIZATIONS:
            continue
        epsilon = float(np.float32(_attributes(node).get("epsilon", 1e-5)))
        if _missing([epsilon], mine):  # the other side uses the same epsilon
            continue
        small = [v for v in theirs if 0 < v < 0.1]
        instead = f"; the {other} computes with {_fmt_list(small)} instead" if small else ""
        return (
            f"{NORMALIZATIONS[node.op_type]} epsilon at {ctx.divergence.scope}: the {side} uses "
            f"{epsilon:g}{instead} (epsilon defaults and names differ: eps vs epsilon)."
        )
    return None


@hint
def attention_scale(ctx: HintContext) -> str | None:
    """Attention scores scaled on one side only, or by another factor: the diverging node is a
    Div or Mul between a score MatMul and the softmax (or on a MatMul operand, split scaling),
    and its constant is the scale of that MatMul's contracted size d: sqrt(d) for a division,
    1/sqrt(d) for a product (d^-1/4 when queries and keys are each scaled). A softmax
    temperature or any other constant is left to the constants hint."""
    diff = _constant_difference(ctx)
    if not diff or ctx.divergence.phase != "forward":
        return None
    for side, other, node, _mine, theirs in (("reference", "candidate", ctx.node("ref"), *diff),
                                            ("candidate", "reference", ctx.node("cand"), *diff[::-1])):
        graph = ctx.ref if side == "reference" else ctx.cand
        if node is None or node.op_type not in ("Div", "Mul"):
            continue
        size = _score_width(ctx, graph, node)
        if size is None:
            continue
        constants = ctx.constants(graph)
        scale = [float(np.ravel(constants[i])[0]) for i in node.input[1:2]
                 if i in constants and np.size(constants[i]) == 1]
        if not scale or not _missing(scale, theirs) or not _is_scale_of(scale[0], node.op_type, size):
            continue
        verb = "divides" if node.op_type == "Div" else "multiplies"
        instead = (f", the {other} computes with {_fmt_list(theirs)} instead" if 0 < len(theirs) <= 4
                   else f", which the {other} does not")
        return (
            f"Attention scale differs: the {side} {verb} the scores by {scale[0]:g} (head size "
            f"{size}){instead} (scale, scaling, head_dim ** -0.5)."
        )
    return None


def _score_width(ctx: HintContext, graph: LossGraph, node: onnx.NodeProto) -> int | None:
    """The contracted size of the attention-score MatMul ``node`` scales: its data input comes
    from that MatMul (through reshapes and transposes), or its output feeds one; and the scores
    reach a softmax. None when ``node`` is no such scaling."""
    producers = {o: n for n in graph.model.graph.node for o in n.output}
    consumers = ctx.consumers(graph)
    types = ctx.types(graph)
    passing = ("Reshape", "Transpose", "Identity", "Cast")
    value = node.input[0]
    for _ in range(3):
        source = producers.get(value)
        if source is None or source.op_type not in passing:
            break
        value = source.input[0]
    source = producers.get(value)
    matmuls = [source] if source is not None and source.op_type == "MatMul" else []
    matmuls += [n for n in _readers(set(node.output), 3, consumers) if n.op_type == "MatMul"]
    for matmul in matmuls:
        shape = types.get(matmul.input[0])
        if shape is not None and shape.shape and _feeds_softmax(matmul, consumers, 4):
            return int(shape.shape[-1])
    return None


def _is_scale_of(value: float, op_type: str, size: int) -> bool:
    """Whether ``value`` is the attention scale for contracted size ``size``: divided by
    sqrt(d), multiplied by d^-1/2, or by d^-1/4 (queries and keys each)."""
    targets = [size ** 0.5] if op_type == "Div" else [size ** -0.5, size ** -0.25]
    return any(abs(value - t) <= 1e-5 * t for t in targets)


@hint
def normalization_placement(ctx: HintContext) -> str | None:
    """Pre-norm against post-norm: a normalization layer is upstream of the diverging node on
    one side, its counterpart (through the parameter map) not on the other."""
    pmap = ctx.values.get("param_map")
    if pmap is None or ctx.divergence.phase != "forward":
        return None
    upstream = []
    for side, graph in (("ref", ctx.ref), ("cand", ctx.cand)):
        node = ctx.node(side)
        if node is None:
            return None
        upstream.append({i for n in live_nodes(graph.model.graph.node, set(node.output)) for i in n.input})
    only: dict[str, list[str]] = {"reference": [], "candidate": []}
    scope = ctx.divergence.scope
    norms: dict[str, list[bool]] = {}  # norm module -> [some weight upstream on ref, on cand]
    for pair in pmap.pairs:
        info = ctx.ref.meta.params.get(pair.reference)
        if pair.parts or pair.packed_in or info is None:
            continue
        here, there = pair.reference in upstream[0], pair.candidate in upstream[1]
        if not _is_norm(info):
            if here != there:
                return None  # the two nodes sit at other places altogether: no norm to blame
            continue
        if scope and (info.module == scope or info.module.startswith(scope + ".")):
            continue  # the diverging norm itself: one side reads its weights before the other
        seen = norms.setdefault(info.module, [False, False])
        seen[0], seen[1] = seen[0] or here, seen[1] or there
    for module, (here, there) in norms.items():
        # a norm whose scale one side has read and whose shift not yet is applied on both
        # sides: a candidate node inside it (scale, then shift) is no placement difference
        if here != there:
            only["reference" if here else "candidate"].append(module)
    if not only["reference"] and not only["candidate"]:
        return None
    parts = [f"the {side} has already applied {', '.join(modules)}, the {other} not"
             for side, other, modules in (("reference", "candidate", only["reference"]),
                                          ("candidate", "reference", only["candidate"])) if modules]
    return (
        f"Normalization placement differs: before the diverging node {'; '.join(parts)} "
        f"(pre-norm against post-norm: normalize_before, norm_first; or a norm moved)."
    )


#: Layer kinds the pre-/post-norm hint counts as normalizations.
_NORMS = ("layernorm", "rmsnorm", "batchnorm", "groupnorm", "instancenorm")


def _is_norm(info: Any) -> bool:
    kind = (info.base_type or info.layer_type).lower()
    return any(kind.startswith(n) or kind.endswith(n) for n in _NORMS)


@hint
@fallback
def differing_constants(ctx: HintContext) -> str | None:
    """The origin computes with a constant the candidate does not use (a margin, a clamp bound,
    a weighting); normalization epsilons, BCE's clamp and tensors without counterpart have hints
    of their own."""
    diff = _constant_difference(ctx)
    origin = ctx.values.get("origin_constants") or ()
    if (not diff or not origin or normalization_epsilon(ctx) or root_epsilon(ctx) or unpaired_state(ctx)
            or attention_scale(ctx)):
        return None
    only_ref, only_cand = diff
    missing = [c for c in origin if c in only_ref]
    if -100.0 in missing:
        return None
    extra = f"; the candidate has {_fmt_list(only_cand)}" if 0 < len(only_cand) <= 4 else ""
    where = f"{ctx.divergence.op_type} in {ctx.divergence.scope or 'the loss'}"
    if missing:
        text = f"the reference computes {where} with {_fmt_list(missing)}, which the candidate does not use{extra}"
    elif 0 < len(only_cand) <= 3:
        text = f"the candidate computes with {_fmt_list(only_cand)} where the reference's {where} has none of it"
    else:
        return None
    return f"A constant differs: {text} (a margin, clamp, epsilon or weighting)."


@hint
def cross_entropy_axis(ctx: HintContext) -> str | None:
    """torch's class axis is 1; a port whose scores reach the loss through a Transpose that
    moves another axis there (Paddle's cross_entropy takes the last axis) has other classes.
    Either side may be the Paddle one."""
    ref_node, cand_node = ctx.node("ref"), ctx.node("cand")
    if ref_node is None or cand_node is None:
        return None
    for side, other, graph, node in (("candidate", "reference", ctx.cand, cand_node),
                                     ("reference", "candidate", ctx.ref, ref_node)):
        axis = _class_axis_moved(graph.model.graph, node)
        if axis is not None:
            return (
                f"Cross-entropy class axis: the {side} takes axis {axis} of the scores as the "
                f"classes (Paddle's cross_entropy defaults to axis=-1), the {other} axis 1 (torch)."
            )
    return None


#: Losses whose class axis is 1 in ONNX, as in torch.
CLASS_AXIS_LOSSES = ("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss")


def _class_axis_moved(graph: onnx.GraphProto, node: onnx.NodeProto) -> int | None:
    """The scores' axis a cross-entropy reads as its classes where a Transpose moves an axis
    other than 1 there: ``node`` is the loss (its scores come from the Transpose) or the
    Transpose (a loss reads it)."""
    transpose = None
    if node.op_type in CLASS_AXIS_LOSSES:
        transpose = next((n for n in graph.node if node.input[0] in n.output), None)
    elif node.op_type == "Transpose" and any(
        n.op_type in CLASS_AXIS_LOSSES and n.input[0] == node.output[0] for n in graph.node
    ):
        transpose = node
    if transpose is None or transpose.op_type != "Transpose":
        return None
    perm = _attributes(transpose).get("perm") or []
    return perm[1] if len(perm) >= 2 and perm[1] != 1 else None


@hint
def bce_log_clamp(ctx: HintContext) -> str | None:
    diff = _constant_difference(ctx)
    if not diff or not any(-100.0 in side for side in diff):
        return None
    return (
        "BCE clamps log(p) at -100 in torch (and Paddle's BCELoss); a hand-written BCE "
        "without the clamp (or with log(p + eps)) parts where p reaches 0 or 1."
    )


@hint
def loss_not_divided_by_accumulation(ctx: HintContext) -> str | None:
    """Losses that differ by the number of micro-batches a step accumulates: one side's loop
    divides the loss by it (``loss / accumulation_steps``), the other's does not."""
    k = ctx.ref.meta.accumulate
    if ctx.divergence.phase != "forward" or "ref_loss" not in ctx.values or k < 2:
        return None
    ratio = _ratio(ctx.values["ref_loss"], ctx.values["cand_loss"])
    if ratio is None or not _is_factor(ratio, k):
        return None
    larger = "candidate" if abs(ctx.values["cand_loss"]) > abs(ctx.values["ref_loss"]) else "reference"
    other = "reference" if larger == "candidate" else "candidate"
    return (
        f"The losses differ by a factor of {k}, the micro-batches each step accumulates "
        f"(Spec.accumulate={k}): the {other} divides the loss by {k}, the {larger} does not, so its "
        f"accumulated gradients are {k} times larger."
    )


def _is_factor(ratio: float, k: int) -> bool:
    """Whether ``ratio`` is ``k`` or ``1/k`` (to 1e-3)."""
    return abs(ratio - k) < 1e-3 * k or abs(1 / ratio - k) < 1e-3 * k


@hint
def gradients_not_cleared(ctx: HintContext) -> str | None:
    """One side's loop never clears the gradients (``Spec.clear_grads=False``): from the second
    step on its updates use the sum of every step's gradients so far."""
    a, b = ctx.ref.meta.clear_grads, ctx.cand.meta.clear_grads
    if ctx.divergence.phase != "update" or a == b or ctx.divergence.step < 1:
        return None
    side, other = ("reference", "candidate") if not a else ("candidate", "reference")
    return (
        f"The {side} never clears its gradients (no zero_grad()/clear_grad() in its loop: "
        f"Spec.clear_grads=False), so its update at step {ctx.divergence.step} used the sum of the "
        f"gradients of every step so far; the {other} clears them after each step."
    )


@hint
def kl_reduction(ctx: HintContext) -> str | None:
    if ctx.divergence.phase != "forward" or "ref_loss" not in ctx.values:
        return None
    ratio = _ratio(ctx.values["ref_loss"], ctx.values["cand_loss"])
    batch = next((s.shape[0] for s in ctx.ref.meta.inputs.values() if s.shape), None)
    if ratio is None or not batch:
        return None
    if ctx.ref.meta.accumulate > 1 and _is_factor(ratio, ctx.ref.meta.accumulate):
        return None  # loss_not_divided_by_accumulation says why
    for k in sorted({batch} | {int(np.prod(s.shape)) // batch for s in ctx.ref.meta.inputs.values() if s.shape}):
        if k > 1 and _is_factor(ratio, k):
            return (
                f"The losses differ by a factor of {k}: a reduction convention ('sum' vs 'mean'). "
                + BY_KEY["kl_div_reduction"].sentence()
            )
    return None


@hint
def smooth_l1_scaling(ctx: HintContext) -> str | None:
    """torch's SmoothL1Loss(beta) against Huber's loss (Paddle's smooth_l1_loss(delta)): the
    losses differ by a factor of 1/beta, the threshold on |x| both sides compare with."""
    if ctx.divergence.phase != "forward" or "ref_loss" not in ctx.values:
        return None
    ratio = _ratio(ctx.values["ref_loss"], ctx.values["cand_loss"])
    if ratio is None:
        return None
    for threshold in sorted(_abs_thresholds(ctx, ctx.ref) | _abs_thresholds(ctx, ctx.cand)):
        if threshold != 1.0 and (abs(ratio * threshold - 1) < 1e-3 or abs(ratio / threshold - 1) < 1e-3):
            return (f"The losses differ by a factor of {ratio:.4g} and both threshold |x| at "
                    f"{threshold:g} (Smooth L1 / Huber): " + BY_KEY["smooth_l1"].sentence())
    return None


def _abs_thresholds(ctx: HintContext, graph: LossGraph) -> set[float]:
    """The positive scalars a graph compares an absolute value with (Smooth L1's beta, Huber's
    delta)."""
    constants = ctx.constants(graph)
    producers = {o: n for n in graph.model.graph.node for o in n.output}
    found = set()
    for node in graph.model.graph.node:
        if node.op_type not in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual") or len(node.input) < 2:
            continue
        for value, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            source = producers.get(value)
            limit = constants.get(other)
            if source is not None and source.op_type == "Abs" and limit is not None and np.size(limit) == 1:
                if float(np.ravel(limit)[0]) > 0:
                    found.add(float(np.float32(np.ravel(limit)[0])))
    return found


@hint
def label_smoothing(ctx: HintContext) -> str | None:
    """Cross entropy with label smoothing on one side only, or by other amounts."""
    if ctx.divergence.phase != "forward" or ctx.divergence.scope:  # in the loss, outside every module
        return None
    ref, cand = _label_smoothing(ctx, ctx.ref), _label_smoothing(ctx, ctx.cand)
    if ref is None or cand is None:
        return None
    if abs(ref - cand) < 1e-6:
        frameworks = {ctx.ref.framework, ctx.cand.framework}
        if ref > 0 and frameworks == {"torch", "paddle"} and all(_class_weighted(ctx, g) for g in (ctx.ref, ctx.cand)):
            return (f"Both cross entropies smooth labels by {ref:g} and weight the classes, which "
                    f"the frameworks combine differently. " + BY_KEY["label_smoothing_weight"].sentence())
        return None
    return (f"Label smoothing differs: the reference's cross entropy smooths labels by {ref:g}, "
            f"the candidate's by {cand:g}. " + BY_KEY["label_smoothing"].sentence())


_CROSS_ENTROPY = re.compile(r"target=torch\.ops\.aten\.cross_entropy_loss\.default\]\(args = \(([^)]*)\)")


def _label_smoothing(ctx: HintContext, graph: LossGraph) -> float | None:
    """How much a graph's cross entropy smooths its labels: torch's from the exported call's
    arguments, a Paddle graph's from the one-hot it scales (1 - e) (0 for a hard-label loss);
    None where the graph has no cross entropy lossgraph recognizes."""
    nodes = graph.model.graph.node
    if graph.framework == "torch":
        calls = {m.group(0) + text[m.end():] for n in nodes
                 if (m := _CROSS_ENTROPY.search(text := node_meta(n, "pkg.torch.onnx.fx_node") or ""))}
        if not calls:
            return None
        call = next(iter(calls))
        keyword = re.search(r"label_smoothing: ([-\d.e]+)", call)
        arguments = _CROSS_ENTROPY.search(call).group(1).split(", ")
        try:
            return float(keyword.group(1) if keyword else arguments[5] if len(arguments) > 5 else 0.0)
        except ValueError:
            return None
    producers = {o: n for n in nodes for o in n.output}
    consumers = ctx.consumers(graph)
    constants = ctx.constants(graph)
    types = ctx.types(graph)
    for node in nodes:
        if node.op_type != "Mul":
            continue
        for value, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            hot = producers.get(value)
            scale = constants.get(other)
            if (hot is None or scale is None or np.size(scale) != 1 or value not in types or not types[value].shape
                    or not (hot.op_type == "OneHot" or hot.op_type == "Cast"
                            and getattr(producers.get(hot.input[0]), "op_type", "") == "Equal")):
                continue
            smoothing = 1.0 - float(np.ravel(scale)[0])
            classes = types[value].shape[-1]
            # Paddle's label_smooth: (1 - e) one_hot + e / C, the uniform share added a few nodes on
            if 0.0 < smoothing < 1.0 and isinstance(classes, int) and any(
                    abs(share * classes - smoothing) < 1e-4
                    for share in _scalars_added_after(node, consumers, constants)):
                return round(smoothing, 6)
    hard = {"SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"}
    return 0.0 if any(n.op_type in hard for n in nodes) else None


def _class_weighted(ctx: HintContext, graph: LossGraph) -> bool:
    """Whether a graph's cross entropy weights its classes: torch's call has a weight argument;
    a Paddle graph multiplies its soft labels by a constant class vector (a MatMul)."""
    nodes = graph.model.graph.node
    if graph.framework == "torch":
        calls = [m.group(1).split(", ") for n in nodes
                 if (m := _CROSS_ENTROPY.search(node_meta(n, "pkg.torch.onnx.fx_node") or ""))]
        return any(len(args) > 2 and args[2] != "None" for args in calls)
    constants = ctx.constants(graph)
    return any(n.op_type == "MatMul" and any(np.ndim(constants.get(i)) == 1 for i in n.input if i in constants)
               for n in nodes)


def _scalars_added_after(node: onnx.NodeProto, consumers, constants, depth: int = 4) -> list[float]:
    """The scalar constants Add nodes within ``depth`` nodes after ``node`` add."""
    found, frontier = [], [node]
    for _ in range(depth):
        frontier = [c for n in frontier for o in n.output for c in consumers.get(o, [])]
        for n in frontier:
            if n.op_type == "Add":
                found += [float(np.ravel(constants[i])[0]) for i in n.input if i in constants and np.size(constants[i]) == 1]
    return found


@hint
def dropout_downscale_in_infer(ctx: HintContext) -> str | None:
    """Paddle's Dropout(mode='downscale_in_infer') multiplies by 1 - p in eval mode (its output
    value is named after Paddle's dropout op), where torch's dropout and Paddle's default do
    nothing."""
    if ctx.divergence.phase != "forward":
        return None
    for side, graph in (("reference", ctx.ref), ("candidate", ctx.cand)):
        node = ctx.node("ref" if side == "reference" else "cand")
        if node is None or node.op_type != "Mul" or not any("pd_op.dropout" in o for o in node.output):
            continue
        constants = ctx.constants(graph)
        factor = next((float(np.ravel(constants[i])[0]) for i in node.input
                       if i in constants and np.size(constants[i]) == 1), None)
        if factor is None:
            continue
        return (f"The {side}'s Paddle Dropout multiplies by {factor:.3g} in eval mode (p = {1 - factor:.3g}): "
                f"mode='downscale_in_infer'. " + BY_KEY["dropout_mode"].sentence())
    return None


#: Elementwise ops one side may apply where the other has none (an extra or a lost activation).
ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
               "HardSigmoid", "HardSwish", "Gelu", "Mish", "Abs", "Neg", "Exp", "Log", "Sqrt", "Erf"}
#: Ops that take an activation with weights: where one side feeds a value the other transforms.
CONSUMERS = {"Gemm", "MatMul", "Conv", "ConvTranspose"}


@hint
def op_on_one_side(ctx: HintContext) -> str | None:
    """An elementwise op only one side applies: the values agree up to a value one side feeds
    to its next layer (Gemm, MatMul, Conv) as it is, where the other applies the op first (an
    extra ReLU in the port, or one it lost). An activation swapped for another is not this:
    there the reference's origin is an activation itself, not a layer."""
    if ctx.divergence.phase != "forward":
        return None
    ref, cand = ctx.node("ref"), ctx.node("cand")
    sources = set(ctx.values.get("cand_sources") or ())
    if ref is None or cand is None or ref.op_type == cand.op_type:
        return None
    if cand.op_type in ELEMENTWISE and ref.op_type in CONSUMERS and cand.input and _moved_from(ctx.cand, cand.input[0]) & sources:
        extra, side, other, graph = cand, "candidate", "reference", ctx.cand
    elif (ref.op_type in ELEMENTWISE and cand.op_type in CONSUMERS and ref.input
          and any(_moved_from(ctx.cand, i) & sources for i in cand.input)
          and not any(n.op_type == ref.op_type for n in _after(ctx, cand))):
        extra, side, other, graph = ref, "reference", "candidate", ctx.ref
    else:
        return None
    if side == "candidate" and not any(n.op_type in CONSUMERS for n in ctx.consumers(graph).get(extra.output[0], [])):
        return None
    source = source_line(extra)
    where = f" ({source})" if source else ""
    return (f"The {side} applies {extra.op_type}{where} to a value the {other} passes on as it is: an op only "
            f"the {side} has (an extra activation, or one the {other} lost).")


def _moved_from(graph: LossGraph, value: str) -> set[str]:
    """``value`` and the values it is a copy of (through Identity, Reshape and the like)."""
    from lossgraph.verify.localize import RESHAPES

    producers = {o: n for n in graph.model.graph.node for o in n.output}
    out = {value}
    while (node := producers.get(value)) is not None and node.op_type in RESHAPES and node.input:
        value = node.input[0]
        out.add(value)
    return out


def _after(ctx: HintContext, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The candidate nodes reading ``node``'s outputs."""
    readers = ctx.consumers(ctx.cand)
    return [n for o in node.output for n in readers.get(o, [])]


def _ratio(a: float, b: float) -> float | None:
    if not a or not b or not np.isfinite(a) or not np.isfinite(b):
        return None
    return a / b


# --- backward ---------------------------------------------------------------------------------


@hint
def gaussian_nll_variance(ctx: HintContext) -> str | None:
    """Paddle's gaussian_nll_loss gives the variance no gradient (a clip under no_grad, kept as
    a stop-gradient before the log), torch's passes it through its clamp: one side only."""
    if ctx.divergence.phase != "backward":
        return None
    detached = [_detached_variance(graph) for graph in (ctx.ref, ctx.cand)]
    if detached[0] == detached[1]:
        return None
    side = "reference" if detached[0] else "candidate"
    return (f"The {side} stops the gradient at a clipped variance before its log (Paddle's "
            f"gaussian_nll_loss). " + BY_KEY["gaussian_nll_variance"].sentence())


def _detached_variance(graph: LossGraph) -> bool:
    """Whether a stopped gradient's value itself is both logged and divided by (a Gaussian
    NLL's variance: log v + (x - y)^2 / v), not a value the gradient passes around (torch's
    clamp, v + (clamp(v) - v).detach())."""
    readers = _consumers(graph)
    for node in graph.model.graph.node:
        if node.op_type != "Identity" or node_meta(node, STOP_GRADIENT_KEY) != "1":
            continue
        read = readers.get(node.output[0], [])
        if any(r.op_type == "Log" for r in read) and any(
                r.op_type == "Div" and r.input[1] == node.output[0] for r in read):
            return True
    return False


@hint
def missing_detach(ctx: HintContext) -> str | None:
    if ctx.divergence.phase != "backward" or "ref_grad" not in ctx.values:
        return None
    ref_zero = not np.any(ctx.values["ref_grad"])
    cand_zero = not np.any(ctx.values["cand_grad"])
    if ref_zero == cand_zero:
        return None
    stops, flows = ("reference", "candidate") if ref_zero else ("candidate", "reference")
    return (
        f"The {stops} stops the gradient at {ctx.divergence.scope} where the {flows} lets it "
        f"through: a missing .detach() / stop_gradient (e.g. a GAN's D step on G's output)."
    )


@hint
def convention_in_call(ctx: HintContext) -> str | None:
    """The values part in, or right after, a call of a function whose defaults differ between
    the libraries and that no op attribute shows (affine_grid decomposes into plain arithmetic):
    the source line of the diverging node, or of the nodes of the same module call that feed it
    (a grid_sample reading affine_grid's grid), names it on either side."""
    if ctx.divergence.phase != "forward":
        return None
    found: dict[str, tuple[Any, bool]] = {}
    # a node whose own settings differ explains the divergence itself: what feeds it agrees
    own_only = differing_attributes(ctx) is not None
    for side, graph in (("ref", ctx.ref), ("cand", ctx.cand)):
        node = ctx.node(side)
        if node is None:
            continue
        for feeding, code in _source_lines_feeding(graph, node, 0 if own_only else _FEEDING_DEPTH):
            for convention in in_code(code):
                if convention.key not in found or not feeding:
                    found[convention.key] = (convention, feeding)
    if not found:
        return None
    return " ".join(
        f"The {'diverging values come from' if feeding else 'values part in'} a call of {c.layer}, "
        f"whose {c.argument} default differs between the libraries: {c.sentence()} Check that both "
        f"sides pass the same." for c, feeding in found.values()
    )


#: how many ops up from a diverging node its feeding source lines are read
_FEEDING_DEPTH = 12


def _source_lines_feeding(
    graph: LossGraph, node: onnx.NodeProto, depth: int
) -> list[tuple[bool, str]]:
    """The source code line of ``node`` (``False``), then those of the nodes of the same module
    call that feed it, up to ``depth`` ops up (``True``)."""
    producers = {o: n for n in graph.model.graph.node for o in n.output}
    scope = node_meta(node, SCOPE_KEY)
    out: list[tuple[bool, str]] = []
    seen: set[int] = set()
    frontier = [node]
    for level in range(depth + 1):
        following = []
        for current in frontier:
            if id(current) in seen or node_meta(current, SCOPE_KEY) != scope:
                continue
            seen.add(id(current))
            text = node_meta(current, SOURCE_KEY)
            if text:
                out.append((level > 0, str(json.loads(text).get("code", ""))))
            following += [producers[i] for i in current.input if i in producers]
        frontier = following
    return out


@hint
def one_sided_stop_gradient(ctx: HintContext) -> str | None:
    """Between the diverging node (the values it reads included) and the losses, one side stops
    the gradient of float values and the other nowhere: a ``.detach()``, ``torch.no_grad()`` /
    ``paddle.no_grad()`` block or ``stop_gradient`` dropped or added in the port. Where neither
    side stops it after the node, the same is asked from the diverging tap's value: a value
    that feeds two loss terms (an actor-critic's advantage, detached in the actor's term and
    not in the critic's) is paired by its forward value with the other term's, so the node
    named may be past the stop. Two sides that both stop it are not compared by count: one
    block becomes one marker or several, depending on how each exporter cuts it."""
    if ctx.divergence.phase != "backward":
        return None
    ref, cand = ctx.node("ref"), ctx.node("cand")
    if ref is None or cand is None:
        return None
    found = [_float_stops_downstream(ctx, ctx.ref, [ref]), _float_stops_downstream(ctx, ctx.cand, [cand])]
    if not any(found) and "ref_tap" in ctx.values:
        found = [
            _float_stops_downstream(ctx, graph, _tap_readers(graph, str(ctx.values[key])))
            for graph, key in ((ctx.ref, "ref_tap"), (ctx.cand, "cand_tap"))
        ]
    # a straight-through estimator's stop is its own hint's (straight_through)
    estimated = [_straight_through_stops(ctx.ref), _straight_through_stops(ctx.cand)]
    found = [[n for n in stops if id(n) not in e] for stops, e in zip(found, estimated, strict=True)]
    if all(found) or not any(found):
        return None
    stops, other = ("reference", "candidate") if found[0] else ("candidate", "reference")
    lines = sorted({line for n in found[0] or found[1] if (line := source_line(n))})
    where = f" at {'; '.join(lines)}," if lines else ""
    return (
        f"Between here and the loss the {stops} stops the gradient{where} and the {other} does not: "
        f"a .detach(), no_grad block or stop_gradient dropped or added in the port."
    )


def _straight_throughs(graph: LossGraph) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Each straight-through estimate ``x + (f(x) - x).detach()`` in ``graph`` (f's values
    forward, gradient 1 backward: quantization, clipping): (the Add, the stop-gradient
    Identity)."""
    nodes = graph.model.graph.node
    producers = {o: n for n in nodes for o in n.output}
    out = []
    for add in nodes:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for x, stopped in (add.input, reversed(add.input)):
            stop = producers.get(stopped)
            if stop is None or stop.op_type != "Identity" or node_meta(stop, STOP_GRADIENT_KEY) != "1":
                continue
            sub = producers.get(stop.input[0])
            if sub is not None and sub.op_type == "Sub" and sub.input[1] == x:
                out.append((add, stop))
    return out


def _straight_through_stops(graph: LossGraph) -> set[int]:
    return {id(stop) for _, stop in _straight_throughs(graph)}


@hint
def straight_through(ctx: HintContext) -> str | None:
    """Near the divergence one side passes the gradient straight through an op
    (``x + (clip(x) - x).detach()``, a straight-through estimator) and the other has no such
    estimate: the forward values agree (the divergence is in the backward), so the other side
    applies the op itself and differentiates it (0 where a clip clips or a rounding rounds)."""
    if ctx.divergence.phase != "backward":
        return None
    found = {}
    for side, graph in (("ref", ctx.ref), ("cand", ctx.cand)):
        found[side] = [add for add, _ in _straight_throughs(graph) if _near(ctx, side, lambda n, a=add: n is a)]
    if bool(found["ref"]) == bool(found["cand"]):
        return None
    side, other = ("reference", "candidate") if found["ref"] else ("candidate", "reference")
    add = (found["ref"] or found["cand"])[0]
    source = source_line(add)
    where = f" ({source})" if source else ""
    return (
        f"The {side} passes the gradient straight through an op{where}: x + (f(x) - x).detach(), a "
        f"straight-through estimator (f's values, gradient 1); the {other} computes the same values "
        f"without it, so its gradient is f's own (0 where a clip clips or a rounding rounds). Write "
        f"both sides the same way."
    )


def _tap_readers(graph: LossGraph, value: str) -> list[onnx.NodeProto]:
    """The nodes reading ``value`` or the value it taps (a module output's tap is an Identity
    that the exporter may leave some readers of the output itself beside)."""
    from lossgraph.verify.localize import tapped_values

    values = {value, tapped_values(graph.model).get(value, value)}
    return [n for n in graph.model.graph.node if values & set(n.input)]


def _float_stops_downstream(
    ctx: HintContext, graph: LossGraph, nodes: list[onnx.NodeProto]
) -> list[onnx.NodeProto]:
    """The stop-gradient markers of float values that ``nodes`` read, or that they (and the
    values they read) reach on the way to the losses."""
    losses = set(graph.meta.losses)
    on_path = {id(n) for n in live_nodes(graph.model.graph.node, losses)}
    consumers, types = ctx.consumers(graph), ctx.types(graph)

    def float_stop(current: onnx.NodeProto) -> bool:
        if current.op_type != "Identity" or node_meta(current, STOP_GRADIENT_KEY) != "1":
            return False
        value = types.get(current.output[0])
        return value is not None and value.is_float

    read = {i for n in nodes for i in n.input}
    found = [n for n in graph.model.graph.node if float_stop(n) and n.output[0] in read]
    seen: set[int] = {id(n) for n in found}
    todo = list(nodes)
    while todo:
        current = todo.pop()
        if id(current) in seen or id(current) not in on_path:
            continue
        seen.add(id(current))
        if float_stop(current):
            found.append(current)
            continue  # nothing flows back through it
        for value in current.output:
            if types.get(value) is not None and not types[value].is_float:
                continue
            todo.extend(r for r in consumers.get(value, []) if _differentiable_in(r, value))
    return found


def _differentiable_in(node: onnx.NodeProto, value: str) -> bool:
    """Whether a gradient flows from ``node`` back into its input ``value``."""
    if node.op_type == "Identity":
        return True
    rule = RULES.get(node.op_type) if not node.domain else None
    return rule is not None and any(
        name == value and index not in rule.nondiff for index, name in enumerate(node.input)
    )


@hint
def custom_backward(ctx: HintContext) -> str | None:
    """A custom backward (autograd.Function / PyLayer) on one side only, or at the divergence on
    both: the gradient there is what the user's backward computes, not the forward's
    derivative."""
    if ctx.divergence.phase != "backward":
        return None
    ref, cand = _custom_backwards(ctx.ref), _custom_backwards(ctx.cand)
    if not ref and not cand:
        return None
    if len(ref) != len(cand):
        more, fewer, extra, other = (
            ("reference", "candidate", ref, cand) if len(ref) > len(cand) else
            ("candidate", "reference", cand, ref)
        )
        has = "; ".join(other.values()) if other else "none"
        return (
            f"The {more} computes gradients with {len(extra)} custom backward pass(es) "
            f"({'; '.join(extra.values())}), the {fewer} with {len(other)} ({has}): a custom "
            f"backward dropped or added in the port."
        )
    here = []
    for side, custom in (("ref", ref), ("cand", cand)):
        node = ctx.node(side)
        if node is not None:
            origin = next((p.value for p in node.metadata_props if p.key == GRAD_OF_KEY), "")
            here.append(custom.get(node.name) or custom.get(origin))
    here = [label for label in here if label]
    if not here:
        return None
    return (
        f"The gradient here comes from a custom backward ({'; '.join(dict.fromkeys(here))}): "
        f"compare the two backward functions."
    )


@hint
def embedding_padding_idx(ctx: HintContext) -> str | None:
    """Embedding lookups at the divergence that treat a padding id differently: a padding row
    on one side only (or another row), or the two frameworks' conventions: torch's
    ``nn.Embedding(padding_idx=k)`` returns row k (zero at init) and gives it no gradient from
    the lookup; Paddle's outputs zeros for id k whatever the row holds."""
    found = [_embedding_padding(ctx, side) for side in ("ref", "cand")]
    if None in found:
        return None
    (ref_param, ref_row, ref_kind), (cand_param, cand_row, cand_kind) = found
    if ref_row != cand_row and ctx.divergence.phase == "backward":
        def said(side: str, param: str, row: int | None) -> str:
            return (f"the {side}'s embedding {param} gives row {row} (padding_idx) no gradient"
                    if row is not None else f"the {side}'s embedding {param} has no padding_idx")
        first = said("reference", ref_param, ref_row)
        return (
            f"{first[0].upper()}{first[1:]}; {said('candidate', cand_param, cand_row)} "
            f"(nn.Embedding(padding_idx=...), a model config's pad_token_id)."
        )
    if ref_row == cand_row is not None and {ref_kind, cand_kind} == {"torch", "paddle"}:
        return (
            f"Both embeddings pad row {ref_row}, in their frameworks' conventions: torch's "
            f"nn.Embedding(padding_idx) returns the row itself (zero at init; a tied output head "
            f"trains it), Paddle's outputs zeros for that id whatever the row holds. They part "
            f"once the row is no longer zero."
        )
    return None


def _embedding_padding(ctx: HintContext, side: str) -> tuple[str, int | None, str | None] | None:
    """At the divergence on one side, an embedding lookup: its parameter, the padding row its
    gradient skips and whose convention ("torch": marked by the exporter, "paddle": the weight
    multiplied by a 0/1 mask with one zero row), or no row; None when the divergence is not at
    an embedding."""
    graph = ctx.ref if side == "ref" else ctx.cand
    name = ctx.divergence.reference_node if side == "ref" else ctx.divergence.candidate_node
    params = graph.meta.params
    producers = {o: n for n in graph.model.graph.node for o in n.output}
    lookups: dict[str, tuple[int | None, str | None]] = {}
    for node in graph.model.graph.node:
        if node.op_type != "Gather" or not node.input:
            continue
        data, mark = node.input[0], node_meta(node, PADDING_IDX_KEY)
        if data in params:
            lookups[data] = (int(mark), "torch") if mark is not None else (None, None)
            continue
        masked = _masked_rows(producers.get(data), params, ctx.constants(graph))
        if masked is not None:
            lookups[masked[0]] = (masked[1], "paddle")
    node = ctx.node(side)
    if name and name.startswith("grad:"):
        param = name[len("grad:"):]
    elif node is not None and node.op_type == "Gather":
        producer = producers.get(node.input[0])
        param = node.input[0] if producer is None else producer.input[0]
    else:
        return None
    for primary, info in params.items():  # a tied weight: the lookup may read an alias
        if param in (primary, *info.aliases):
            param = primary
    return (param, *lookups[param]) if param in lookups else None


def _masked_rows(
    node: onnx.NodeProto | None, params: Mapping[str, Any], consts: Mapping[str, np.ndarray]
) -> tuple[str, int] | None:
    """``Mul(param, mask)`` with a 0/1 mask whose only zero row is k: (param, k)."""
    if node is None or node.op_type != "Mul" or node.input[0] not in params:
        return None
    mask = consts.get(node.input[1])
    if mask is None or mask.ndim != 2 or not np.isin(mask, (0, 1)).all():
        return None
    zero = np.flatnonzero(~mask.any(axis=1))
    return (node.input[0], int(zero[0])) if len(zero) == 1 and mask[np.arange(len(mask)) != zero[0]].all() else None


@hint
def kv_head_repetition(ctx: HintContext) -> str | None:
    """Grouped-query attention's key/value heads repeated in another order: interleaved (each kv
    head g times in a row: Hugging Face's repeat_kv, repeat_interleave) on one side, tiled (all
    kv heads, g times over: tile) on the other."""
    kinds = [_repetition(ctx, side) for side in ("ref", "cand")]
    if None in kinds or kinds[0] == kinds[1]:
        return None
    word = {"interleave": "interleaves them (each kv head repeated in a row: repeat_kv, "
                          "repeat_interleave)",
            "tile": "tiles them (all kv heads, repeated as a block: tile)"}
    return (
        f"Grouped-query attention repeats the key/value heads in another order: the reference "
        f"{word[kinds[0]]}, the candidate {word[kinds[1]]}; query head i must meet kv head i // g."
    )


def _repetition(ctx: HintContext, side: str) -> str | None:
    """"interleave" or "tile": how the diverging node repeats along the heads axis (1) of a
    4-D [batch, heads, tokens, dim] tensor (Tile, or Expand of a new axis 2 merged back by a
    Reshape); None when it is no such repetition."""
    node = ctx.node(side)
    if node is None or node.op_type not in ("Tile", "Expand"):
        return None
    graph = ctx.ref if side == "ref" else ctx.cand
    counts = ctx.constants(graph).get(node.input[1])
    if counts is None:
        return None
    counts = [int(c) for c in np.ravel(counts)]
    if node.op_type == "Tile":
        return "tile" if len(counts) == 4 and counts[1] > 1 and counts.count(1) == 3 else None
    # Unsqueeze(axis 2) [b, kv, 1, t, d] -> Expand [b, kv, g, t, d] -> Reshape [b, kv * g, t, d]
    nodes = graph.model.graph.node
    producer = next((n for n in nodes if node.input[0] in n.output), None)
    if len(counts) != 5 or counts[2] <= 1 or producer is None or producer.op_type != "Unsqueeze":
        return None
    axes = _attributes(producer).get("axes")
    if axes is None and len(producer.input) > 1:
        axes = ctx.constants(graph).get(producer.input[1])
    if axes is None or [int(a) for a in np.ravel(axes)] != [2]:
        return None
    value = node.output[0]
    while True:
        readers = [n for n in nodes if value in n.input]
        if len(readers) != 1 or readers[0].op_type != "Identity":
            break
        value = readers[0].output[0]
    return "interleave" if len(readers) == 1 and readers[0].op_type == "Reshape" else None


@hint
def attention_heads(ctx: HintContext) -> str | None:
    """Another head count: each side's attention scores (a MatMul whose product a softmax
    reads) contract one head size, the last axis of the queries, and the two differ; said
    only where the divergence is near such scores (``_NEAR`` nodes either way)."""
    if ctx.divergence.phase != "forward":
        return None
    sizes = []
    for graph, side in ((ctx.ref, "ref"), (ctx.cand, "cand")):
        types, consumers = ctx.types(graph), ctx.consumers(graph)
        scores = {
            id(n): types[n.input[0]].shape[-1] for n in graph.model.graph.node
            if n.op_type == "MatMul" and n.input[0] in types and types[n.input[0]].shape
            and _feeds_softmax(n, consumers)
        }
        sizes.append(set(scores.values()))
        if side == "ref" and not _near(ctx, side, lambda n, scores=scores: id(n) in scores):
            return None
    if len(sizes[0]) != 1 or len(sizes[1]) != 1 or sizes[0] == sizes[1]:
        return None
    (ref,), (cand,) = sizes
    return (
        f"Attention heads differ in {ctx.divergence.scope or 'the attention'}: the reference's "
        f"scores contract heads of {ref} features, the candidate's heads of {cand} (num_heads, "
        f"nhead, num_attention_heads, head_dim)."
    )


def _readers(
    values: set[str], depth: int, consumers: Mapping[str, list[onnx.NodeProto]]
) -> list[onnx.NodeProto]:
    """The nodes reading ``values``, and theirs, up to ``depth`` consumers on, nearest first."""
    found: dict[int, onnx.NodeProto] = {}
    for _ in range(depth):
        readers = [n for v in values for n in consumers.get(v, ()) if id(n) not in found]
        found.update((id(n), n) for n in readers)
        values = {o for n in readers for o in n.output}
    return list(found.values())


def _consumers(graph: LossGraph) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers


@hint
def attention_mask(ctx: HintContext) -> str | None:
    """An attention mask that leaves out other positions on each side: read off the constant
    masks added to (or selected into) the scores upstream of the diverging node. The classic
    port bug is a boolean mask passed on unchanged: torch's attn_mask marks the positions to
    leave out (True = masked), Paddle's MultiHeadAttention the positions to attend to."""
    if ctx.divergence.phase != "forward" or ctx.node("ref") is None or ctx.node("cand") is None:
        return None
    ref, cand = (_blocked_positions(ctx, side) for side in ("ref", "cand"))
    if ref is None and cand is None:
        return None
    if ref is not None and cand is not None:
        if ref.shape != cand.shape or np.array_equal(ref, cand):
            return None
        if np.array_equal(ref, ~cand):
            return (
                f"Attention mask inverted: the candidate leaves out exactly the positions the "
                f"reference attends to ({int(ref.sum())} of {ref.size} masked in the reference). "
                f"A boolean attn_mask means 'leave out' in torch (True = masked) and 'attend' in "
                f"Paddle's MultiHeadAttention (True = keep): invert it in the port."
            )
        return (
            f"Attention masks differ: the reference leaves out {int(ref.sum())} of {ref.size} "
            f"positions, the candidate {int(cand.sum())}, {int((ref != cand).sum())} of them "
            f"other ones (causal vs padding mask, an off-by-one diagonal, or a mask's convention)."
        )
    side, other, mask = ("reference", "candidate", ref) if ref is not None else ("candidate", "reference", cand)
    graph, node = (ctx.cand, ctx.node("cand")) if ref is not None else (ctx.ref, ctx.node("ref"))
    if _scores_combined(graph, node, ctx.consumers(graph)):
        return None  # the other side adds or selects something into its scores: unsure
    return (
        f"Attention mask on one side only: the {side} leaves out {int(mask.sum())} of {mask.size} "
        f"score positions before the softmax, the {other} none (a causal or padding mask the "
        f"port does not pass, or is_causal on one side)."
    )


#: How many producers back from the diverging node an attention mask is looked for.
_MASK_DEPTH = 10
#: Additive mask entries at or below this leave their position out of a softmax.
_MASKED = -1e4


def _scores_combined(graph: LossGraph, node: onnx.NodeProto, consumers: Mapping[str, list[onnx.NodeProto]]) -> bool:
    """Whether, upstream of ``node``, something is added to or selected into attention scores
    (an Add or Where after a MatMul whose product a softmax reads): a mask, maybe one too large
    to fold or computed from the inputs."""
    nodes = _ancestors(graph, node, _MASK_DEPTH)
    after = set()
    for matmul in (n for n in nodes if n.op_type == "MatMul" and _feeds_softmax(n, consumers, 4)):
        after.update(id(n) for n in _readers(set(matmul.output), 4, consumers))
    return any(n.op_type in ("Add", "Where") and id(n) in after for n in nodes) or any(
        n.op_type == "Where" for n in nodes)


def _blocked_positions(ctx: HintContext, side: str) -> np.ndarray | None:
    """The score positions (2-D, axes of 1 dropped) a constant mask leaves out upstream of the
    diverging node, if a softmax follows it: an additive mask (-inf or a large negative entry),
    or a Where choosing such a constant. None when there is no such mask."""
    graph = ctx.ref if side == "ref" else ctx.cand
    nodes = _ancestors(graph, ctx.node(side), _MASK_DEPTH)
    consumers = ctx.consumers(graph)
    if not any(_is_softmax(n, consumers) for n in nodes) and not _feeds_softmax(ctx.node(side), consumers):
        return None
    constants = ctx.constants(graph)
    for node in nodes:
        values = [constants.get(i) for i in node.input]
        blocked = None
        if node.op_type == "Add":
            floats = [v for v in values if v is not None and np.ndim(v) >= 2 and np.asarray(v).dtype.kind == "f"]
            if len(floats) == 1 and len(values) == 2 and None in values:
                blocked = np.asarray(floats[0]) <= _MASKED
        elif node.op_type == "Where" and len(values) == 3 and values[0] is not None:
            cond = np.asarray(values[0], bool)
            low = [v is not None and np.size(v) == 1 and float(np.ravel(v)[0]) <= _MASKED for v in values[1:]]
            if low == [True, False]:
                blocked = cond
            elif low == [False, True]:
                blocked = ~cond
        if blocked is not None and blocked.any():
            blocked = np.squeeze(blocked)
            return blocked if blocked.ndim == 2 else None
    return None


def _feeds_softmax(node: onnx.NodeProto | None, consumers: Mapping[str, list[onnx.NodeProto]],
                   depth: int = 3) -> bool:
    """Whether a softmax reads ``node``'s output within ``depth`` consumers."""
    return node is not None and any(_is_softmax(n, consumers) for n in _readers(set(node.output), depth, consumers))


def _is_softmax(node: onnx.NodeProto, consumers: Mapping[str, list[onnx.NodeProto]]) -> bool:
    """A Softmax, or a decomposed one: an Exp whose output is summed."""
    return node.op_type == "Softmax" or node.op_type == "Exp" and any(
        r.op_type == "ReduceSum" for r in _readers(set(node.output), 2, consumers))


@hint
def lstm_gate_order(ctx: HintContext) -> str | None:
    """An LSTM port that reads its gates in another order: the cell candidate (the gate under
    tanh) comes from another block of the gate rows on each side. Only that gate is told apart
    (input, forget and output gates all take a sigmoid). Said only where the divergence is in
    the forward pass near a gate split."""
    if ctx.divergence.phase != "forward" or not _near(ctx, "ref", _is_gate_split, _GATES_NEAR):
        return None
    blocks = [_cell_candidate_blocks(ctx, graph) for graph in (ctx.ref, ctx.cand)]
    if not blocks[0] or not blocks[1] or blocks[0] == blocks[1] or len(blocks[0]) != 1:
        return None
    (ref,), cand = blocks[0], sorted(blocks[1] - blocks[0])
    if not cand:
        return None
    return (
        f"LSTM gate order differs: the reference computes the cell candidate (the tanh gate) "
        f"from block {ref} of the 4 gate blocks (i, f, g, o: torch's and Paddle's order of the "
        f"weights' rows), the candidate from block {', '.join(map(str, cand))} (counting from 0): "
        f"the port splits the gates in another order."
    )


#: How many nodes either way of the diverging node a whole-graph hint looks for its subject
#: (attention scores; an LSTM's gate split, whose unrolled steps run long).
_NEAR = 24
_GATES_NEAR = 40


def _near(ctx: HintContext, side: str, subject, depth: int = _NEAR) -> bool:
    """Whether a node ``subject`` holds for is among the diverging node's producers or readers,
    ``depth`` nodes either way."""
    graph = ctx.ref if side == "ref" else ctx.cand
    node = ctx.node(side)
    if node is None:
        return False
    return any(subject(n) for n in _ancestors(graph, node, depth) + _readers(set(node.output), depth, ctx.consumers(graph)))


def _is_gate_split(node: onnx.NodeProto) -> bool:
    return node_meta(node, LSTM_CELL_GATE_KEY) is not None or (
        node.op_type == "Split" and len(node.output) == 4)


def _cell_candidate_blocks(ctx: HintContext, graph: LossGraph) -> set[int]:
    """The gate block an LSTM's tanh gate is read from, for each LSTM of the graph: unrolled
    ONNX LSTMs say it (``LSTM_CELL_GATE_KEY``); a cell written out splits its gates into four
    blocks along the last axis, three of which reach a sigmoid and one a tanh."""
    found = {int(v) for n in graph.model.graph.node if (v := node_meta(n, LSTM_CELL_GATE_KEY))}
    consumers = ctx.consumers(graph)
    for node in graph.model.graph.node:
        if node.op_type != "Split" or len(node.output) != 4:
            continue
        kinds = []
        for value in node.output:
            reached = [n.op_type for n in _readers({value}, 3, consumers) if n.op_type in ("Sigmoid", "Tanh")]
            kinds.append(reached[0] if reached else None)
        if sorted(kinds, key=str) == ["Sigmoid", "Sigmoid", "Sigmoid", "Tanh"]:
            found.add(kinds.index("Tanh"))
    return found


def _custom_backwards(graph: LossGraph) -> dict[str, str]:
    """The carried custom backward passes of a graph: their node's name -> label."""
    return {
        node.name: vjp.label for node in graph.model.graph.node
        if (vjp := CustomVjp.of(node)) is not None
    }


# --- update -----------------------------------------------------------------------------------


@hint
def batch_norm_running_stats(ctx: HintContext) -> str | None:
    """Running statistics updated with the other framework's momentum or variance convention."""
    if ctx.divergence.op_type != "running statistics" or "ref_before" not in ctx.values:
        return None
    weights = [_batch_weight(graph, ctx.divergence.scope) for graph in (ctx.ref, ctx.cand)]
    if None not in weights and abs(weights[0][0] - weights[1][0]) > 1e-6:
        (ref_weight, ref_said), (cand_weight, cand_said) = weights
        return (f"BatchNorm momentum convention at {ctx.divergence.scope}: the reference's running statistics "
                f"take {ref_weight:g} of each batch ({ref_said}), the candidate's {cand_weight:g} "
                f"({cand_said}). " + BY_KEY["batch_norm_momentum"].sentence())
    before = np.asarray(ctx.values["ref_before"], np.float64)
    ref_step = np.asarray(ctx.values["ref_after"], np.float64) - before
    cand_step = np.asarray(ctx.values["cand_after"], np.float64) - before
    mask = np.abs(ref_step) > 1e-6 * max(1.0, float(np.abs(before).max()))
    if not mask.any():
        return None
    ratio = float(np.median(cand_step[mask] / ref_step[mask]))
    name = ctx.divergence.scope
    for m in (0.1, 0.01, 0.001):
        if abs(ratio - (1 - m) / m) < 0.05 * (1 - m) / m or abs(ratio - m / (1 - m)) < 0.05 * m / (1 - m):
            return (
                f"BatchNorm momentum convention at {name}: torch's momentum m is Paddle's 1 - m "
                f"(torch 0.1 = Paddle 0.9); the running statistics move {ratio:.3g} times as far."
            )
    # (torch's unbiased vs Paddle's biased running variance is no hint: steps compare it in
    # the candidate's convention, see verify/steps.py)
    return None


def _batch_weight(graph: LossGraph, module: str) -> tuple[float, str] | None:
    """The weight of each batch in a BatchNorm's running statistics (torch's momentum m, Paddle's
    1 - m), and the argument as written; None where the metadata does not say."""
    entry = next((e for e in graph.meta.batch_norm.values() if e.get("module") == module), None)
    momentum = entry.get("momentum") if entry else None
    if momentum is None:
        return None
    if graph.framework == "paddle":
        return 1.0 - float(momentum), f"Paddle momentum={momentum:g}"
    return float(momentum), f"torch momentum={momentum:g}"


def _semantic_hyper(info: OptimizerInfo) -> dict[str, Any]:
    """An optimizer's settings in one vocabulary, whichever framework recorded them."""
    group = info.groups[0] if info.groups else {}
    betas = group.get("betas") or [group.get("beta1"), group.get("beta2")]
    decay = group.get("weight_decay")
    if isinstance(decay, dict):
        decay = next(iter(decay.values()))
    decoupled = info.cls in ("AdamW",)
    if info.cls == "AdamW" and info.framework == "paddle":
        decay = group.get("coeff", decay)
    return {
        "class": _optimizer_class(info, group),
        "lr": group.get("lr", group.get("learning_rate")),
        "betas": [float(b) for b in betas if b is not None] or None,
        "epsilon": group.get("eps", group.get("epsilon")),
        "weight_decay": float(decay or 0.0),
        "decoupled decay": decoupled,
        "momentum": group.get("momentum"),
        "nesterov": group.get("nesterov", group.get("use_nesterov")),
    }


def _optimizer_class(info: OptimizerInfo, group: dict[str, Any]) -> str:
    """The update rule's name: torch's SGD with momentum and Paddle's Momentum are both
    "SGD+momentum", either without momentum (0) plain "SGD"."""
    if info.cls in ("SGD", "Momentum"):
        return "SGD+momentum" if group.get("momentum") else "SGD"
    return info.cls


@hint
def weight_decay_reach(ctx: HintContext) -> str | None:
    """The parameter that parts in an update is decayed on one side and not on the other (a
    no-decay list for biases and norm weights on one side only: torch's parameter group with
    ``weight_decay=0``, Paddle's ``apply_decay_param_fun``), or with another coefficient."""
    if ctx.divergence.phase != "update" or "param_map" not in ctx.values:
        return None
    param = ctx.divergence.reference_node.partition(":")[0]
    pair = ctx.values["param_map"].by_reference().get(param)
    if pair is None or pair.parts:
        return None
    for _, info, other in _optimizer_pairs(ctx):
        if param not in info.params or pair.candidate not in other.params:
            continue
        a, b = _decay_of(info, param), _decay_of(other, pair.candidate)
        if a == b:
            continue
        if a and b:
            return f"The weight decay of {param} differs: {a:g} (reference) vs {b:g} (candidate)."
        side, other_side = ("reference", "candidate") if a else ("candidate", "reference")
        return (
            f"Weight decay reaches {param} in the {side} ({a or b:g}) and not in the {other_side}: a "
            f"no-decay list (biases, norm weights) on one side only (torch: a parameter group with "
            f"weight_decay=0; Paddle: apply_decay_param_fun, or a group's weight_decay)."
        )
    return None


def _decay_of(info: OptimizerInfo, param: str) -> float:
    """The weight-decay coefficient an optimizer applies to ``param`` (0: none)."""
    group = next((g for g in info.groups if param in g.get("params", [])), {})
    if info.framework == "paddle" and info.cls == "AdamW":
        decayed = "decay_params" not in group or param in group["decay_params"]
        return float(group.get("coeff") or 0.0) if decayed else 0.0
    decay = group.get("param_weight_decay", {}).get(param, group.get("weight_decay"))
    if isinstance(decay, dict):
        decay = next(iter(decay.values()), 0.0)
    return float(decay or 0.0)


def _optimizer_pairs(ctx: HintContext) -> list[tuple[str, OptimizerInfo, OptimizerInfo]]:
    """The optimizers both sides have, by name: (name, reference's, candidate's)."""
    cand = ctx.cand.meta.optimizers
    return [(name, info, cand[name]) for name, info in ctx.ref.meta.optimizers.items() if name in cand]


@hint
def optimizer_settings(ctx: HintContext) -> str | None:
    if ctx.divergence.phase != "update":
        return None
    diffs = []
    for name, info, other in _optimizer_pairs(ctx):
        a, b = _semantic_hyper(info), _semantic_hyper(other)
        for key in a:
            if a[key] != b[key] and not (a[key] is None or b[key] is None):
                diffs.append(f"{name} {key}: {a[key]} vs {b[key]}")
    if not diffs:
        return None
    text = "Optimizer settings differ (reference vs candidate): " + "; ".join(diffs) + "."
    if any("decoupled" in d or "weight_decay" in d for d in diffs):
        text += (
            " Adam's weight_decay (torch) and L2Decay (Paddle) add decay to the gradient; AdamW "
            "decays the weights directly; torch defaults to 0, Paddle's weight_decay=None."
        )
    if any("epsilon" in d for d in diffs):
        text += " Paddle's Adam also scales epsilon by sqrt(1 - beta2^t)."
    return text


@hint
def gradient_clipping(ctx: HintContext) -> str | None:
    """An optimizer whose gradients the two sides clip otherwise (threshold, global norm vs each
    gradient's own, by value vs by norm, one side not at all, or only torch's 1e-6 where it
    matters), said only when the clipping changed the gradients at the diverging step on at
    least one side (``values["ref_clip"]``/``["cand_clip"]``: what each stage measured)."""
    from lossgraph.optim.clip import describe_clip

    if ctx.divergence.phase != "update" or "ref_clip" not in ctx.values:
        return None
    measured = (ctx.values["ref_clip"], ctx.values["cand_clip"])
    if not any(_clip_engaged(text, value) for side in measured for text, value in side.items()):
        return None
    diffs = []
    for name, info, other in _optimizer_pairs(ctx):
        sides = [(opt, [_clip_semantics(opt, s) for s in opt.clip]) for opt in (info, other)]
        (a, sem_a), (b, sem_b) = sides
        if sem_a == sem_b:
            continue
        if [x[:-1] for x in sem_a] == [x[:-1] for x in sem_b] and not _epsilon_explains(*measured):
            continue  # only the epsilon differs, and it does not make the difference measured
        shown = ["; ".join(describe_clip(s) for s in opt.clip) or f"the {side} does not clip"
                 for opt, side in ((a, "reference"), (b, "candidate"))]
        diffs.append(f"{name}: {shown[0]} vs {shown[1]}")
    if not diffs:
        return None
    done = []
    for side, values in zip(("reference", "candidate"), measured):
        words = [_clip_effect(text, value) for text, value in values.items()]
        done.append(f"the {side}'s clipping {', '.join(words)}" if words else f"the {side} clipped nothing")
    return (
        f"Gradient clipping differs (reference vs candidate): {'; '.join(diffs)}. At step "
        f"{ctx.divergence.step} {' and '.join(done)}."
    )


def _clip_semantics(info: OptimizerInfo, stage: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a clip stage computes, comparable across frameworks; the epsilon last."""
    from lossgraph.optim.clip import describe_clip

    # whether it clips every parameter (counts are not comparable: packed and split projections)
    every = set(info.params) <= set(stage.get("params", []))
    return describe_clip(stage, api=False, epsilon=False), every, stage.get("kind") == "global_norm"


def _clip_engaged(text: str, value: float) -> bool:
    return value > 0 if text.startswith("each element") else value < 1


def _epsilon_explains(ref: Mapping[str, float], cand: Mapping[str, float]) -> bool:
    """Whether torch's 1e-6 in the divisor accounts for clip coefficients that differ enough to
    matter: by more than 1e-4 relative (a global norm below about 0.03), and by no more than
    about 1e-6 / norm (the norm read back from the coefficient of the stage that clipped). At
    the norms of most training the epsilon changes the coefficient by less than float32 noise
    does, and is never named as a cause."""
    from lossgraph.optim.clip import NORM_EPSILON

    a, b = list(ref.values()), list(cand.values())
    if len(a) != len(b):
        return False
    for (text, x), y in zip(ref.items(), b):
        limit = re.search(r"<= ([0-9.e+-]+)", text)
        if not text.startswith("global") or limit is None or max(x, y) >= 1 or min(x, y) <= 0:
            continue
        relative = abs(x - y) / max(x, y)
        norm = float(limit.group(1)) / min(x, y)
        if 1e-4 < relative <= 3 * NORM_EPSILON / norm:
            return True
    return False


def _clip_effect(text: str, value: float) -> str:
    if text.startswith("each element"):
        return f"clamped {int(value)} gradient element(s)"
    if text.startswith("each gradient"):
        return f"scaled a gradient by as little as {value:.3g}"
    return f"scaled the gradients by {value:.3g}"


@hint
def ema_settings(ctx: HintContext) -> str | None:
    """The averaged weights part (``<param>:ema``) and the sides' EMAs differ: one side keeps
    none, ``decay`` against ``1 - decay``, another start, interval or style."""
    if ctx.divergence.phase != "update" or not ctx.divergence.reference_node.endswith(":ema"):
        return None
    diffs = []
    for name, info, other in _optimizer_pairs(ctx):
        a, b = info.ema, other.ema
        if a == b:
            continue
        if a is None or b is None:
            side = "reference" if a is None else "candidate"
            diffs.append(f"the {side} keeps no EMA of {name}'s parameters (its weights themselves are "
                         f"compared with the other side's average)")
            continue
        if a["decay"] != b["decay"]:
            swapped = abs(a["decay"] - (1 - b["decay"])) < 1e-9
            diffs.append(f"{name} decay {a['decay']:g} vs {b['decay']:g}"
                         + (": one side passes 1 - decay (the weight of the new value)" if swapped else ""))
        for key, what in (("start", "updates start after optimizer step"), ("every", "updated every")):
            if a.get(key) != b.get(key):
                diffs.append(f"{name} {what} {a.get(key)} vs {b.get(key)}")
        if a.get("style") != b.get("style"):
            diffs.append(f"{name}: {a.get('style')} vs {b.get('style')} (AveragedModel's first update copies "
                         f"the weights; a hand-written average starts as the initial weights)")
    if not diffs:
        return None
    return "The EMAs of the weights differ (reference vs candidate): " + "; ".join(diffs) + "."


@hint
def learning_rate_schedule(ctx: HintContext) -> str | None:
    if "ref_lr" not in ctx.values:
        return None
    a, b = ctx.values["ref_lr"], ctx.values["cand_lr"]
    if np.allclose(a, b, rtol=1e-7, atol=0):
        return None
    return (
        f"The learning rates differ at step {ctx.divergence.step}: {a} vs {b}; a scheduler steps "
        f"at another time (before/after optimizer.step(), per step or per epoch) or has other "
        f"settings."
    )


@hint
def dropout_masks(ctx: HintContext) -> str | None:
    """Matched dropouts with other rates, and dropouts that got no common mask, named on both
    sides (``values["dropout"]``: the verification's DropoutMatch)."""
    from lossgraph.inputs import describe_dropouts

    ref_d, cand_d = ctx.ref.meta.dropout, ctx.cand.meta.dropout
    match = ctx.values.get("dropout")
    if match is None or (not ref_d and not cand_d):
        return None
    rates = [(j, k) for j, k in match.pairs if ref_d[j]["p"] != cand_d[k]["p"]]
    if match.complete and not rates:
        return None
    parts = []
    if rates:
        parts.append("other rates: " + ", ".join(
            f"reference dropout:{j} p {ref_d[j]['p']:g} vs candidate dropout:{k} p {cand_d[k]['p']:g}"
            for j, k in rates
        ))
    if match.unmatched_reference:
        parts.append("no candidate counterpart (same scope and mask shape, size-1 axes aside) for reference "
                     + describe_dropouts(ctx.ref, match.unmatched_reference))
    if match.unmatched_candidate:
        parts.append("no reference counterpart for candidate "
                     + describe_dropouts(ctx.cand, match.unmatched_candidate))
    return (
        f"The graphs' dropouts differ (reference {len(ref_d)}, candidate {len(cand_d)}): "
        + "; ".join(parts)
        + ("; unmatched dropouts get masks of their own." if not match.complete else ".")
    )
