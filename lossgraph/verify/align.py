"""Parameter correspondence between two LossGraphs.

The map pairs each reference parameter/buffer with a candidate one and says how the value is
carried across (``identity`` or ``transpose``). It is built in this order:

1. ``--name-map`` entries: ``{"ref.name": "cand.name"}`` or
   ``{"ref.name": {"name": "cand.name", "transpose": true}}``;
2. equal names, after the known renames between frameworks (BatchNorm ``running_mean`` /
   ``running_var`` <-> ``_mean`` / ``_variance``);
3. structure: what is left is paired in definition order within each kind of layer and attribute
   (``conv2d.weight``, ``batchnorm2d.running_var``, ...), if the counts and shapes agree.

A 2-D weight is carried transposed when the two sides store it in different layouts, decided
never by its shape (square weights are handled too) but by what it is: the weight of a framework
Linear layer, any subclass included, is stored as that framework stores it ([out, in] in torch,
[in, out] in Paddle); any other 2-D parameter (a hand-written linear, an output head, a fused
projection) by how its graph reads it, as the right operand of MatMul/Gemm either as stored
(``x @ W``) or transposed (``x @ W.T``). A framework Linear's weight read the other way round is
a port bug, not a layout, so its declared layout wins.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lossgraph.errors import VerificationError
from lossgraph.graph import LossGraph, ParamInfo


def _transformed(value: np.ndarray, transform: str) -> np.ndarray:
    """``value`` under ``transform``: an involution, so carrying back is the same call."""
    return np.ascontiguousarray(value.T) if transform == "transpose" else value


@dataclass(frozen=True)
class Part:
    """Where one split parameter sits in a packed one: ``rows`` [start, stop) along ``axis`` of
    the packed tensor (torch's ``in_proj_weight`` [3E, E] holds Paddle's ``q_proj``, ``k_proj``
    and ``v_proj`` weights in rows 0:E, E:2E, 2E:3E), and how the slice is carried to the split
    parameter (``transform``)."""

    name: str  # the split parameter
    rows: tuple[int, int]
    transform: str = "identity"
    axis: int = 0

    def take(self, packed: np.ndarray) -> np.ndarray:
        index = [slice(None)] * packed.ndim
        index[self.axis] = slice(*self.rows)
        return packed[tuple(index)]


@dataclass(frozen=True)
class ParamPair:
    """One reference parameter carried to one candidate parameter; or a packed reference
    parameter to the candidate's split ones (``parts``; ``candidate`` then names them all, for
    reading); or a reference parameter to its slice of a packed candidate one (``packed_in``)."""

    reference: str
    candidate: str
    transform: str = "identity"
    how: str = "name"  # "name" (same name), "map" (--name-map), "structure" (automatic alignment),
    # "packed" (a packed parameter against split ones)
    parts: tuple[Part, ...] = ()
    packed_in: Part | None = None
    #: transform "reshape": the reference's shape and the candidate's (a LayerNorm weight
    #: [5, 6] that Paddle stores flat, [30])
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def _to_candidate(self, value: np.ndarray) -> np.ndarray:
        if self.transform == "reshape" and self.shapes is not None:
            return np.reshape(value, self.shapes[1])
        return _transformed(value, self.transform)

    def _to_reference(self, value: np.ndarray) -> np.ndarray:
        if self.transform == "reshape" and self.shapes is not None:
            # per-tensor state (Paddle's beta powers [1]) is left as it is
            return np.reshape(value, self.shapes[0]) if value.size == int(np.prod(self.shapes[0])) else value
        return _transformed(value, self.transform)

    @classmethod
    def split(cls, reference: str, parts: list[Part], how: str = "packed") -> ParamPair:
        """A packed reference parameter against the candidate's split ones."""
        transforms = {p.transform for p in parts}
        transform = transforms.pop() if len(transforms) == 1 else "mixed"
        return cls(reference, " + ".join(p.name for p in parts), transform, how, tuple(parts))

    @classmethod
    def slice_of(cls, reference: str, part: Part, how: str = "packed") -> ParamPair:
        """A reference parameter against its slice of a packed candidate parameter."""
        return cls(reference, part.name, part.transform, how, packed_in=part)

    @property
    def candidates(self) -> list[str]:
        """The candidate parameter(s) this reference parameter is carried to."""
        return [p.name for p in self.parts] if self.parts else [self.candidate]

    def carry_to(
        self, value: np.ndarray, candidate_values: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The reference value as the candidate expects it: candidate name -> value. A slice of
        a packed candidate parameter is written into ``candidate_values``' value of it (copied)."""
        if self.parts:
            return {p.name: _transformed(np.ascontiguousarray(p.take(value)), p.transform)
                    for p in self.parts}
        carried = self._to_candidate(value)
        if self.packed_in is None:
            return {self.candidate: carried}
        packed = np.array((candidate_values or {})[self.candidate])
        self.packed_in.take(packed)[...] = carried
        return {self.candidate: packed}

    def gather(self, values: Mapping[str, Any], like: np.ndarray | None = None) -> np.ndarray | None:
        """A candidate value (a parameter, its gradient, optimizer state) in the reference's layout,
        from ``values`` by candidate name; None where it is absent. ``like``: the reference's
        value, whose slices stand in as zeros for parts absent from ``values`` (no gradient)."""
        if not self.parts:
            value = values.get(self.candidate)
            if value is None:
                return None
            value = np.asarray(value)
            if self.packed_in is not None:
                if value.ndim <= self.packed_in.axis:
                    return None  # per-tensor state (Paddle's beta powers [1]): no slice of it
                value = self.packed_in.take(value)
            return self._to_reference(value)
        pieces = []
        for p in self.parts:
            value = values.get(p.name)
            if value is not None and np.ndim(value) <= p.axis:
                return None  # per-tensor state (Paddle's beta powers [1]): nothing to join
            if value is None:
                if like is None:
                    return None
                pieces.append(np.zeros_like(p.take(like)))
            else:
                pieces.append(_transformed(np.asarray(value), p.transform))
        return np.concatenate(pieces, axis=self.parts[0].axis)


@dataclass
class ParamMap:
    """The parameter correspondence used by a verification, and what it could not pair."""

    pairs: list[ParamPair]
    unmapped_reference: list[str] = field(default_factory=list)
    unmapped_candidate: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)

    def carry(
        self, reference_values: Mapping[str, np.ndarray],
        candidate_values: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Candidate values for every paired parameter, from the reference's values (a packed
        candidate parameter is filled in slice by slice, starting from ``candidate_values``')."""
        out: dict[str, np.ndarray] = {}
        for pair in self.pairs:
            into = out if pair.candidate in out else (candidate_values or {})
            out.update(pair.carry_to(reference_values[pair.reference], into))
        return out

    def by_reference(self) -> dict[str, ParamPair]:
        return {p.reference: p for p in self.pairs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [asdict(p) for p in self.pairs],
            "unmapped_reference": list(self.unmapped_reference),
            "unmapped_candidate": list(self.unmapped_candidate),
            "shape_mismatch": list(self.shape_mismatch),
        }


def load_name_map(path: str | Path) -> dict[str, Any]:
    """Read a ``--name-map`` JSON file (see :func:`normalize_name_map`)."""
    path = Path(path)
    if not path.exists():
        raise VerificationError(f"Name map file {path} does not exist.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VerificationError(f"Name map {path} is not valid JSON: {exc}.") from None
    except RecursionError:
        raise VerificationError(f"Name map {path} is nested too deeply to be a name map.") from None
    except OSError as exc:
        raise VerificationError(f"Name map {path} cannot be read ({type(exc).__name__}).") from None
    return normalize_name_map(data, f"Name map {path}")


NAME_MAP_GRAMMAR = (
    '"cand.name", {"name": ..., "transpose": true|false}, a slice of a packed candidate '
    '{"name": ..., "rows"|"cols": [start, stop]}, or a packed reference as a list of its slices '
    '[{"name": ..., "rows"|"cols": [start, stop]}, ...]'
)


#: what a name-map entry may say
NAME_MAP_KEYS = ("name", "transpose", "rows", "cols")


def normalize_name_map(data: Any, where: str = "Name map") -> dict[str, Any]:
    """A name map as ``{ref: entry}``, each entry ``{"name": cand}`` with optional ``transpose``
    (bool) and ``rows``/``cols`` ([start, stop) of the packed side, along axis 0 or 1), or a list
    of such entries: the reference packed, each entry one slice of it and the candidate
    parameter holding it. Raises VerificationError, naming the entry, on anything else."""
    if not isinstance(data, Mapping):
        raise VerificationError(f"{where} must be a JSON object of reference -> candidate names.")
    out: dict[str, Any] = {}
    for ref, entry in data.items():
        if isinstance(entry, list) and entry:
            out[ref] = [_name_map_entry(e, ref, where, sliced=True) for e in entry]
        else:
            out[ref] = _name_map_entry(entry, ref, where, sliced=False)
    return out


def _name_map_entry(entry: Any, ref: str, where: str, sliced: bool) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)):
        raise VerificationError(f"{where}: entry {ref!r} must be {NAME_MAP_GRAMMAR}; got {entry!r}.")
    entry = dict(entry)
    unknown = [key for key in entry if key not in NAME_MAP_KEYS]
    if unknown:  # a typo ("tranpose") must not be ignored silently
        raise VerificationError(
            f"{where}: entry {ref!r} has key {unknown[0]!r}, which a name map does not take "
            f"(keys: {', '.join(NAME_MAP_KEYS)})."
        )
    if not isinstance(entry.get("transpose", False), bool):
        raise VerificationError(f"{where}: 'transpose' of {ref!r} must be true or false.")
    ranges = [key for key in ("rows", "cols") if key in entry]
    if len(ranges) > 1 or (sliced and not ranges):
        raise VerificationError(
            f"{where}: each slice of {ref!r} needs exactly one of 'rows' or 'cols' ([start, stop]); "
            f"got {entry!r}."
        )
    if ranges:
        value = entry.pop(ranges[0])
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and 0 <= value[0] < value[1]):
            raise VerificationError(
                f"{where}: '{ranges[0]}' of {ref!r} must be [start, stop] with 0 <= start < stop; "
                f"got {value!r}."
            )
        entry["rows"], entry["axis"] = tuple(value), 0 if ranges[0] == "rows" else 1
    return entry


