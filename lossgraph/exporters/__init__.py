"""Exporters: a :class:`~lossgraph.Spec` in, a :class:`~lossgraph.graph.LossGraph` out.

The only place in lossgraph that imports torch or paddle, and only when an export asks for it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lossgraph.errors import ExportError, LossgraphError, one_line
from lossgraph.graph import LossGraph
from lossgraph.spec import Spec, load_spec

DEFAULT_EXPORT_SEED = 0


def silence_framework_noise() -> None:
    """Hide what the frameworks print that does not concern a lossgraph user: Paddle's ccache
    warning at import and glog lines, and its "When training, we now always track global mean
    and variance" at every BatchNorm forward in training mode (lossgraph trains the model)."""
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")
    os.environ.setdefault("GLOG_minloglevel", "2")


def export(spec: Spec | str, output: str | Path | None = None, seed: int = DEFAULT_EXPORT_SEED) -> LossGraph:
    """Export a spec (or ``FILE.py:NAME``) to a LossGraph and optionally save it.

    The model's loss is also computed eagerly on the inputs drawn with ``seed``; the eager values
    and their difference to ONNX Runtime are recorded in ``graph.meta.eager``.
    """
    if isinstance(spec, str):
        spec = load_spec(spec)
    else:
        spec.validate()
    try:
        clash = [name for name in spec.inputs if name in spec.model.state_dict()]
        if clash:
            raise ExportError(
                f"{spec.source or 'the spec'}: input {clash[0]!r} has the name of a parameter or buffer "
                f"of the model; the graph names its inputs and parameters alike, so rename the input "
                f"(in Spec.inputs and the loss function's arguments)."
            )
        if spec.framework == "torch":
            from lossgraph.exporters.torch import export_torch

            graph = export_torch(spec, seed)
        else:
            warnings.filterwarnings("ignore", message="No ccache found")  # printed at paddle import
            from lossgraph.exporters.paddle import export_paddle

            graph = export_paddle(spec, seed)
    except SystemExit as exc:  # the model or loss called sys.exit(): no graph, and no success
        raise ExportError(
            f"{spec.source or 'the spec'}: the model or loss called sys.exit({exc.code!r}) while "
            f"it was run for the export."
        ) from exc
    except (LossgraphError, KeyboardInterrupt, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's model, loss or state_dict, run here
        raise ExportError(
            f"Exporting {spec.source or 'the spec'} failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    if output is not None:
        graph.save(output)
    return graph
