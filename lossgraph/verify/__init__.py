"""Framework-free verification: seeded inputs, ONNX Runtime execution, comparison, reports.

``lossgraph.verify`` is both this package and the public function: calling the package,
``lossgraph.verify(reference, candidate, tol=1e-6, ...)``, compares two exported graphs and
returns a :class:`~lossgraph.verify.pipeline.VerifyResult` (options: see ``VerifyOptions``).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, reference: Any, candidate: Any, **options: Any) -> Any:
        """Compare two exported graphs (paths or LossGraphs); see VerifyOptions."""
        from lossgraph.verify.pipeline import VerifyOptions, run_verify

        return run_verify(reference, candidate, VerifyOptions(**options))


sys.modules[__name__].__class__ = _CallableModule