def build_param_map(
    reference: LossGraph,
    candidate: LossGraph,
    name_map: Mapping[str, Mapping[str, Any]] | None = None,
    allow_unmapped: bool = False,
) -> ParamMap:
    """Pair the parameters of two graphs (name map, equal names, structure). Raises VerificationError on unpaired or
    shape-mismatched parameters unless ``allow_unmapped``, and always when nothing is shared."""
    ref_params = reference.meta.params
    cand_params = candidate.meta.params
    layouts = Layouts(reference, candidate)
    pairs: list[ParamPair] = []
    for ref_name, entry in (name_map or {}).items():
        pairs.append(_mapped_pair(reference, candidate, layouts, ref_name, entry))
    taken_ref = {p.reference for p in pairs}
    taken_cand = {c for p in pairs for c in p.candidates}
    cand_by_key: dict[str, str] = {}
    for n, p in cand_params.items():  # a tied tensor is found by any of its names, its own first
        if n not in taken_cand:
            cand_by_key[canonical_name(n, p)] = n
    for n, p in cand_params.items():
        if n not in taken_cand:
            for alias in p.aliases:
                cand_by_key.setdefault(alias_key(alias), n)
    for name, info in ref_params.items():
        keys = [canonical_name(name, info), *map(alias_key, info.aliases)]
        other = next((cand_by_key[k] for k in keys if k in cand_by_key), None)
        if name in taken_ref or other is None or other in taken_cand:
            continue
        pairs.append(ParamPair(name, other, layouts.transform(name, other), "name"))
        taken_ref.add(name)
        taken_cand.add(other)
    packed = _pair_packed(reference, candidate, taken_ref, taken_cand, layouts)
    taken_ref.update(p.reference for p in packed)
    taken_cand.update(c for p in packed for c in p.candidates)
    pairs.extend(packed)
    pairs.extend(_pair_by_structure(reference, candidate, taken_ref, taken_cand, layouts))
    return _checked_map(reference, candidate, pairs, allow_unmapped)


