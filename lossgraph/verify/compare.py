"""Comparing values: the tolerance rule, per-value diffs and the NaN/Inf check.

The tolerance rule (also in ``lossgraph verify --help``): a value passes when every element
satisfies ``|candidate - reference| <= tol + rtol * |reference|``. For each diff lossgraph also
reports the smallest ``tol`` that would have passed with the given ``rtol``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from lossgraph.errors import GraphLoadError, UnsupportedOpError, VerificationError

TOLERANCE_RULE = "|candidate - reference| <= tol + rtol * |reference|, element-wise"


@dataclass(frozen=True)
class Tolerance:
    """Absolute (``atol``, the CLI's ``--tol``) and relative (``rtol``) tolerance."""

    atol: float = 1e-6
    rtol: float = 0.0

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0 and np.isfinite(self.atol) and np.isfinite(self.rtol)):
            raise VerificationError(
                f"Tolerances must be finite and >= 0, got tol={self.atol}, rtol={self.rtol}."
            )

    def to_dict(self) -> dict[str, object]:
        return {"atol": self.atol, "rtol": self.rtol, "rule": TOLERANCE_RULE}


@dataclass(frozen=True)
class ValueDiff:
    """How far a candidate value is from the reference value."""

    max_abs_diff: float
    max_rel_diff: float
    required_tol: float  # the smallest atol that would pass with the same rtol
    passed: bool
    shape: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return self.passed


#: elements compared at a time: the float64 passes of one block stay small (VGG11's 103M-element
#: classifier weight took three 822 MB arrays at once)
BLOCK = 1 << 22


def compare_arrays(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> ValueDiff:
    """Compare two arrays of one shape in float64 under the tolerance rule.

    Each float64 pass reads the float32 values directly (no widened copies first): a training
    step compares hundreds of arrays, and the plain form (18 passes) took a fifth of
    ``lossgraph verify --grads --steps 3`` on DiscoGAN. A large array is compared in blocks of
    rows (``BLOCK`` elements or so): every measure is a maximum (or all of), so the blocks'
    combine to the whole's exactly."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise VerificationError(
            f"Cannot compare values of shapes {list(reference.shape)} and {list(candidate.shape)}."
        )
    if reference.size == 0:
        return ValueDiff(0.0, 0.0, 0.0, True, reference.shape)
    non_finite = _non_finite_diff(reference, candidate, tol)
    if non_finite is not None:
        return non_finite
    if reference.ndim == 0 or reference.size <= BLOCK:
        blocks = [_compare_block(reference, candidate, tol)]
    else:
        rows = max(1, BLOCK // (reference.size // reference.shape[0]))
        blocks = [_compare_block(reference[i:i + rows], candidate[i:i + rows], tol)
                  for i in range(0, reference.shape[0], rows)]
    max_abs, max_rel, required, passed = (max(b[0] for b in blocks), max(b[1] for b in blocks),
                                          max(b[2] for b in blocks), all(b[3] for b in blocks))
    return ValueDiff(max_abs, max_rel, required, passed, reference.shape)


def _compare_block(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> tuple[float, float, float, bool]:
    """(max |diff|, max relative diff, smallest tol that passes, passed) of finite arrays."""
    diff = np.subtract(candidate, reference, dtype=np.float64, out=np.empty(reference.shape))
    np.abs(diff, out=diff)
    max_abs = float(diff.max())
    magnitude = np.abs(reference, dtype=np.float64, out=np.empty(reference.shape))
    max_rel = 0.0
    if max_abs > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.divide(diff, magnitude, out=np.empty(reference.shape))  # x / 0 = inf where the reference is 0; 0 / 0 = nan
        max_rel = float(np.fmax.reduce(rel, axis=None))  # fmax skips the nans (0 / 0: no diff)
        max_rel = 0.0 if np.isnan(max_rel) else max_rel
        del rel
    if tol.rtol == 0:
        return max_abs, max_rel, max_abs, max_abs <= tol.atol
    bound = np.multiply(magnitude, tol.rtol, out=magnitude)
    required = max(float(np.max(diff - bound)), 0.0)
    passed = bool(np.all(diff <= np.add(bound, tol.atol, out=bound)))
    return max_abs, max_rel, required, passed


def _non_finite_diff(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> ValueDiff | None:
    """NaN or Inf where the other side has something else is a difference of size inf (NaN/Inf
    on one side only is a divergence); the same NaN/Inf on both sides counts as equal there and
    the rest is compared. None when both are finite (the common case, checked cheaply)."""
    if not (_is_float(reference) or _is_float(candidate)):
        return None
    finite_ref, finite_cand = np.isfinite(reference), np.isfinite(candidate)
    if finite_ref.all() and finite_cand.all():
        return None
    both = ~finite_ref & ~finite_cand
    same = both & ((np.isnan(reference) & np.isnan(candidate)) | (reference == candidate))
    if np.any(finite_ref != finite_cand) or not np.array_equal(both, same):
        return ValueDiff(float("inf"), float("inf"), float("inf"), False, reference.shape)
    keep = finite_ref & finite_cand
    inner = compare_arrays(reference[keep], candidate[keep], tol)
    return ValueDiff(inner.max_abs_diff, inner.max_rel_diff, inner.required_tol, inner.passed,
                     reference.shape)


def _is_float(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.floating)


def find_non_finite(values: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the float arrays that hold NaN or Inf."""
    return [
        name
        for name, value in values.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value))
    ]


def summarize(value: np.ndarray) -> dict[str, object]:
    """Shape, min, max, mean and standard deviation of a value (for reports)."""
    v64 = np.asarray(value, dtype=np.float64)
    finite = v64[np.isfinite(v64)]
    stats: dict[str, object] = {"shape": list(v64.shape)}
    if finite.size:
        stats.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()),
                     std=float(finite.std()))
    if finite.size != v64.size:
        stats["non_finite"] = int(v64.size - finite.size)
    return stats


@contextmanager
def on_side(side: str, path: str) -> Iterator[None]:
    """An op that cannot be differentiated or run is named with the side whose graph holds it,
    in every mode alike (``--grads``, ``--steps``, localization)."""
    try:
        yield
    except (UnsupportedOpError, GraphLoadError) as error:
        where = f"The {side} graph ({path})" if path else f"The {side} graph"
        raise type(error)(f"{where}: {error}") from error
