"""Seeded fake inputs drawn from :class:`lossgraph.Input` specs, and ``--inputs FILE.npz``.

Each input has its own generator, ``default_rng([seed, crc32(name)])``, so adding or reordering
inputs never changes the values of the others and both sides of a comparison get bit-identical
data. Dropout masks are drawn per training step and per dropout; the candidate's dropouts get
the masks of the reference dropouts they correspond to
(:func:`lossgraph.verify.dropouts.match_dropouts`).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.errors import SpecError, VerificationError
from lossgraph.spec import Input


def make_input(spec: Input, name: str, seed: int, draw: int = 0) -> np.ndarray:
    """Draw one input (draw ``draw`` of it: a micro-batch, a step's fresh batch; draw 0 is the
    inputs of a plain comparison). Floats are drawn in float64 and rounded to the spec's dtype."""
    key = [seed, zlib.crc32(name.encode())] + ([draw] if draw else [])
    rng = np.random.default_rng(key)
    dist = spec.distribution
    if dist == "normal":
        values = rng.standard_normal(spec.shape)
    elif dist == "uniform":
        low, high = spec.uniform_range
        values = rng.uniform(low, high, spec.shape)
    elif dist == "integers":
        low, high = spec.uniform_range
        values = rng.integers(low, high, spec.shape)
    elif dist == "choices":
        values = _cover_choices(rng, np.asarray(spec.choices), spec.shape)
    else:
        values = rng.integers(0, 2, spec.shape).astype(bool)
    return np.ascontiguousarray(values.astype(spec.dtype))