def _mapped_pair(
    reference: LossGraph, candidate: LossGraph, layouts: Layouts, ref_name: str, entry: Any
) -> ParamPair:
    """The pair one ``--name-map`` entry asks for (normalized by :func:`normalize_name_map`)."""
    ref_params, cand_params = reference.meta.params, candidate.meta.params
    ref_name = primary_name(ref_params, ref_name)
    if ref_name not in ref_params:
        raise VerificationError(
            f"Name map entry {ref_name!r} is not a parameter of the reference graph "
            f"({reference.path or 'reference'})."
        )
    parts = []
    for item in entry if isinstance(entry, list) else [entry]:
        name = primary_name(cand_params, item["name"])
        if name not in cand_params:
            raise VerificationError(
                f"Name map maps {ref_name!r} to {item['name']!r}, which is not a parameter of the "
                f"candidate graph ({candidate.path or 'candidate'})."
            )
        if "transpose" in item:
            transform = "transpose" if item["transpose"] else "identity"
        else:
            transform = layouts.transform(ref_name, name)
        parts.append(Part(name, tuple(item.get("rows", (0, 0))), transform, item.get("axis", 0)))
        if "rows" in item and not isinstance(entry, list):  # a slice of the packed candidate
            _check_slice(name, cand_params[name].shape, item, "candidate")
    if isinstance(entry, list):
        shape = ref_params[ref_name].shape
        for item in entry:
            _check_slice(ref_name, shape, item, "reference")
        axis = entry[0]["axis"]
        covered = sorted(item["rows"] for item in entry)
        ends = [0] + [stop for _, stop in covered]
        if any(item["axis"] != axis for item in entry) or [start for start, _ in covered] != ends[:-1] \
                or ends[-1] != shape[axis]:
            raise VerificationError(
                f"Name map: the slices of {ref_name!r} ({', '.join(f'{a}-{b}' for a, b in covered)} along "
                f"axis {axis}) must cover its {shape[axis]} {'rows' if axis == 0 else 'columns'} once each, "
                f"without gaps or overlaps."
            )
        return ParamPair.split(ref_name, parts, "map")
    if "rows" in entry:
        return ParamPair.slice_of(ref_name, parts[0], "map")
    return ParamPair(ref_name, parts[0].name, parts[0].transform, "map")


def _check_slice(name: str, shape: list[int], item: Mapping[str, Any], side: str) -> None:
    """A ``rows``/``cols`` slice lies inside the packed parameter it slices."""
    axis, (start, stop) = item["axis"], item["rows"]
    what = "rows" if axis == 0 else "cols"
    if axis >= len(shape):
        raise VerificationError(
            f"Name map: {what!r} slices axis {axis} of the {side}'s {name!r}, which has shape {list(shape)}."
        )
    if stop > shape[axis]:
        raise VerificationError(
            f"Name map: {what!r} [{start}, {stop}] runs past the {side}'s {name!r}, which has "
            f"{shape[axis]} along axis {axis} (shape {list(shape)})."
        )


#: Attribute spellings that mean the same thing in torch and Paddle.
ATTRIBUTE_ALIASES = {"_mean": "running_mean", "_variance": "running_var"}
#: Parameter names of one layer kind that differ between the frameworks, Paddle -> torch.
LAYER_ATTRIBUTE_ALIASES = {
    "prelu": {"_weight": "weight"},
    **{f"instancenorm{d}d": {"scale": "weight"} for d in (1, 2, 3)},
}
#: Layer class names that differ between the frameworks, lower-cased, Paddle -> torch.
LAYER_ALIASES = {
    "conv1dtranspose": "convtranspose1d",
    "conv2dtranspose": "convtranspose2d",
    "conv3dtranspose": "convtranspose3d",
    "batchnorm": "batchnorm2d",
}
#: torch MultiheadAttention's projection weights: packed, or separate where kdim/vdim differ
#: from embed_dim (Paddle's MultiHeadAttention has q_proj, k_proj, v_proj Linear layers).
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: Buffers only one framework has (no counterpart to pair with, nothing to report).
FRAMEWORK_ONLY_ATTRIBUTES = ("num_batches_tracked",)
#: How each framework stores the weight of its Linear layer (``out_in``: [out, in], read as
#: ``x @ W.T``; ``in_out``: [in, out], read as ``x @ W``).
LINEAR_LAYOUT = {"torch": "out_in", "paddle": "in_out"}
#: A Linear's weight, and the weight as spectral and weight norm keep it, which has its layout.
LINEAR_WEIGHTS = ("weight", "weight_orig", "weight_v")
#: Ops a weight passes through unchanged on its way to a product.
_PASS_THROUGH = ("Identity", "Cast")


