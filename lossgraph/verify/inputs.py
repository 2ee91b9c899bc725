"""Seeded fake inputs drawn from :class:`lossgraph.Input` specs, and ``--inputs FILE.npz``.

Each input has its own generator, ``default_rng([seed, crc32(name)])``, so adding or reordering
inputs never changes the values of the others and both sides of a comparison get bit-identical
data.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lossgraph.errors import VerificationError
from lossgraph.spec import Input


def make_input(spec: Input, name: str, seed: int) -> np.ndarray:
    """Draw one input. Floats are drawn in float64 and rounded to the spec's dtype."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
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
        values = rng.choice(np.asarray(spec.choices), spec.shape)
    else:
        values = rng.integers(0, 2, spec.shape).astype(bool)
    return np.ascontiguousarray(values.astype(spec.dtype))


def make_inputs(specs: Mapping[str, Input], seed: int = 0) -> dict[str, np.ndarray]:
    """Draw every input of a graph from its spec."""
    return {name: make_input(spec, name, seed) for name, spec in specs.items()}


def load_inputs(path: str | Path, specs: Mapping[str, Input]) -> dict[str, np.ndarray]:
    """Read ``--inputs FILE.npz`` and check it holds every input with the right shape and dtype."""
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
    for name, spec in specs.items():
        value = arrays[name]
        if tuple(value.shape) != tuple(spec.shape):
            raise VerificationError(
                f"Input {name!r} in {path} has shape {list(value.shape)}, expected {list(spec.shape)}."
            )
        if value.dtype != np.dtype(spec.dtype):
            raise VerificationError(
                f"Input {name!r} in {path} has dtype {value.dtype}, expected {spec.dtype}."
            )
        out[name] = value
    return out


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


def dropout_feeds(calls: list[Mapping[str, Any]], seed: int, step: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Graph inputs ``dropout:<k>`` for one step, from a graph's recorded dropout calls."""
    return {
        f"dropout:{k}": draw_mask(c["p"], c["scale"], c["shape"], seed, step, k, dtype)
        for k, c in enumerate(calls)
    }