def _cover_choices(rng: np.random.Generator, choices: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Uniform draws from ``choices``, with every choice at least once where the input has room
    for all of them (at random positions): a bug that shows only on one choice (a hinge
    margin, seen only where y = -1) must not hide behind a seed that drew none of it, as a
    [2, 1] input of +-1 does at one seed in four."""
    values = rng.choice(choices, shape)
    if values.size >= choices.size:
        positions = rng.permutation(values.size)[: choices.size]
        values.reshape(-1)[positions] = rng.permutation(choices)
    return values


def make_inputs(specs: Mapping[str, Input], seed: int = 0, draw: int = 0) -> dict[str, np.ndarray]:
    """Draw every input of a graph from its spec (refused in one line when they alone would not
    fit in the memory this machine has free)."""
    check_fits(specs)
    return {name: make_input(spec, name, seed, draw) for name, spec in specs.items()}


@dataclass
class Draws:
    """The inputs of each micro-batch of each training step: ``draws(step, micro)``.

    A step accumulates ``accumulate`` micro-batches. Without ``fresh`` every step sees the same
    ones (draws 0 .. accumulate-1, like an epoch over a fixed set of batches); with ``fresh``
    each step draws its own (draw ``step * accumulate + micro``). Draw 0 is ``base`` (the seeded
    inputs, or an ``--inputs`` file, which then feeds every micro-batch). ``dtype="float64"``
    widens float32 inputs (the float64 re-run)."""

    specs: Mapping[str, Input]
    seed: int
    base: Mapping[str, np.ndarray]
    accumulate: int = 1
    fresh: bool = False
    loaded: bool = False
    dtype: str = "float32"
    #: an inputs file's arrays with a leading draw axis (each step, each micro-batch its own)
    stepped: Mapping[str, np.ndarray] | None = None
    _cache: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def index(self, step: int, micro: int = 0) -> int:
        return step * self.accumulate + micro if self.fresh or self.stepped is not None else micro

    def __call__(self, step: int, micro: int = 0) -> Mapping[str, np.ndarray]:
        draw = self.index(step, micro)
        if self.stepped is not None:
            values = input_draw(self.stepped, self.specs, draw)
            if self.dtype == "float64":
                values = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in values.items()}
            return values
        if draw == 0 or self.loaded:
            return self.base
        if draw not in self._cache:
            if len(self._cache) > self.accumulate:  # a step's micro-batches at most
                self._cache.clear()
            values = make_inputs(self.specs, self.seed, draw)
            if self.dtype == "float64":
                values = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in values.items()}
            self._cache[draw] = values
        return self._cache[draw]

    def widened(self, base: Mapping[str, np.ndarray]) -> Draws:
        """The same draws in float64, from the widened ``base``."""
        return Draws(self.specs, self.seed, base, self.accumulate, self.fresh, self.loaded, "float64",
                     self.stepped)


def check_fits(specs: Mapping[str, Input]) -> None:
    """Raise SpecError when the inputs alone take more memory than is available, before any of
    it is allocated (``Input([100000, 100000])``: 40 GB of float32)."""
    counts = {name: int(np.prod(spec.shape, dtype=np.float64)) for name, spec in specs.items()}
    sizes = {name: counts[name] * np.dtype(spec.dtype).itemsize for name, spec in specs.items()}
    # each input is drawn in 64 bits, then cast: the largest draw is held beside all the inputs
    draw = max((8 * count for count in counts.values()), default=0)
    total, available = sum(sizes.values()) + draw, available_memory()
    if available is not None and total > available:
        largest = max(sizes, key=sizes.__getitem__)
        raise SpecError(
            f"The inputs alone need {total / 2**30:.1f} GiB ({largest}: {list(specs[largest].shape)} "
            f"{specs[largest].dtype}), more than the {available / 2**30:.1f} GiB of memory this "
            f"machine has available; use smaller shapes."
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable; else the physical
    memory), or None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def load_inputs(path: str | Path, specs: Mapping[str, Input]) -> dict[str, np.ndarray]:
    """Read ``--inputs FILE.npz`` and check it holds every input with the right shape and dtype.
    An array may have one more, leading axis: one value per draw (a training step, or each
    micro-batch of each step), all such arrays the same length (:func:`input_draw`)."""
    path = Path(path)
    if not path.exists():
        raise VerificationError(f"Inputs file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise VerificationError(f"{path} is not a readable .npz file ({type(exc).__name__}).") from None
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise VerificationError(
            f"{path} lacks input(s) {', '.join(missing)}; it holds {', '.join(arrays) or 'nothing'}."
        )
    out = {}
    lengths = set()
    for name, spec in specs.items():
        value = arrays[name]
        if tuple(value.shape[1:]) == tuple(spec.shape) and value.ndim == len(spec.shape) + 1:
            lengths.add(value.shape[0])
        elif tuple(value.shape) != tuple(spec.shape):
            raise VerificationError(
                f"Input {name!r} in {path} has shape {list(value.shape)}, expected {list(spec.shape)} "
                f"(or [draws, {', '.join(map(str, spec.shape))}], one per training step)."
            )
        if value.dtype != np.dtype(spec.dtype):
            raise VerificationError(
                f"Input {name!r} in {path} has dtype {value.dtype}, expected {spec.dtype}."
            )
        outside = _outside_range(value, spec)
        if outside is not None:
            raise VerificationError(f"Input {name!r} in {path} holds {outside}.")
        out[name] = value
    if len(lengths) > 1 or 0 in lengths:
        raise VerificationError(
            f"The inputs in {path} with a leading draw axis must all have the same positive length; "
            f"they have {', '.join(map(str, sorted(lengths)))}."
        )
    return out


def draws_in(arrays: Mapping[str, np.ndarray], specs: Mapping[str, Input]) -> int | None:
    """How many draws an inputs file holds along its leading axis; None without one."""
    for name, spec in specs.items():
        if np.ndim(arrays[name]) == len(spec.shape) + 1:
            return int(np.shape(arrays[name])[0])
    return None


def input_draw(arrays: Mapping[str, np.ndarray], specs: Mapping[str, Input], draw: int) -> dict[str, np.ndarray]:
    """Draw ``draw`` of an inputs file: arrays with a leading draw axis give their ``draw``-th
    value, the others the same one every time."""
    return {name: arrays[name][draw] if np.ndim(arrays[name]) == len(spec.shape) + 1 else arrays[name]
            for name, spec in specs.items()}


def _outside_range(value: np.ndarray, spec: Input) -> str | None:
    """What in ``value`` its Input does not allow, or None: values not among ``choices``,
    integers (class ids, indices) outside [low, high), NaN or infinite floats."""
    if value.size == 0:
        return None
    if spec.choices is not None:
        bad = value[~np.isin(value, np.asarray(spec.choices, dtype=value.dtype))]  # choices fit (Input)
        return f"{bad.flat[0].item()!r}, not one of its choices {list(spec.choices)}" if bad.size else None
    if np.issubdtype(value.dtype, np.integer) and (spec.low is not None or spec.high is not None):
        low = spec.low if spec.low is not None else 0  # the declared range is [0, high)
        high = spec.high
        bad = value[(value < low) | (value >= high)] if high is not None else value[value < low]
        where = f"[{low:g}, {high:g})" if high is not None else f"[{low:g}, ...)"
        return f"{int(bad.flat[0])}, outside its range {where}" if bad.size else None
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        return "NaN or infinite values"
    return None


def mask_index(meta: Any, step: int, micro: int = 0) -> int:
    """The dropout masks a micro-batch draws (``meta``: a GraphMeta): each micro-batch of each
    training step its own; with one micro-batch per step, the step's index."""
    return step * max(int(getattr(meta, "accumulate", 1)), 1) + micro


def draw_mask(
    p: float, scale: float, shape: list[int], seed: int, step: int, index: int,
    dtype: Any = np.float32,
) -> np.ndarray:
    """The dropout mask of dropout ``index`` at training step ``step``: each element kept with
    probability 1 - p; kept elements hold ``scale`` (the framework's 1/(1-p) or 1), dropped 0.
    Both graphs of a comparison, and the native runs, get the same masks."""
    rng = np.random.default_rng([seed, step, index, 0x44524F50])  # "DROP"
    keep = rng.random(shape) >= p
    return (keep * scale).astype(dtype)


def dropout_feeds(
    calls: list[Mapping[str, Any]], seed: int, step: int, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    """Graph inputs ``dropout:<k>`` for one step, from a graph's recorded dropout calls.

    Dropout ``k`` draws mask index ``calls[k]["mask_index"]`` where the call has one (a
    candidate's dropouts, given their reference counterparts' indices by :func:`with_masks_of`),
    else ``k``."""
    return {
        f"dropout:{k}": draw_mask(
            c["p"], c["scale"], c["shape"], seed, step, c.get("mask_index", k), dtype
        )
        for k, c in enumerate(calls)
    }


def mask_layout(shape: Sequence[int]) -> list[int]:
    """A mask shape without its 1s: masks of one layout are the same draws in the same order
    (:func:`draw_mask`), so torch's dropout of a pooled [N, C, 1, 1] and Paddle's of the
    flattened [N, C] (inception_v3) correspond element by element."""
    return [int(d) for d in shape if d != 1]


def dropout_nodes(model: Any) -> dict[int, str]:
    """Dropout index -> name of the node that applies the mask ``dropout:<k>`` (its consumer)."""
    out: dict[int, str] = {}
    for node in model.graph.node:
        for name in node.input:
            if name.startswith("dropout:") and name[len("dropout:"):].isdigit():
                out.setdefault(int(name[len("dropout:"):]), node.name or node.op_type)
    return out


def describe_dropouts(graph: Any, indices: Sequence[int]) -> str:
    """``dropout:2 (node 'mul_5', scope 'D.drop', p 0.5, mask [4, 8])``, for warnings and hints."""
    nodes = dropout_nodes(graph.model)
    calls = graph.meta.dropout
    parts = []
    for k in indices:
        call = calls[k]
        scope = call.get("scope")
        parts.append(
            f"dropout:{k} (node {nodes.get(k, '?')!r}, scope "
            f"{(scope or '(loss function)') if scope is not None else 'not recorded'}, "
            f"p {call['p']:g}, mask {list(call['shape'])})"
        )
    return ", ".join(parts)