def canonical_layer(info: ParamInfo) -> str:
    """The layer kind, lower-cased: the framework class the owning layer is or derives from
    (``NonDynamicallyQuantizableLinear`` -> ``linear``), else its own class name."""
    name = (info.base_type or info.layer_type).lower()
    return LAYER_ALIASES.get(name, name)


def canonical_attribute(info: ParamInfo, name: str) -> str:
    attribute = info.attribute or name.rpartition(".")[2]
    if canonical_layer(info) == "multiheadattention" and attribute in MHA_WEIGHTS[1:]:
        return attribute.replace("_weight", ".weight")  # q_proj_weight: Paddle's q_proj.weight
    attribute = LAYER_ATTRIBUTE_ALIASES.get(canonical_layer(info), {}).get(attribute, attribute)
    return ATTRIBUTE_ALIASES.get(attribute, attribute)


def canonical_name(name: str, info: ParamInfo) -> str:
    """The name with the framework-specific attribute spelling replaced (``bn._mean`` ->
    ``bn.running_mean``)."""
    module = info.module if info.attribute else name.rpartition(".")[0]
    attribute = canonical_attribute(info, name)
    return f"{module}.{attribute}" if module else attribute


def primary_name(params: Mapping[str, ParamInfo], name: str) -> str:
    """The name a tied tensor is listed under, for any of its names (others unchanged)."""
    if name in params:
        return name
    return next((n for n, info in params.items() if name in info.aliases), name)


def alias_key(name: str) -> str:
    """The canonical name of a tied tensor's other name (no ParamInfo of its own)."""
    module, _, attribute = name.rpartition(".")
    attribute = ATTRIBUTE_ALIASES.get(attribute, attribute)
    return f"{module}.{attribute}" if module else attribute


