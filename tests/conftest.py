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


def write_spec_files(tmp_path_factory, folder: str, sources: dict[str, str]) -> dict[str, Path]:
    """Write spec files ``<name>.py`` from source texts into a new folder, for fixtures wider
    than one test (``write_spec`` serves single tests); returns name -> path."""
    base = tmp_path_factory.mktemp(folder)
    out = {}
    for name, source in sources.items():
        out[name] = base / f"{name}.py"
        out[name].write_text(textwrap.dedent(source))
    return out


def variant_exporter(tmp_path_factory, folder: str, source_of):
    """``export(variant)``: the graph of the spec ``source_of(variant)`` returns (its text),
    written as ``<folder>_<variant>.py`` (never a name like ``torch.py``, which would hide the
    framework) and exported once."""
    base = tmp_path_factory.mktemp(folder)
    cache: dict[str, Path] = {}

    def export(variant: str) -> Path:
        if variant not in cache:
            path = base / f"{folder}_{variant}.py"
            path.write_text(textwrap.dedent(source_of(variant)))
            cache[variant] = path.with_suffix(".onnx")
            lg.export(f"{path}:spec", cache[variant])
        return cache[variant]

    return export


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


#: Seeds at which the examples' losses are checked eager against ONNX Runtime: one seed proves
#: little (the loss examples once passed at seed 3 and failed at 6 of 20 seeds).
SEEDS = (0, 1, 2, 3, 4)


def eager_and_ort_over_seeds(target: str, run_eager, seeds=SEEDS):
    """Export ``target`` once, then for each seed the loss values from the framework's eager run
    and from the exported graph on ORT, on the same inputs: ``(spec, graph, {seed: (eager, ort)})``.

    ``run_eager(spec, inputs)`` returns the loss function's result as ``{name: float}``. The
    model is put in the mode ``spec.train`` asks for before each eager run (export leaves it in
    eval mode, but nothing should depend on that); the framework's ``run_eager`` does so too, for
    callers of its own."""
    from lossgraph.inputs import make_inputs
    from lossgraph.runtime.session import OrtRunner
    from lossgraph.spec import load_spec

    spec = load_spec(target)
    graph = lg.export(spec)
    runner = OrtRunner(graph.model)
    values = {}
    for seed in seeds:
        inputs = make_inputs(spec.inputs, seed)
        # torch's Module and Paddle's Layer both have train() and eval()
        spec.model.train() if spec.train else spec.model.eval()
        eager = run_eager(spec, inputs)
        ort = runner.run(inputs, outputs=graph.meta.losses)
        values[seed] = (eager, {k: float(v) for k, v in ort.items()})
    return spec, graph, values


def assert_loss_examples_agree(values, bound: float = 4.0, tol: float = 1e-6) -> None:
    """Every loss below ``bound`` and within ``tol`` of eager at every seed: the loss examples
    keep every loss below 4, where float32 rounding (a few ulps of 2.4e-7) cannot reach 1e-6
    (see the comment above ``X`` in the examples)."""
    for seed, (eager, ort) in values.items():
        assert set(ort) == set(eager)
        for loss in ort:
            assert abs(eager[loss]) < bound, (seed, loss, eager[loss])
            assert abs(ort[loss] - eager[loss]) <= tol, (seed, loss, ort[loss], eager[loss])


def eager_and_ort(target: str, run_eager, seed: int = 3):
    """:func:`eager_and_ort_over_seeds` at one seed: ``(graph, eager, ort)``."""
    _, graph, values = eager_and_ort_over_seeds(target, run_eager, (seed,))
    return (graph, *values[seed])


def one_line_error(result) -> str:
    """Assert a CLI result is a one-line error with exit code 2 and return the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]
