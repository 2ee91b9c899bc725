"""Writing lossgraph's outputs (graphs, JSON and HTML reports) safely.

Every output location is checked before the work starts -- its folder exists and can be written,
it is not a folder, it is none of the run's inputs and no other output of it -- so a long run
does not end in a traceback or overwrite the graph it read. Writes are atomic: the bytes go to a
temporary file beside the target, which is then renamed over it, so a failure (a full disk)
leaves an existing file byte-identical and no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lossgraph.errors import LossgraphError


class OutputError(LossgraphError):
    """An output cannot be written where the user asked."""


def check_outputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None] = ()) -> None:
    """Raise OutputError (one line) for the first output that cannot be written: its folder is
    missing or not writable, it is a folder, or it is the same file as an input or as another
    output. ``None`` entries (options not given) are skipped."""
    seen: list[Path] = []
    sources = [Path(p) for p in inputs if p is not None]
    for given in outputs:
        if given is None:
            continue
        try:
            _check_output(Path(given), given, sources, seen)
        except OSError as exc:  # a name too long, a folder that cannot be searched, ...
            raise OutputError(f"Cannot write {given}: {exc.strerror or exc}.") from None
        seen.append(Path(given))


def _check_output(path: Path, given: Any, sources: list[Path], seen: list[Path]) -> None:
    """Raise OutputError when ``path`` cannot be written (see :func:`check_outputs`); a symbolic
    link is checked where it points (its target's folder must exist)."""
    path = Path(os.path.realpath(path))
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"Cannot write {given}: it is a folder.")
    if path.exists() and not path.is_file():
        raise OutputError(f"Cannot write {given}: it is not a regular file.")
    if not folder.is_dir():
        raise OutputError(f"Cannot write {given}: folder {folder} does not exist.")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"Cannot write {given}: permission denied.")
    for source in sources:
        if _same_file(path, source):
            raise OutputError(f"Cannot write {given}: it is an input of this run ({source}).")
    for other in seen:
        if _same_file(path, other):
            raise OutputError(f"Cannot write {given} twice: two outputs name the same file.")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def write_atomic(path: str | Path, data: bytes | str | Iterable[bytes]) -> None:
    """Write ``data`` (text, bytes, or chunks of bytes written in turn) to ``path`` through a
    temporary file renamed over it; raise OutputError (one line) when the write fails, leaving
    any existing file as it was."""
    path = Path(os.path.realpath(path))  # through a symlink: its target is what gets written
    payload = data.encode("utf-8") if isinstance(data, str) else data
    chunks = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    folder = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=folder)
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            with contextlib.suppress(OSError):
                os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process's umask, read once at import (reading it sets it for a moment)
_UMASK = _read_umask()


def relative_to_cwd(path: str) -> str:
    """A path relative to the working directory when it lies below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path