def read_layouts(graph: LossGraph) -> dict[str, str]:
    """How each 2-D parameter is read by the products it feeds: ``in_out`` when it is the right
    operand of MatMul/Gemm as stored (``x @ W``), ``out_in`` when transposed first (a Transpose,
    Gemm's ``transB``). Parameters read both ways, only as a left operand, or by no product are
    left out: their layout is not known."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    layouts = {}
    for name, info in graph.meta.params.items():
        if len(info.shape) != 2:
            continue
        found: set[str] = set()
        stack = [(name, False)]
        while stack:
            value, flipped = stack.pop()
            for node, index in consumers.get(value, []):
                if node.op_type in _PASS_THROUGH:
                    stack.append((node.output[0], flipped))
                elif node.op_type == "Transpose" and _swaps_2d(node):
                    stack.append((node.output[0], not flipped))
                elif node.op_type in ("MatMul", "Gemm") and index == 1:
                    flipped ^= node.op_type == "Gemm" and _int_attr(node, "transB") == 1
                    found.add("out_in" if flipped else "in_out")
                elif node.op_type in ("MatMul", "Gemm"):
                    found.add("left")
        if len(found) == 1 and "left" not in found:
            layouts[name] = found.pop()
    return layouts


def _int_attr(node: onnx.NodeProto, name: str) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), 0)


def _swaps_2d(node: onnx.NodeProto) -> bool:
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm in (None, [1, 0])


class Layouts:
    """Each side's 2-D parameters' storage layouts, and the transform carrying one to the other."""

    def __init__(self, reference: LossGraph, candidate: LossGraph) -> None:
        self.sides = tuple(
            (graph.meta.params, graph.framework, read_layouts(graph)) for graph in (reference, candidate)
        )

    def layout(self, side: int, name: str) -> str | None:
        params, framework, read = self.sides[side]
        info = params[name]
        if len(info.shape) != 2:
            return None
        if canonical_layer(info) == "linear" and info.attribute in LINEAR_WEIGHTS:
            return LINEAR_LAYOUT.get(framework)
        if canonical_layer(info) == "multiheadattention" and info.attribute in MHA_WEIGHTS:
            return "out_in"  # torch's packed (or, with kdim/vdim, separate) projections: F.linear
        return read.get(name)

    def transform(self, reference: str, candidate: str) -> str:
        """``transpose`` when both layouts are known and differ, else ``identity``."""
        ref, cand = self.layout(0, reference), self.layout(1, candidate)
        return "transpose" if ref and cand and ref != cand else "identity"


#: Packed parameters whose split counterparts no name rule finds: torch MultiheadAttention's
#: ``in_proj`` is Paddle MultiHeadAttention's ``q_proj``, ``k_proj``, ``v_proj``.
SPLIT_NAMES = {"in_proj": ("q_proj", "k_proj", "v_proj")}


def _pair_packed(
    reference: LossGraph, candidate: LossGraph, taken_ref: set[str], taken_cand: set[str],
    layouts: Layouts,
) -> list[ParamPair]:
    """Packed parameters against split ones, either way round: torch MultiheadAttention's
    ``in_proj_weight`` [3E, E] against Paddle's ``q_proj``/``k_proj``/``v_proj`` weights, and a
    fused projection against split ones of the same module (``qkv_proj`` against ``q_proj``,
    ``k_proj``, ``v_proj``; ``gate_up_proj`` against ``gate_proj``, ``up_proj``). The packed
    tensor is split along its output axis, in the order its name gives, each slice carried to its
    parameter with the transposition the two layouts need."""
    sides = ((reference, taken_ref), (candidate, taken_cand))
    pairs: list[ParamPair] = []
    for packed_side in (0, 1):
        pairs += _PackedPairing(sides[packed_side], sides[1 - packed_side], packed_side, layouts).run()
    return pairs


class _PackedPairing:
    """One direction of :func:`_pair_packed`: packed parameters of one side, split ones of the
    other (``packed_side`` 0: the reference is packed)."""

    def __init__(self, packed: tuple[LossGraph, set[str]], split: tuple[LossGraph, set[str]],
                 packed_side: int, layouts: Layouts) -> None:
        (self.packed_graph, self.packed_taken), (split_graph, self.split_taken) = packed, split
        self.packed_side, self.layouts = packed_side, layouts
        self.pairs: list[ParamPair] = []
        #: (parent module, attribute) -> child module -> split parameter, in definition order
        self.children: dict[tuple[str, str], dict[str, str]] = {}
        for name, info in split_graph.meta.params.items():
            if name not in self.split_taken:
                module, _, attribute = canonical_name(name, info).rpartition(".")
                parent, _, child = module.rpartition(".")
                self.children.setdefault((parent, attribute), {})[child] = name

    def run(self) -> list[ParamPair]:
        attention: list[tuple[str, str, str]] = []  # packed attention projections left over
        for name, info in self.packed_graph.meta.params.items():
            if name in self.packed_taken:
                continue
            parent, fused, attribute = _fused_key(name, info)
            found = self.children.get((parent, attribute), {})
            order = _split_order(fused, found)
            if (order is None or not self.pair(name, [found[c] for c in order])) and fused in SPLIT_NAMES:
                attention.append((name, fused, attribute))
        # by structure: packed attention projections against the modules holding all the split
        # ones, in definition order (torch's decoder ``multihead_attn``, Paddle's ``cross_attn``)
        for attribute in ("weight", "bias"):
            packed = [(n, f) for n, f, a in attention if a == attribute and n not in self.packed_taken]
            if not packed:
                continue
            names = SPLIT_NAMES[packed[0][1]]
            holders = [[found[c] for c in names] for (_, a), found in self.children.items()
                       if a == attribute and all(c in found and found[c] not in self.split_taken
                                                 for c in names)]
            if len(packed) == len(holders):
                for (name, _), split in zip(packed, holders):
                    self.pair(name, split)
        return self.pairs

    def pair(self, name: str, split: list[str]) -> bool:
        """Pair packed ``name`` with ``split`` (in its order), if the layouts and sizes allow."""
        if any(n in self.split_taken for n in split):
            return False
        parts = _parts(self.layouts, self.packed_side, name, split)
        if parts is None:
            return False
        if self.packed_side == 0:
            self.pairs.append(ParamPair.split(name, parts))
        else:
            self.pairs.extend(ParamPair.slice_of(part.name, replace(part, name=name)) for part in parts)
        self.packed_taken.add(name)
        self.split_taken.update(split)
        return True


def _fused_key(name: str, info: ParamInfo) -> tuple[str, str, str]:
    """(parent module, fused projection, attribute): ``attn.qkv_proj.weight`` -> ``("attn",
    "qkv_proj", "weight")``; torch's ``attn.in_proj_weight`` -> ``("attn", "in_proj", "weight")``."""
    module, _, attribute = canonical_name(name, info).rpartition(".")
    for kind in ("weight", "bias"):
        if canonical_layer(info) == "multiheadattention" and attribute.endswith("_" + kind):
            return module, attribute[: -len(kind) - 1], kind
    parent, _, fused = module.rpartition(".")
    return parent, fused, attribute


def _split_order(fused: str, children: Mapping[str, str]) -> list[str] | None:
    """The children a fused name is made of, in its order: ``qkv_proj`` of ``q_proj``, ``k_proj``,
    ``v_proj`` (and ``o_proj``, unused); ``gate_up_proj`` of ``gate_proj``, ``up_proj``."""
    if fused in SPLIT_NAMES:
        names = SPLIT_NAMES[fused]
        return list(names) if all(n in children for n in names) else None
    if len(children) < 2 or fused in children:
        return None
    suffix = os.path.commonprefix([c[::-1] for c in children])[::-1]
    if not fused.endswith(suffix):
        return None
    core = fused[: len(fused) - len(suffix)] if suffix else fused
    prefixes = {c[: len(c) - len(suffix)] if suffix else c: c for c in children}

    def parse(rest: str) -> list[str] | None:
        if not rest:
            return []
        for prefix, child in prefixes.items():
            for sep in ("", "_"):
                if prefix and rest.startswith(prefix + sep) and (sep or len(rest) >= len(prefix)):
                    tail = parse(rest[len(prefix) + len(sep):] if sep else rest[len(prefix):])
                    if tail is not None and child not in tail:
                        return [child, *tail]
        return None

    order = parse(core)
    return order if order is not None and len(order) >= 2 else None


