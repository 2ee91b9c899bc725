"""A helper for users' own test suites: assert that a port trains the same.

    from lossgraph.testing import assert_same_training

    def test_port_trains_the_same():
        assert_same_training("models/resnet_torch.py:spec", "port/resnet_paddle.py:spec", steps=3)

Spec files are exported side by side, each in a process of its own, and cached as by
``lossgraph check`` (a spec whose files are unchanged is not exported again); :class:`Spec`
objects built in the test are exported here.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lossgraph.spec import Spec
from lossgraph.verify.pipeline import VerifyResult


def assert_same_training(
    reference: str | Path | Spec,
    candidate: str | Path | Spec,
    grads: bool = True,
    steps: int = 3,
    tol: float = 1e-6,
    seed: int = 0,
    cache: bool = True,
    **verify_options: Any,
) -> VerifyResult:
    """Export ``reference`` and ``candidate`` (``FILE.py[:NAME]`` paths or :class:`Spec` objects)
    and verify that the candidate trains as the reference does: losses, with ``grads`` the
    gradients, ``steps`` training steps, within ``tol`` (more options: those of
    :func:`lossgraph.verify`, e.g. ``rtol``, ``native``, ``name_map``). Returns the result;
    raises AssertionError whose message is the report's summary (verdict, first divergence and
    its likely cause), with the whole JSON report as the error's ``report`` attribute. A spec or
    graph lossgraph cannot use raises its LossgraphError."""
    from lossgraph import verify
    from lossgraph.verify.report import report_dict, summary_text

    if verify_options.get("native") and "native_runner" not in verify_options:
        from lossgraph.exporters.native import run_native

        verify_options["native_runner"] = run_native
    with _graphs(reference, candidate, seed, cache) as (ref, cand):
        result = verify(ref, cand, grads=grads, steps=steps, tol=tol, seed=seed, **verify_options)
    if not result.passed:
        error = AssertionError(summary_text(result))
        error.report = report_dict(result)  # type: ignore[attr-defined]
        raise error
    return result


@contextlib.contextmanager
def _graphs(reference: Any, candidate: Any, seed: int, cache: bool) -> Iterator[tuple[str, str]]:
    """The two sides' graph files while the comparison runs: spec files through the check's
    exports (cached), Spec objects exported in this process."""
    from lossgraph.exporters import export
    from lossgraph.exporters.cache import exported_pair

    sides = [reference, candidate]
    files = [i for i, side in enumerate(sides) if not isinstance(side, Spec)]
    with tempfile.TemporaryDirectory(prefix="lossgraph-test-") as tmp, exported_pair(
        [str(sides[i]) for i in files], seed, use_cache=cache
    ) as exported:
        paths = {i: str(side.path) for i, side in zip(files, exported)}
        for i, side in enumerate(sides):
            if isinstance(side, Spec):
                paths[i] = str(Path(tmp) / f"side{i}.onnx")
                export(side, paths[i], seed=seed)
        yield paths[0], paths[1]
