"""Which reference dropout each candidate dropout corresponds to, so that both get one mask
(the masks themselves are drawn by :mod:`lossgraph.inputs`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lossgraph.inputs import mask_layout
from lossgraph.verify.localize import translate_tap


def with_masks_of(graph: Any, match: DropoutMatch | None) -> Any:
    """A copy of the candidate ``graph`` (a LossGraph; the model is shared, not copied) whose
    dropout calls carry the mask index ``match`` assigns them; ``graph`` as it is without a
    match."""
    if match is None:
        return graph
    calls = [{**call, "mask_index": index} for call, index in zip(graph.meta.dropout, match.candidate_indices)]
    return replace(graph, meta=replace(graph.meta, dropout=calls))


@dataclass
class DropoutMatch:
    """Which reference dropout each candidate dropout corresponds to.

    ``candidate_indices[k]`` is the mask index candidate dropout ``k`` draws: its reference
    counterpart's index, or an index no reference dropout uses when it has none (an independent
    mask)."""

    pairs: list[tuple[int, int]]  # (reference k, candidate k)
    candidate_indices: list[int]
    unmatched_reference: list[int] = field(default_factory=list)
    unmatched_candidate: list[int] = field(default_factory=list)
    #: pairs whose scopes did not correspond, made by mask shape and order alone
    by_position: list[tuple[int, int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unmatched_reference and not self.unmatched_candidate


def match_dropouts(
    reference: Sequence[Mapping[str, Any]],
    candidate: Sequence[Mapping[str, Any]],
    modules: Mapping[str, str] | None = None,
) -> DropoutMatch:
    """Pair the dropouts of two graphs by scope and position.

    A reference dropout corresponds to a candidate dropout of the same mask layout
    (:func:`mask_layout`: the shape without its 1s) whose scope is
    the reference's scope translated into the candidate's module paths (``modules``: the
    parameter map's :func:`~lossgraph.verify.localize.module_map`, parents included); graphs
    exported before scopes were recorded match on shape alone. Among such candidates the one at the same position is taken, else the first one
    left, so dropouts called in another order still get the same masks. Dropouts left over on
    both sides (a dropout layer renamed, or ``F.dropout`` in place of a layer: scopes that the
    parameters cannot relate) are then paired in order by mask shape alone (``by_position``)."""
    modules = modules or {}

    def fits(ref: Mapping[str, Any], cand: Mapping[str, Any]) -> bool:
        if mask_layout(ref["shape"]) != mask_layout(cand["shape"]):
            return False
        a, b = ref.get("scope"), cand.get("scope")
        return a is None or b is None or translate_tap(a, modules) == b

    free = list(range(len(candidate)))
    pairs = []
    unmatched_reference = []
    for j, ref in enumerate(reference):
        options = [k for k in free if fits(ref, candidate[k])]
        if not options:
            unmatched_reference.append(j)
            continue
        k = j if j in options else options[0]
        free.remove(k)
        pairs.append((j, k))
    by_position = []
    for j in list(unmatched_reference):
        k = next((k for k in free if mask_layout(reference[j]["shape"]) == mask_layout(candidate[k]["shape"])), None)
        if k is not None:
            free.remove(k)
            unmatched_reference.remove(j)
            by_position.append((j, k))
    pairs += by_position
    indices = list(range(len(reference), len(reference) + len(candidate)))
    for j, k in pairs:
        indices[k] = j
    return DropoutMatch(
        sorted(pairs, key=lambda p: p[1]), indices, unmatched_reference, free, by_position
    )