def _parts(layouts: Layouts, packed_side: int, packed: str, split: list[str]) -> list[Part] | None:
    """Where each split parameter sits in the packed one (along the packed tensor's output axis)
    and how it is carried; None when a layout is unknown or the sizes do not add up."""
    params = layouts.sides[packed_side][0]
    split_params = layouts.sides[1 - packed_side][0]
    shape = params[packed].shape
    packed_layout = layouts.layout(packed_side, packed)
    if len(shape) == 2 and packed_layout is None:
        return None
    axis = 1 if packed_layout == "in_out" else 0
    parts, start = [], 0
    for name in split:
        split_shape = split_params[name].shape
        if len(split_shape) != len(shape):
            return None
        layout = layouts.layout(1 - packed_side, name)
        if len(shape) == 2 and layout is None:
            return None
        size = split_shape[1] if layout == "in_out" else split_shape[0]
        transform = "transpose" if len(shape) == 2 and layout != packed_layout else "identity"
        parts.append(Part(name, (start, start + size), transform, axis))
        start += size
    return parts if start == shape[axis] else None


#: A recurrent layer's per-layer weights (``weight_ih_l1_reverse``) and the cell of that kind
#: holding them one by one (``LSTMCell.weight_ih``): torch and Paddle name them alike.
_RECURRENT_WEIGHT = re.compile(r"^((?:weight|bias)_(?:ih|hh))_l\d+(?:_reverse)?$")
_RECURRENT_CELLS = {"lstm": "lstmcell", "gru": "grucell", "rnn": "rnncell", "simplernn": "rnncell",
                    "simplernncell": "rnncell"}


def structure_key(name: str, info: ParamInfo) -> tuple[str, str]:
    """What a parameter is, for pairing in definition order: (layer kind, attribute). A
    multi-layer recurrent layer's weights are its cells' (a 2-layer LSTM pairs with two
    LSTMCells, layer by layer)."""
    layer, attribute = canonical_layer(info), canonical_attribute(info, name)
    match = _RECURRENT_WEIGHT.match(attribute)
    if layer in _RECURRENT_CELLS and match:
        return _RECURRENT_CELLS[layer], match.group(1)
    return _RECURRENT_CELLS.get(layer, layer), attribute


def _pair_by_structure(
    reference: LossGraph, candidate: LossGraph, taken_ref: set[str], taken_cand: set[str],
    layouts: Layouts,
) -> list[ParamPair]:
    """Pair what names could not, in definition order within each (layer kind, attribute)."""
    def groups(params: Mapping[str, ParamInfo], taken: set[str]) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for name, info in params.items():
            if name not in taken:
                out.setdefault(structure_key(name, info), []).append(name)
        return out

    ref_params, cand_params = reference.meta.params, candidate.meta.params
    ref_groups = groups(ref_params, taken_ref)
    cand_groups = groups(cand_params, taken_cand)
    pairs = []
    for key, ref_names in ref_groups.items():
        cand_names = cand_groups.get(key, [])
        if len(cand_names) != len(ref_names):
            continue  # ambiguous: reported as unmapped
        candidate_pairs = []
        for ref_name, cand_name in zip(ref_names, cand_names):
            transform = layouts.transform(ref_name, cand_name)
            shape = list(ref_params[ref_name].shape)
            if transform == "transpose":
                shape = shape[::-1]
            if shape != list(cand_params[cand_name].shape):
                break
            candidate_pairs.append(ParamPair(ref_name, cand_name, transform, "structure"))
        else:
            pairs.extend(candidate_pairs)
    return pairs


def _flattened(pair: ParamPair, ref_shape: list[int], cand_shape: list[int]) -> bool:
    """Whether a pair's shapes differ only in that one side stores the tensor flat: as many
    values, one shape 1-D (Paddle's LayerNorm over several axes keeps weight and bias as
    [prod(normalized_shape)])."""
    return (pair.transform == "identity" and not pair.parts and pair.packed_in is None
            and int(np.prod(ref_shape)) == int(np.prod(cand_shape))
            and (len(ref_shape) == 1) != (len(cand_shape) == 1))


