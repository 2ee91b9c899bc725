"""The ONNX Runtime floor, under the autodiff, the optimizers, the verifier and the exporters.

- :mod:`~lossgraph.runtime.session`: :class:`OrtRunner`, one ONNX Runtime session over a
  prepared graph, with the CPU rewrites it runs (:mod:`~lossgraph.runtime.nchwc`,
  :mod:`~lossgraph.runtime.conv_transpose`, written with :mod:`~lossgraph.runtime.rewrite`)
  and :func:`infer_types`, which measures on a session what static inference leaves open;
- :mod:`~lossgraph.runtime.types`: static element types and shapes, and constant folding.

It imports only :mod:`lossgraph.graph` and :mod:`lossgraph.errors` from the rest of lossgraph.
"""

from lossgraph.runtime.session import OrtRunner, infer_types
from lossgraph.runtime.types import FLOAT_TYPES, ValueType, constant_values

__all__ = ["FLOAT_TYPES", "OrtRunner", "ValueType", "constant_values", "infer_types"]
