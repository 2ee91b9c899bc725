"""Exporting both sides of a check at once: the two exports run side by side, and exported graphs
are cached so that re-running after a fix re-exports only the side that changed.

A cached graph is reused only when everything its export read is unchanged: the key holds the
spec's path and function, the seed, the working directory (graphs name source lines relative to
it), lossgraph's own source and the versions of the packages an export runs through; the entry
records every file the export read from outside installed packages -- the spec file, the Python
modules it imported (a model kept in another package of the user's included), and data files such
as checkpoints -- with its SHA-256, and any of them changed or gone makes it a miss. ``--no-cache``
bypasses the cache; ``LOSSGRAPH_CACHE_DIR`` moves it (default ``~/.cache/lossgraph``), and it is
pruned to ``LOSSGRAPH_CACHE_MB`` (default 2048) megabytes, oldest entries first.

Each export runs in a process of its own (``python -m lossgraph.exporters.cache``), both side by
side: on two cores the slower export sets the time, not their sum.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from lossgraph.errors import ExportError, LossgraphError, SpecError, one_line
from lossgraph.files import OutputError, check_outputs, write_atomic
from lossgraph.graph import copy_graph_file
from lossgraph.progress import say
from lossgraph.spec import parse_target

CACHE_ENV = "LOSSGRAPH_CACHE_DIR"
CACHE_MB_ENV = "LOSSGRAPH_CACHE_MB"
DEFAULT_CACHE_MB = 2048
#: Bump when the layout of an entry changes.
ENTRY_VERSION = 1
#: Packages whose version changes what an export writes.
EXPORT_PACKAGES = ("torch", "onnxscript", "paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "numpy")
GRAPH_FILE = "graph.onnx"
DEPS_FILE = "deps.json"
KEPT_NAMES = ("reference.onnx", "candidate.onnx")


@dataclass
class Exported:
    """One side of a check: where its graph is and how it was obtained."""

    target: str
    path: Path
    #: taken from the cache instead of exported now
    cached: bool
    #: seconds its export took (0 when cached)
    seconds: float


@contextlib.contextmanager
def exported_pair(
    targets: Sequence[str], seed: int, use_cache: bool = True, keep: str | Path | None = None
) -> Iterator[list[Exported]]:
    """Export (or take from the cache) the graphs of ``targets`` (``FILE.py[:NAME]`` each) and
    yield where they are; with ``keep``, they are also copied into that folder as
    ``reference.onnx`` and ``candidate.onnx`` (and the sides name those copies). Raises ExportError / SpecError in one line."""
    specs = [parse_target(t)[0] for t in targets]
    for spec in specs:
        if not spec.is_file() or spec.suffix != ".py":
            raise SpecError(f"Spec file {spec} {'is not a .py file' if spec.exists() else 'does not exist'}.")
    keep_paths = _keep_paths(keep, len(targets))
    check_outputs(keep_paths, inputs=specs)
    cache = cache_dir() if use_cache else None
    with tempfile.TemporaryDirectory(prefix="lossgraph-check-") as tmp:
        sides: list[Exported | None] = [
            _lookup(cache, target, seed) if cache is not None else None for target in targets
        ]
        missing = [i for i, side in enumerate(sides) if side is None]
        if missing:
            say("exporting " + " and ".join(targets[i] for i in missing))
        for i, side in _export_missing([targets[i] for i in missing], seed, Path(tmp)):
            sides[missing[i]] = _store(cache, side, seed) if cache is not None else side
        done = [side for side in sides if side is not None]
        if cache is not None:
            _prune(cache, keep={side.path.parent for side in done})
        for side, path in zip(done, keep_paths):
            copy_graph_file(side.path, path)
            side.path = path
        yield done


def cache_dir() -> Path:
    """The folder of cached graphs (created when missing)."""
    given = os.environ.get(CACHE_ENV)
    base = Path(given) if given else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lossgraph"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"Cannot use the cache folder {base}: {exc.strerror or exc} (set {CACHE_ENV}, or give --no-cache)."
        ) from None
    return base


def _keep_paths(keep: str | Path | None, count: int) -> list[Path]:
    if keep is None:
        return []
    folder = Path(keep)
    if not folder.is_dir():
        raise OutputError(f"Cannot write into --keep {keep}: no such folder.")
    return [folder / name for name in KEPT_NAMES[:count]]


def _key(target: str, seed: int) -> str:
    path, name = parse_target(target)
    parts = {
        "entry": ENTRY_VERSION,
        "spec": str(path.resolve()),
        "name": name,
        "seed": seed,
        "cwd": os.getcwd(),
        "lossgraph": lossgraph_source_digest(),
        "packages": _versions(),
        "python": sys.version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def lossgraph_source_digest() -> str:
    """SHA-256 of lossgraph's own source files: an export by other code is another graph."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    out = {}
    for name in EXPORT_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _lookup(cache: Path, target: str, seed: int) -> Exported | None:
    entry = cache / _key(target, seed)
    graph = entry / GRAPH_FILE
    try:
        deps = json.loads((entry / DEPS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not graph.is_file() or not isinstance(deps, dict) or not deps:
        return None
    for path, digest in deps.items():
        if file_digest(Path(path)) != digest:
            return None
    with contextlib.suppress(OSError):
        os.utime(entry)  # pruning removes the least recently used entries first
    return Exported(target, graph, cached=True, seconds=0.0)


def _store(cache: Path, side: Exported, seed: int) -> Exported:
    """Move a fresh export into the cache (its dependencies are in ``<graph>.deps.json``)."""
    entry = cache / _key(side.target, seed)
    deps = Path(f"{side.path}.deps.json")
    try:
        entry.mkdir(exist_ok=True)
        copy_graph_file(side.path, entry / GRAPH_FILE)
        write_atomic(entry / DEPS_FILE, deps.read_bytes())  # last: an entry without it is a miss
    except (OSError, LossgraphError):
        return side  # a cache that cannot be written costs time, not the result
    return Exported(side.target, entry / GRAPH_FILE, cached=False, seconds=side.seconds)


def _prune(cache: Path, keep: set[Path]) -> None:
    """Remove the least recently used entries until the cache fits its size."""
    try:
        limit = float(os.environ.get(CACHE_MB_ENV, DEFAULT_CACHE_MB)) * 2**20
    except ValueError:
        limit = DEFAULT_CACHE_MB * 2**20
    entries = []
    for entry in cache.iterdir():
        with contextlib.suppress(OSError):
            size = sum(f.stat().st_size for f in entry.iterdir())
            entries.append((entry.stat().st_mtime, entry, size))
    total = sum(size for _, _, size in entries)
    for _, entry, size in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry in keep:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _export_missing(targets: Sequence[str], seed: int, tmp: Path) -> Iterator[tuple[int, Exported]]:
    """Export ``targets``, each in a process of its own, side by side (an export imports its
    framework and leaves memory behind that this process, which then verifies, is better
    without; and a module the user edited since this process imported it is read afresh)."""
    children = []
    for i, target in enumerate(targets):
        out = tmp / f"side{i}.onnx"
        children.append((i, target, out, time.perf_counter(), _start_child(target, out, seed)))
    try:
        ended: dict[int, float] = {}
        while len(ended) < len(children):  # each side's own time, whichever ends first
            for i, _, _, start, child in children:
                if i not in ended and child.poll() is not None:
                    ended[i] = time.perf_counter() - start
            time.sleep(0.02)
        for i, target, out, _, child in children:
            error = Path(f"{out}.error")
            if child.returncode != 0 or not out.is_file():
                message = error.read_text().strip() if error.is_file() else ""
                raise ExportError(message or (
                    f"Exporting {target} failed: its export process ended with exit code {child.returncode}."
                ))
            yield i, Exported(target, out, cached=False, seconds=ended[i])
    finally:
        for *_, child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _start_child(target: str, out: Path, seed: int) -> subprocess.Popen:
    env = dict(os.environ, GLOG_minloglevel=os.environ.get("GLOG_minloglevel", "2"))
    return subprocess.Popen(
        [sys.executable, "-m", "lossgraph.exporters.cache", target, str(out), str(seed)],
        stdin=subprocess.DEVNULL, env=env,
    )


# -- what an export reads -----------------------------------------------------------------------

#: per export being recorded: the files it opened to read, and those it wrote (its own
#: temporary files, such as Paddle's generated to_static code, are no dependency)
_READS: list[tuple[set[str], set[str]]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _READS:
        return
    try:  # an error here would be the opener's: never raise
        path, mode, flags = args
        if isinstance(path, int):
            return
        if isinstance(mode, str):
            writing = any(c in mode for c in "wax+")
        else:
            writing = bool((flags or 0) & (os.O_WRONLY | os.O_RDWR))
        _READS[-1][1 if writing else 0].add(os.fsdecode(path))
    except Exception:  # noqa: BLE001 - an open lossgraph cannot read is one it does not track
        return


@lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    """Folders whose files are installed code, not the user's: Python's own and site-packages,
    and lossgraph (its source is in the key)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "/proc", "/sys", "/dev",
             "/etc", "/usr/lib", "/usr/share"}
    roots.update(p for p in sysconfig.get_paths().values() if p)
    with contextlib.suppress(AttributeError):
        roots.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    roots.add(str(Path(__file__).resolve().parents[1]))
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots))


def _user_file(path: str) -> str | None:
    """The absolute path of a file the user owns (not installed code, not a folder), or None."""
    real = os.path.realpath(path)
    if real.startswith(_installed_roots()) or not os.path.isfile(real):
        return None
    if real.endswith(".pyc"):  # a module read from its bytecode: its source is what the user edits
        import importlib.util

        with contextlib.suppress(ValueError, NotImplementedError):
            source = importlib.util.source_from_cache(real)
            return source if os.path.isfile(source) else None
    return real


def export_recorded(target: str, out: Path, seed: int) -> None:
    """Export ``target`` to ``out`` and write the files the export read, with their SHA-256, to
    ``<out>.deps.json``."""
    from lossgraph.exporters import export

    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)  # an audit hook cannot be removed: it records only inside this
        _audit.installed = True  # type: ignore[attr-defined]
    before = set(sys.modules)
    _READS.append((set(), set()))
    try:
        export(target, out, seed=seed)
    finally:
        reads, writes = _READS.pop()
    reads -= {os.path.realpath(p) for p in writes} | writes
    reads.add(str(parse_target(target)[0]))
    for name in set(sys.modules) - before:
        reads.add(getattr(sys.modules.get(name), "__file__", None) or "")
    deps = {}
    for path in sorted(filter(None, (_user_file(p) for p in reads if p))):
        digest = file_digest(Path(path))
        if digest is not None:
            deps[path] = digest
    write_atomic(f"{out}.deps.json", json.dumps(deps, indent=1))


def main(argv: list[str]) -> int:
    """``python -m lossgraph.exporters.cache TARGET OUT SEED``: export one side; a failure is
    written, in one line, to ``OUT.error`` (exit code 2)."""
    from lossgraph.exporters import silence_framework_noise

    target, out, seed = argv
    silence_framework_noise()
    try:
        export_recorded(target, Path(out), int(seed))
    except LossgraphError as exc:
        message = " ".join(str(exc).split())
    except MemoryError:
        message = f"Exporting {target} ran out of memory."
    except BaseException as exc:  # noqa: BLE001 - reported in one line by the parent
        if os.environ.get("LOSSGRAPH_DEBUG"):
            traceback.print_exc()
        message = (f"lossgraph stopped on an error it does not handle while exporting {target}: "
                   f"{type(exc).__name__}: {one_line(exc)} (rerun with --debug for the traceback).")
    else:
        return 0
    write_atomic(f"{out}.error", message)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