def _checked_map(
    reference: LossGraph, candidate: LossGraph, pairs: list[ParamPair], allow_unmapped: bool
) -> ParamMap:
    ref_params = reference.meta.params
    cand_params = candidate.meta.params
    good, mismatch = [], []
    for pair in pairs:
        ref_shape = list(ref_params[pair.reference].shape)
        if pair.parts:
            carried, cand_shape = _packed_shapes(pair, ref_shape, cand_params)
        elif pair.packed_in is not None:
            cand_shape = list(cand_params[pair.candidate].shape)
            carried = ref_shape[::-1] if pair.transform == "transpose" else ref_shape
            cand_shape = _slice_shape(cand_shape, pair.packed_in)
        else:
            carried = ref_shape[::-1] if pair.transform == "transpose" else ref_shape
            cand_shape = list(cand_params[pair.candidate].shape)
            if carried != cand_shape and _flattened(pair, ref_shape, cand_shape):
                pair = replace(pair, transform="reshape", shapes=(tuple(ref_shape), tuple(cand_shape)))
                carried = cand_shape
        if carried != cand_shape:
            mismatch.append(
                {"reference": pair.reference, "candidate": pair.candidate,
                 "reference_shape": ref_shape, "candidate_shape": cand_shape,
                 "transform": pair.transform}
            )
        else:
            good.append(pair)
    mismatch += _uncovered_slices(pairs, cand_params)
    paired_ref = {p.reference for p in pairs}
    paired_cand = {c for p in pairs for c in p.candidates}
    cross = reference.framework != candidate.framework

    def expected(name: str, info: ParamInfo) -> bool:
        """Buffers one framework has and the other never will (torch's num_batches_tracked)."""
        return cross and canonical_attribute(info, name) in FRAMEWORK_ONLY_ATTRIBUTES

    result = ParamMap(
        pairs=good,
        unmapped_reference=[
            n for n, i in ref_params.items() if n not in paired_ref and not expected(n, i)
        ],
        unmapped_candidate=[
            n for n, i in cand_params.items() if n not in paired_cand and not expected(n, i)
        ],
        shape_mismatch=mismatch,
    )
    if not good and not mismatch and (ref_params or cand_params):
        if not ref_params or not cand_params:
            empty, other = ("reference", "candidate") if not ref_params else ("candidate", "reference")
            raise VerificationError(
                f"The {empty} has no parameters or buffers and the {other} has "
                f"{len(cand_params or ref_params)}: the two models differ in structure."
            )
        raise VerificationError(
            f"The two graphs share no parameters ({len(ref_params)} in the reference, "
            f"{len(cand_params)} in the candidate, none paired by name, name map or structure); "
            f"give a --name-map."
        )
    if blocks_pairing(reference, candidate, result) and (not allow_unmapped or not good):
        raise VerificationError(unpaired_summary(reference, candidate, result))
    return result


def _slice_shape(shape: list[int], part: Part) -> list[int | None]:
    low, high = part.rows
    if not 0 <= part.axis < len(shape) or not 0 <= low < high <= shape[part.axis]:
        return [None]
    return [high - low if axis == part.axis else d for axis, d in enumerate(shape)]


def _tiles(parts: list[Part], shape: list[int]) -> bool:
    """Whether the parts' ranges, in this order, tile one axis of a tensor of ``shape``."""
    axes = {p.axis for p in parts}
    if len(axes) != 1 or not 0 <= parts[0].axis < len(shape):
        return False
    end = 0
    for part in parts:
        if part.rows[0] != end or part.rows[1] <= end:
            return False
        end = part.rows[1]
    return end == shape[parts[0].axis]


def _uncovered_slices(pairs: list[ParamPair], cand_params: Mapping[str, ParamInfo]) -> list[dict]:
    """Packed candidate parameters whose slices, paired one by one, do not tile them."""
    slices: dict[str, list[tuple[str, Part]]] = {}
    for pair in pairs:
        if pair.packed_in is not None:
            slices.setdefault(pair.candidate, []).append((pair.reference, pair.packed_in))
    out = []
    for name, found in slices.items():
        found.sort(key=lambda item: item[1].rows)
        shape = list(cand_params[name].shape)
        if not _tiles([part for _, part in found], shape):
            out.append({"reference": " + ".join(ref for ref, _ in found), "candidate": name,
                        "reference_shape": [list(part.rows) for _, part in found],
                        "candidate_shape": shape, "transform": "slices"})
    return out


def _packed_shapes(
    pair: ParamPair, ref_shape: list[int], cand_params: Mapping[str, ParamInfo]
) -> tuple[Any, Any]:
    """What a packed pair's parts would receive and what they hold; they differ (a mismatch)
    unless the parts tile the reference in order."""
    carried = []
    for part in pair.parts:
        piece = _slice_shape(ref_shape, part)
        carried.append(piece[::-1] if part.transform == "transpose" else piece)
    held = [list(cand_params[part.name].shape) for part in pair.parts]
    if not _tiles(list(pair.parts), ref_shape):
        carried.append("slices that do not tile the reference")
    return carried, held


def blocks_pairing(reference: LossGraph, candidate: LossGraph, pmap: ParamMap) -> bool:
    """Whether what could not be paired stops the comparison without --allow-unmapped: a shape
    mismatch or a trainable parameter without counterpart. Buffers and frozen parameters without
    counterpart (a loss's ``pos_weight``, a mask) do not: each side keeps its own value, and a
    difference they make is a divergence that names them."""
    return bool(
        pmap.shape_mismatch
        or any(reference.meta.params[n].trainable for n in pmap.unmapped_reference)
        or any(candidate.meta.params[n].trainable for n in pmap.unmapped_candidate)
    )


def unpaired_state(graph: LossGraph, names: list[str]) -> list[str]:
    """The buffers and frozen parameters among ``names`` (unpaired ones of ``graph``)."""
    return [n for n in names if not graph.meta.params[n].trainable]


def describe_unpaired_state(
    reference: LossGraph, candidate: LossGraph, pmap: ParamMap,
    within: tuple[set[str], set[str]] | None = None,
) -> str:
    """The buffers and frozen parameters without counterpart, described, on each side ("" when
    none); ``within``: only those among these value names (reference, candidate)."""
    parts = []
    for i, (side, graph, names) in enumerate((("reference", reference, pmap.unmapped_reference),
                                              ("candidate", candidate, pmap.unmapped_candidate))):
        state = [n for n in unpaired_state(graph, names) if within is None or n in within[i]]
        if state:
            values = graph.param_values()
            shown = [describe_tensor(n, graph.meta.params[n], values.get(n)) for n in state]
            parts.append(f"in the {side} {shown_names(shown)}")
    return "; ".join(parts)


