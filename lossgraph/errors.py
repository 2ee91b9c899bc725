"""The exceptions lossgraph raises.

Every user-facing failure is a :class:`LossgraphError`; the CLI turns it into one line and exit
code 2. :class:`InternalError` marks a broken invariant inside lossgraph itself and is deliberately
*not* a ``LossgraphError``, so it surfaces as a bug rather than as bad input.
"""

from __future__ import annotations


class LossgraphError(Exception):
    """Base class of every error caused by the user's input or environment."""


class SpecError(LossgraphError):
    """A spec file, its function or the Spec it returns is not usable."""


class ExportError(LossgraphError):
    """A model and loss could not be exported to a faithful ONNX graph."""


class UnsupportedOpError(LossgraphError):
    """A graph contains an op that lossgraph cannot run or differentiate."""


class VerificationError(LossgraphError):
    """Two graphs cannot be compared (no shared parameters, NaN in outputs, bad inputs, ...)."""


class GraphLoadError(VerificationError):
    """ONNX Runtime could not load or run a graph (a broken or tampered file)."""


class InternalError(Exception):
    """An invariant inside lossgraph does not hold: a bug, not bad input."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened to ``limit`` characters (an exception whose
    ``str()`` itself raises is named by its type)."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 - user code's exception with a broken __str__
        text = f"<{type(exc).__name__} whose message cannot be printed>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
