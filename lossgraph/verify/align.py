"""Parameter correspondence between two LossGraphs.

The map pairs each reference parameter/buffer with a candidate one and says how the value is
carried across (``identity`` or ``transpose``). It is built in this order:

1. ``--name-map`` entries: ``{"ref.name": "cand.name"}`` or
   ``{"ref.name": {"name": "cand.name", "transpose": true}}``;
2. equal names, after the known renames between frameworks (BatchNorm ``running_mean`` /
   ``running_var`` <-> ``_mean`` / ``_variance``);
3. structure: what is left is paired in definition order within each kind of layer and attribute
   (``conv2d.weight``, ``batchnorm2d.running_var``, ...), if the counts and shapes agree.

Across frameworks a Linear weight is transposed ([out, in] in torch, [in, out] in Paddle) because
of its layer kind, never because of its shape, so square weights are handled too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.errors import VerificationError
from lossgraph.graph import LossGraph, ParamInfo

TRANSFORMS = ("identity", "transpose")


@dataclass(frozen=True)
class ParamPair:
    """One reference parameter carried to one candidate parameter."""

    reference: str
    candidate: str
    transform: str = "identity"
    how: str = "name"  # "name" (same name), "map" (--name-map), "structure" (automatic alignment)

    def carry(self, value: np.ndarray) -> np.ndarray:
        """The reference value as the candidate expects it."""
        if self.transform == "transpose":
            return np.ascontiguousarray(value.T)
        return value

    def carry_back(self, value: np.ndarray) -> np.ndarray:
        """A candidate value (e.g. a gradient) in the reference's layout."""
        return self.carry(value)  # both transforms are involutions