def describe_tensor(name: str, info: ParamInfo, value: np.ndarray | None) -> str:
    """``criterion.pos_weight (buffer [4], all 3)``: kind, shape and values in a few words."""
    kind = "buffer" if info.kind == "buffer" else "parameter" if info.trainable else "frozen parameter"
    text = f"{kind} [{', '.join(str(d) for d in info.shape)}]"
    if value is not None and value.size and np.issubdtype(value.dtype, np.number):
        low, high = value.min(), value.max()
        text += f", all {low:g}" if low == high else f", {low:g} to {high:g}"
    return f"{name} ({text})"


#: How many names per side an unpaired-parameters message lists.
NAMES_SHOWN = 4


def shown_names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def unpaired_summary(reference: LossGraph, candidate: LossGraph, pmap: ParamMap) -> str:
    """One short line: how many parameters each side could not pair, the first few names, and
    the layers the difference is made of (a structural difference between the models)."""
    ref_params, cand_params = reference.meta.params, candidate.meta.params
    problems = []
    if pmap.shape_mismatch:
        problems.append(
            "shape mismatch: "
            + shown_names([f"{m['reference']} {m['reference_shape']} vs {m['candidate']} {m['candidate_shape']}"
                      for m in pmap.shape_mismatch])
        )
    for side, names, params in (("reference", pmap.unmapped_reference, ref_params),
                                ("candidate", pmap.unmapped_candidate, cand_params)):
        if names:
            problems.append(f"unmapped in {side} ({len(names)} of {len(params)}): " + shown_names(names))
    structure = (_tie_difference(reference, candidate, pmap) or _default_difference(reference, candidate, pmap)
                 or _structural_difference(reference, candidate, pmap))
    return (
        "Parameters could not all be paired (" + "; ".join(problems) + ")"
        + (f"; {structure}" if structure else "")
        + "; fix the model, give a --name-map, or pass --allow-unmapped to compare anyway."
    )


#: Layers whose parameters one framework creates by default and the other does not: layer
#: kind -> what to say.
DEFAULT_PARAMETERS = {
    **{(f"instancenorm{d}d", "paddle"): (
        "Paddle's InstanceNorm{d}D has a learnable scale and bias by default, torch's "
        "InstanceNorm{d}d none (affine=False): give torch affine=True, or Paddle "
        "weight_attr=False, bias_attr=False") for d in (1, 2, 3)},
    **{(f"instancenorm{d}d", "torch"): (
        "torch's InstanceNorm{d}d here has a learnable weight and bias (affine=True), the Paddle "
        "port's InstanceNorm{d}D none (weight_attr=False, bias_attr=False; Paddle's default has "
        "them)") for d in (1, 2, 3)},
}


def _default_difference(reference: LossGraph, candidate: LossGraph, pmap: ParamMap) -> str:
    """Unpaired parameters that exist on one side only because the frameworks' defaults differ
    (InstanceNorm's affine): the argument to change."""
    found = []
    for names, graph in ((pmap.unmapped_reference, reference), (pmap.unmapped_candidate, candidate)):
        for name in names:
            info = graph.meta.params.get(name)
            key = (canonical_layer(info) if info is not None else "", graph.framework)
            if key in DEFAULT_PARAMETERS:
                found.append(f"{info.module}: {DEFAULT_PARAMETERS[key].format(d=key[0][-2])}")
    return "; ".join(dict.fromkeys(found))


def _tie_difference(reference: LossGraph, candidate: LossGraph, pmap: ParamMap) -> str:
    """Tied on one side, separate on the other: "the reference ties head.weight to emb.weight
    (one tensor, trained once); the candidate has head.weight as a parameter of its own"."""
    parts = []
    for side, other_side, graph, unpaired in (
        ("reference", "candidate", candidate, pmap.unmapped_reference),
        ("candidate", "reference", reference, pmap.unmapped_candidate),
    ):
        keys = {alias_key(n): n for n in unpaired}
        for name, info in graph.meta.params.items():
            for alias in info.aliases:
                if alias_key(alias) in keys:
                    parts.append(
                        f"the {other_side} ties {alias} to {name} (one tensor, trained once); the "
                        f"{side} has {keys[alias_key(alias)]} as a parameter of its own: tied and "
                        f"untied weights train differently"
                    )
    return "; ".join(parts)


def _structural_difference(reference: LossGraph, candidate: LossGraph, pmap: ParamMap) -> str:
    """The unpaired parameters' layers, by kind, on each side: "unpaired Linear layers: 2 (a, b)
    in the reference, 1 (x) in the candidate"."""
    kinds: dict[str, str] = {}  # canonical kind -> the name shown
    modules: dict[str, tuple[list[str], list[str]]] = {}
    for side, names, params in ((0, pmap.unmapped_reference, reference.meta.params),
                                (1, pmap.unmapped_candidate, candidate.meta.params)):
        for name in names:
            info = params[name]
            kind = canonical_layer(info)
            kinds.setdefault(kind, info.layer_type or "unknown")
            module = (info.module if info.attribute else name.rpartition(".")[0]) or "(top level)"
            found = modules.setdefault(kind, ([], []))[side]
            if module not in found:
                found.append(module)

    def count(names: list[str]) -> str:
        return f"{len(names)} ({shown_names(names)})" if names else "none"

    parts = [
        f"{kinds[kind]} layers: {count(ref)} in the reference, {count(cand)} in the candidate"
        for kind, (ref, cand) in modules.items()
    ]
    return "likely a structural difference, unpaired " + "; ".join(parts) if parts else ""
