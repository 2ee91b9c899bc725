"""Progress of a long run (exports, training steps, the float64 re-run, localization), told to
whoever listens: the CLI shows it on stderr when stderr is a terminal; nothing listens otherwise.
At the bottom floor beside the errors, so that every floor can say where it is."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

_LISTENERS: list[Callable[[str], None]] = []


@contextlib.contextmanager
def reporting(listener: Callable[[str], None]) -> Iterator[None]:
    """Send the progress messages said inside the block to ``listener``."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def say(message: str) -> None:
    """Tell the innermost listener, if any, what the run is doing now."""
    if _LISTENERS:
        _LISTENERS[-1](message)