@dataclass
class ParamMap:
    """The parameter correspondence used by a verification, and what it could not pair."""

    pairs: list[ParamPair]
    unmapped_reference: list[str] = field(default_factory=list)
    unmapped_candidate: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)

    def carry(self, reference_values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Candidate values for every paired parameter, from the reference's values."""
        return {p.candidate: p.carry(reference_values[p.reference]) for p in self.pairs}

    def by_reference(self) -> dict[str, ParamPair]:
        return {p.reference: p for p in self.pairs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [asdict(p) for p in self.pairs],
            "unmapped_reference": list(self.unmapped_reference),
            "unmapped_candidate": list(self.unmapped_candidate),
            "shape_mismatch": list(self.shape_mismatch),
        }


def load_name_map(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``--name-map`` JSON file into ``{ref: {"name": cand, "transpose": bool}}``."""
    path = Path(path)
    if not path.exists():
        raise VerificationError(f"Name map file {path} does not exist.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VerificationError(f"Name map {path} is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise VerificationError(f"Name map {path} must be a JSON object of reference -> candidate names.")
    out = {}
    for ref, entry in data.items():
        if isinstance(entry, str):
            entry = {"name": entry}
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise VerificationError(
                f"Name map {path}: entry {ref!r} must be a candidate name or "
                f'{{"name": ..., "transpose": true|false}}, got {entry!r}.'
            )
        if not isinstance(entry.get("transpose", False), bool):
            raise VerificationError(f"Name map {path}: 'transpose' of {ref!r} must be true or false.")
        out[ref] = entry
    return out


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
    cross = reference.framework != candidate.framework
    pairs: list[ParamPair] = []
    for ref_name, entry in (name_map or {}).items():
        if ref_name not in ref_params:
            raise VerificationError(
                f"Name map entry {ref_name!r} is not a parameter of the reference graph "
                f"({reference.path or 'reference'})."
            )
        if entry["name"] not in cand_params:
            raise VerificationError(
                f"Name map maps {ref_name!r} to {entry['name']!r}, which is not a parameter of the "
                f"candidate graph ({candidate.path or 'candidate'})."
            )
        if "transpose" in entry:
            transform = "transpose" if entry["transpose"] else "identity"
        else:
            transform = layout_transform(ref_params[ref_name], cand_params[entry["name"]], cross)
        pairs.append(ParamPair(ref_name, entry["name"], transform, "map"))
    taken_ref = {p.reference for p in pairs}
    taken_cand = {p.candidate for p in pairs}
    cand_by_key = {canonical_name(n, p): n for n, p in cand_params.items() if n not in taken_cand}
    for name, info in ref_params.items():
        other = cand_by_key.get(canonical_name(name, info))
        if name in taken_ref or other is None or other in taken_cand:
            continue
        pairs.append(ParamPair(name, other, layout_transform(info, cand_params[other], cross), "name"))
        taken_ref.add(name)
        taken_cand.add(other)
    pairs.extend(_pair_by_structure(reference, candidate, taken_ref, taken_cand, cross))
    return _checked_map(reference, candidate, pairs, allow_unmapped)


#: Attribute spellings that mean the same thing in torch and Paddle.
ATTRIBUTE_ALIASES = {"_mean": "running_mean", "_variance": "running_var"}
#: Layer class names that differ between the frameworks, lower-cased, Paddle -> torch.
LAYER_ALIASES = {
    "conv1dtranspose": "convtranspose1d",
    "conv2dtranspose": "convtranspose2d",
    "conv3dtranspose": "convtranspose3d",
    "batchnorm": "batchnorm2d",
}
#: Buffers only one framework has (no counterpart to pair with, nothing to report).
FRAMEWORK_ONLY_ATTRIBUTES = ("num_batches_tracked",)
#: Layer kinds whose weight is stored transposed in Paddle relative to torch.
TRANSPOSED_WEIGHT_LAYERS = ("linear",)


def canonical_layer(info: ParamInfo) -> str:
    name = info.layer_type.lower()
    return LAYER_ALIASES.get(name, name)


def canonical_attribute(info: ParamInfo, name: str) -> str:
    attribute = info.attribute or name.rpartition(".")[2]
    return ATTRIBUTE_ALIASES.get(attribute, attribute)


def canonical_name(name: str, info: ParamInfo) -> str:
    """The name with the framework-specific attribute spelling replaced (``bn._mean`` ->
    ``bn.running_mean``)."""
    module = info.module if info.attribute else name.rpartition(".")[0]
    attribute = canonical_attribute(info, name)
    return f"{module}.{attribute}" if module else attribute


def layout_transform(ref: ParamInfo, cand: ParamInfo, cross_framework: bool) -> str:
    """``transpose`` for a Linear weight crossing frameworks, by layer kind (not by shape)."""
    if not cross_framework:
        return "identity"
    if (
        canonical_layer(ref) in TRANSPOSED_WEIGHT_LAYERS
        and canonical_layer(cand) in TRANSPOSED_WEIGHT_LAYERS
        and ref.attribute == "weight"
        and cand.attribute == "weight"
        and len(ref.shape) == 2
    ):
        return "transpose"
    return "identity"


def _pair_by_structure(
    reference: LossGraph, candidate: LossGraph, taken_ref: set[str], taken_cand: set[str], cross: bool
) -> list[ParamPair]:
    """Pair what names could not, in definition order within each (layer kind, attribute)."""
    def groups(params: Mapping[str, ParamInfo], taken: set[str]) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for name, info in params.items():
            if name not in taken:
                out.setdefault((canonical_layer(info), canonical_attribute(info, name)), []).append(name)
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
            transform = layout_transform(ref_params[ref_name], cand_params[cand_name], cross)
            shape = list(ref_params[ref_name].shape)
            if transform == "transpose":
                shape = shape[::-1]
            if shape != list(cand_params[cand_name].shape):
                break
            candidate_pairs.append(ParamPair(ref_name, cand_name, transform, "structure"))
        else:
            pairs.extend(candidate_pairs)
    return pairs


def _checked_map(
    reference: LossGraph, candidate: LossGraph, pairs: list[ParamPair], allow_unmapped: bool
) -> ParamMap:
    ref_params = reference.meta.params
    cand_params = candidate.meta.params
    good, mismatch = [], []
    for pair in pairs:
        ref_shape = list(ref_params[pair.reference].shape)
        carried = ref_shape[::-1] if pair.transform == "transpose" else ref_shape
        cand_shape = list(cand_params[pair.candidate].shape)
        if carried != cand_shape:
            mismatch.append(
                {"reference": pair.reference, "candidate": pair.candidate,
                 "reference_shape": ref_shape, "candidate_shape": cand_shape,
                 "transform": pair.transform}
            )
        else:
            good.append(pair)
    paired_ref = {p.reference for p in pairs}
    paired_cand = {p.candidate for p in pairs}
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
    if not good and not mismatch:
        raise VerificationError(
            f"The two graphs share no parameters ({len(ref_params)} in the reference, "
            f"{len(cand_params)} in the candidate, none paired by name, name map or structure); "
            f"give a --name-map."
        )
    if blocks_pairing(reference, candidate, result) and (not allow_unmapped or not good):
        raise VerificationError(unpaired_summary(reference, candidate, result))
    return result


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
            parts.append(f"in the {side} {_names(shown)}")
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


def _names(names: list[str]) -> str:
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
            + _names([f"{m['reference']} {m['reference_shape']} vs {m['candidate']} {m['candidate_shape']}"
                      for m in pmap.shape_mismatch])
        )
    for side, names, params in (("reference", pmap.unmapped_reference, ref_params),
                                ("candidate", pmap.unmapped_candidate, cand_params)):
        if names:
            problems.append(f"unmapped in {side} ({len(names)} of {len(params)}): " + _names(names))
    structure = _structural_difference(reference, candidate, pmap)
    return (
        "Parameters could not all be paired (" + "; ".join(problems) + ")"
        + (f"; {structure}" if structure else "")
        + "; fix the model, give a --name-map, or pass --allow-unmapped to compare anyway."
    )


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
        return f"{len(names)} ({_names(names)})" if names else "none"

    parts = [
        f"{kinds[kind]} layers: {count(ref)} in the reference, {count(cand)} in the candidate"
        for kind, (ref, cand) in modules.items()
    ]
    return "likely a structural difference, unpaired " + "; ".join(parts) if parts else ""
