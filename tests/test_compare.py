"""The tolerance rule as compare_arrays applies it, against its plain float64 definition."""

from __future__ import annotations

import numpy as np
import pytest

from lossgraph.errors import VerificationError
from lossgraph.verify.compare import Tolerance, compare_arrays


def by_definition(reference, candidate, tol: Tolerance):
    """max |c - r|, max |c - r| / |r| (inf where r = 0 < |c - r|, 0 where both are 0), the
    smallest atol that passes, and whether every element passes."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    diff, magnitude = np.abs(cand - ref), np.abs(ref)
    rel = [d / m if m > 0 else (np.inf if d > 0 else 0.0) for d, m in zip(diff.ravel(), magnitude.ravel())]
    required = max(0.0, float(np.max(diff - tol.rtol * magnitude)))
    passed = all(d <= tol.atol + tol.rtol * m for d, m in zip(diff.ravel(), magnitude.ravel()))
    return float(diff.max()), float(max(rel)), required, passed


def drawn_pairs(seed: int):
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        ref = rng.standard_normal((3, 17)).astype(dtype)
        ref[0, :4] = 0.0  # zeros in the reference: relative diffs of inf and of 0
        cand = ref + (rng.standard_normal(ref.shape) * 1e-6).astype(dtype)
        cand[0, :2] = 0.0
        yield ref, cand
        yield ref, ref.copy()  # equal: no diff anywhere
    yield rng.integers(-5, 5, (4, 4)), rng.integers(-5, 5, (4, 4))
    yield np.array([True, False, True]), np.array([True, True, True])
    yield np.float32(2.5), np.float32(2.5000002)
    yield np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)


@pytest.mark.parametrize("tol", [Tolerance(1e-6), Tolerance(0.0), Tolerance(1e-7, 1e-5), Tolerance(0.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_definition(tol, seed):
    for ref, cand in drawn_pairs(seed):
        got = compare_arrays(ref, cand, tol)
        max_abs, max_rel, required, passed = by_definition(ref, cand, tol)
        assert (got.max_abs_diff, got.max_rel_diff, got.passed) == (max_abs, max_rel, passed)
        assert got.required_tol == pytest.approx(required, rel=1e-12, abs=0)
        assert got.shape == np.shape(ref)


def test_the_required_tolerance_is_the_threshold():
    ref = np.array([1.0, -2.0, 0.0], np.float32)
    cand = ref + np.array([1e-6, -3e-6, 2e-7], np.float32)
    for rtol in (0.0, 1e-6):
        required = compare_arrays(ref, cand, Tolerance(0.0, rtol)).required_tol
        assert compare_arrays(ref, cand, Tolerance(required * (1 + 1e-9), rtol)).passed
        assert not compare_arrays(ref, cand, Tolerance(required * (1 - 1e-6), rtol)).passed


def test_empty_and_mismatched_shapes():
    assert compare_arrays(np.zeros((0, 3)), np.zeros((0, 3)), Tolerance()).passed
    with pytest.raises(VerificationError, match=r"shapes \[2\] and \[3\]"):
        compare_arrays(np.zeros(2), np.zeros(3), Tolerance())


@pytest.mark.parametrize("tol", [Tolerance(1e-6, 0.0), Tolerance(1e-6, 1e-3)])
def test_a_large_array_compared_in_blocks_gives_the_whole_arrays_result(tol, monkeypatch):
    """Blocks of rows (VGG11's 103M-element weight in one go took three 822 MB float64 arrays):
    every measure is the same as of the whole, transposed views and zeros included."""
    from lossgraph.verify import compare as compare_module

    rng = np.random.default_rng(3)
    reference = rng.normal(size=(37, 23)).astype(np.float32)
    reference[5, :4] = 0.0
    candidate = reference + rng.normal(scale=1e-5, size=reference.shape).astype(np.float32)
    candidate[5, 2] = 1e-7  # a difference where the reference is 0: relative inf
    for ref, cand in ((reference, candidate), (reference.T, candidate.T)):
        whole = compare_arrays(ref, cand, tol)
        monkeypatch.setattr(compare_module, "BLOCK", 40)  # two rows of 23, or one of 37
        blocked = compare_arrays(ref, cand, tol)
        monkeypatch.setattr(compare_module, "BLOCK", 1 << 22)
        assert blocked == whole
        assert whole.max_rel_diff == np.inf and not whole.passed
