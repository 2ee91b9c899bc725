"""Shared fixtures: the repository's examples, exported once per session, and a CLI runner."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import lossgraph as lg
from lossgraph.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DISCOGAN = EXAMPLES / "discogan"
LOSSES = EXAMPLES / "losses"

for folder in (DISCOGAN, LOSSES):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


class Cli:
    """Runs ``lossgraph`` in-process and keeps stdout and stderr apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec file from source text and return its path."""

    def write(source: str, name: str = "spec_file.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export ``FILE.py:NAME`` once per session; returns the .onnx path."""
    folder = tmp_path_factory.mktemp("exported")
    cache: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in cache:
            out = folder / (target.replace("/", "_").replace(":", "__").replace(".py", "") + ".onnx")
            lg.export(target, out)
            cache[target] = out
        return cache[target]

    return get


def eager_and_ort(target: str, run_eager, seed: int = 3):
    """Loss values from the framework's eager run and from the exported graph on ORT, same
    inputs. ``run_eager(spec, inputs)`` returns the loss function's result as ``{name: float}``."""
    from lossgraph.spec import load_spec
    from lossgraph.verify.inputs import make_inputs
    from lossgraph.verify.runtime import OrtRunner

    spec = load_spec(target)
    graph = lg.export(spec)
    inputs = make_inputs(spec.inputs, seed)
    eager = run_eager(spec, inputs)
    ort = OrtRunner(graph.model).run(inputs, outputs=graph.meta.losses)
    return graph, eager, {k: float(v) for k, v in ort.items()}


def one_line_error(result) -> str:
    """Assert a CLI result is a one-line error with exit code 2 and return the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]
