"""The ``lossgraph`` command line: parse, call the library, print. Nothing else."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from lossgraph import __version__
from lossgraph.errors import LossgraphError, one_line

EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2


EXIT_INTERRUPTED = 130


class FilePath(click.Path):
    """A file path option or argument: an empty one is bad usage (``--inputs ''`` used to fall
    back to seeded inputs silently, ``--name-map ''`` to read the working directory). An
    ``output`` is made absolute when given, so a spec that changes directory cannot move it."""

    def __init__(self, *args: Any, output: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.output = output

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: give a file name.", param, ctx)
        value = super().convert(value, param, ctx)
        return os.path.abspath(value) if self.output and isinstance(value, str) else value


class LossgraphGroup(click.Group):
    """Turns LossgraphError and click's usage errors into one line on stderr and exit code 2 (a
    traceback with --debug), and an interrupt (Ctrl-C) into exit code 130."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, KeyboardInterrupt,
                SystemExit):
            raise
        except LossgraphError as exc:
            if ctx.meta.get("lossgraph.debug"):
                traceback.print_exc()
            message = " ".join(str(exc).split())
            click.echo(f"Error: {message}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except MemoryError:
            if ctx.meta.get("lossgraph.debug"):
                traceback.print_exc()
            click.echo("Error: out of memory: the graphs, inputs or --steps are too large for this "
                       "machine.", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except BaseException as exc:  # noqa: BLE001 - what nothing else caught: one line, never a traceback
            if ctx.meta.get("lossgraph.debug"):
                traceback.print_exc()
            click.echo(f"Error: lossgraph stopped on an error it does not handle: {type(exc).__name__}: "
                       f"{one_line(exc)} (rerun with --debug for the traceback).", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=LossgraphGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lossgraph")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Check that a PyTorch <-> PaddlePaddle port trains the same, and find where it parts.

    \b
    lossgraph check discogan_torch.py discogan_paddle.py --grads --steps 5
    lossgraph export discogan_torch.py:spec  -o torch.onnx
    lossgraph export discogan_paddle.py:spec -o paddle.onnx
    lossgraph verify torch.onnx paddle.onnx --tol 1e-6
    lossgraph verify torch.onnx paddle.onnx --grads --steps 5 --html report.html
    lossgraph report report.json --html report.html

    Exit codes: 0 agree (or differ only by float32 rounding noise), 1 diverged,
    2 bad usage or bad input, 130 interrupted.
    """
    from lossgraph.exporters import silence_framework_noise

    ctx.meta["lossgraph.debug"] = debug
    silence_framework_noise()


@main.command()
@click.argument("target", metavar="FILE.py[:NAME]")
@click.option("-o", "--output", required=True, type=FilePath(dir_okay=False, output=True), help="Where to write the .onnx graph.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the inputs used for the eager-vs-ONNX check.")
def export(target: str, output: str, seed: int) -> None:
    """Export the Spec returned by NAME() (default: spec) in FILE.py to one ONNX graph.

    The graph's outputs are the named losses; parameters are initializers named by their
    state-dict keys; the metadata records the framework, inputs, trainability, optimizers and
    schedule. The summary compares each loss computed eagerly by the framework with ONNX Runtime.
    """
    from lossgraph.exporters import export as export_spec
    from lossgraph.files import check_outputs
    from lossgraph.spec import parse_target
    from lossgraph.verify.report import render_export

    check_outputs([output], inputs=[parse_target(target)[0]])
    graph = export_spec(target, output, seed=seed)
    render_export(graph, output, _console())


def verify_options(command: Any) -> Any:
    """The options of a comparison, shared by ``verify`` and ``check``."""
    for option in reversed(_VERIFY_OPTIONS):
        command = option(command)
    return command


_VERIFY_OPTIONS = [
    click.option("--tol", default=1e-6, show_default=True, type=float, help="Absolute tolerance: a value passes when |candidate - reference| <= tol + rtol * |reference|."),
    click.option("--rtol", default=0.0, show_default=True, type=float, help="Relative tolerance, added to --tol times |reference|."),
    click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the generated inputs."),
    click.option("--inputs", "inputs_file", type=FilePath(dir_okay=False), help="An .npz file with every input, instead of seeded ones; an array with one more, leading axis gives each training step (each micro-batch of Spec.accumulate) its own value."),
    click.option("--name-map", type=FilePath(dir_okay=False), help='JSON {"ref.param": "cand.param" | {"name": ..., "transpose": true} | {"name": ..., "rows": [start, stop]} | [{"name": ..., "rows": [start, stop]}, ...]} overriding the parameter pairing: a slice of a packed candidate parameter, or a packed reference parameter split over several ("cols" slices axis 1).'),
    click.option("--allow-unmapped", is_flag=True, help="Compare even if some trainable parameters cannot be paired (they keep their own values); buffers without counterpart never need it."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="ONNX Runtime execution provider (cuda needs onnxruntime-gpu)."),
    click.option("--grads", is_flag=True, help="Also compare d(loss)/d(parameter) for every named loss and every paired trainable parameter."),
    click.option("--steps", default=0, show_default=True, type=click.IntRange(min=0), help="Train both graphs this many steps on ONNX Runtime (the spec's optimizers and schedule; plain SGD lr 1e-3 without) and compare losses, gradients, parameters and optimizer state at every step."),
    click.option("--fresh-inputs", is_flag=True, help="With --steps: each step draws its own inputs from the seed (each micro-batch of Spec.accumulate too), instead of every step training on the same ones."),
    click.option("--native", is_flag=True, help="With --steps: also train each side in its own framework, eagerly, and compare ONNX Runtime with it per step (needs the spec files); a side that parts beyond the tolerance, in float64 too, fails the verdict."),
    click.option("--no-localize", is_flag=True, help="Do not search for the node where a divergence starts."),
    click.option("--no-noise-floor", is_flag=True, help="Do not re-run in float64 to tell float32 rounding noise from real differences."),
    click.option("--strict", is_flag=True, help="Count diffs above the tolerance as divergence even when they are float32 rounding noise (within the tolerance in the float64 re-run)."),
    click.option("--quiet", is_flag=True, help="Show no progress on stderr (shown only when stderr is a terminal)."),
    click.option("--json", "json_file", type=FilePath(dir_okay=False, output=True), help="Write the JSON report here."),
    click.option("--html", "html_file", type=FilePath(dir_okay=False, output=True), help="Write a self-contained HTML report here (per-step plot, divergence in its graph neighbourhood, noise floor)."),
]


@main.command()
@click.argument("reference", type=FilePath(dir_okay=False))
@click.argument("candidate", type=FilePath(dir_okay=False))
@verify_options
def verify(reference: str, candidate: str, **options: Any) -> None:
    """Compare CANDIDATE against REFERENCE (two graphs from `lossgraph export`).

    The reference's parameter values are copied into the candidate, both graphs run on ONNX
    Runtime with the same inputs, and every named loss is compared; with --grads, also the
    gradient of every loss w.r.t. every paired trainable parameter (lossgraph builds the
    backward graphs in ONNX).

    Tolerance rule: a value passes when |candidate - reference| <= tol + rtol * |reference|
    element-wise. Noise rule: both graphs are re-run in float64 (with the hyper-parameters each
    framework's float32 run computes with, what derives from them exact); a diff above the tolerance is float32 rounding noise
    when the float64 re-run of the same comparison is within the tolerance (or within 10x of
    how far the float64 reference moves from a rounding error in its own starting values, when
    that re-run shrank the diff 10-fold: rounding the computation amplifies), and semantic
    otherwise. Noise does not count (unless --strict). Exit codes: 0 all within
    tolerance (or only noise), 1 divergence, 2 bad usage or input.
    """
    from lossgraph.files import check_outputs

    _check_verify_options(options)
    check_outputs([options["json_file"], options["html_file"]],
                  inputs=[reference, candidate, options["inputs_file"], options["name_map"]])
    _verify_and_report(reference, candidate, options)


@main.command()
@click.argument("reference", metavar="REF.py[:NAME]")
@click.argument("candidate", metavar="CAND.py[:NAME]")
@verify_options
@click.option("--keep", type=FilePath(file_okay=False, output=True), help="Also write the two graphs into this folder, as reference.onnx and candidate.onnx (for `lossgraph verify` later).")
@click.option("--no-cache", is_flag=True, help="Export both sides again instead of reusing a graph cached from an earlier check of an unchanged spec.")
def check(reference: str, candidate: str, keep: str | None, no_cache: bool, **options: Any) -> None:
    """Export both specs and verify CANDIDATE against REFERENCE, in one command.

    Each FILE.py[:NAME] is exported as by `lossgraph export` (the two exports run side by side),
    then compared as by `lossgraph verify` with the options below. Exported graphs are cached
    (in $LOSSGRAPH_CACHE_DIR, default ~/.cache/lossgraph): a spec whose files -- the spec, the
    modules it imports from outside installed packages, the data files it reads -- are unchanged is
    not exported again. Exit codes as for verify.
    """
    from lossgraph.exporters.cache import exported_pair
    from lossgraph.files import check_outputs
    from lossgraph.spec import parse_target
    from lossgraph.verify.report import render_exported

    _check_verify_options(options)
    specs = [parse_target(reference)[0], parse_target(candidate)[0]]
    check_outputs([options["json_file"], options["html_file"]],
                  inputs=[*specs, options["inputs_file"], options["name_map"]])
    if click.get_current_context().meta.get("lossgraph.debug"):
        os.environ["LOSSGRAPH_DEBUG"] = "1"  # the export process beside this one prints tracebacks too
    console = _console()
    with contextlib.ExitStack() as graphs:
        with _progress(options["quiet"]):  # the exports; the verify shows its own progress
            sides = graphs.enter_context(
                exported_pair([reference, candidate], options["seed"], use_cache=not no_cache, keep=keep)
            )
        render_exported(sides, ("reference", "candidate"), keep, console)
        _verify_and_report(str(sides[0].path), str(sides[1].path), options, console)


def _check_verify_options(options: dict[str, Any]) -> None:
    if options["native"] and not options["steps"]:
        raise click.UsageError("--native compares training steps: give --steps N as well.")
    if options["fresh_inputs"] and not options["steps"]:
        raise click.UsageError("--fresh-inputs draws inputs per training step: give --steps N as well.")
    if options["fresh_inputs"] and options["inputs_file"]:
        raise click.UsageError("--fresh-inputs draws seeded inputs; --inputs gives fixed ones: use one of them.")


def _verify_and_report(reference: str, candidate: str, options: dict[str, Any], console: Console | None = None) -> None:
    """Run the comparison, print it, write the reports asked for and exit with the verdict."""
    from lossgraph.verify.pipeline import VerifyOptions, run_verify
    from lossgraph.verify.report import render_verify, report_dict, write_html, write_json

    settings = VerifyOptions(
        tol=options["tol"],
        rtol=options["rtol"],
        seed=options["seed"],
        inputs=options["inputs_file"],
        name_map=options["name_map"],
        allow_unmapped=options["allow_unmapped"],
        device=options["device"],
        grads=options["grads"],
        steps=options["steps"],
        fresh_inputs=options["fresh_inputs"],
        native=options["native"],
        native_runner=native_runner() if options["native"] else None,
        localize=not options["no_localize"],
        noise_floor=not options["no_noise_floor"],
        strict=options["strict"],
    )
    with _progress(options["quiet"]):
        result = run_verify(reference, candidate, settings)
    console = console or _console()
    render_verify(result, console)
    json_file, html_file = options["json_file"], options["html_file"]
    if json_file or html_file:
        data = report_dict(result)
        if json_file:
            write_json(data, json_file)
        if html_file:
            write_html(data, html_file)
        written = [f"{path} ({kind})" for path, kind in ((json_file, "JSON"), (html_file, "HTML")) if path]
        console.print("report written to " + ", ".join(written), markup=False, highlight=False, soft_wrap=True)
    click.get_current_context().exit(0 if result.passed else EXIT_DIVERGED)


@main.command()
@click.argument("report_file", metavar="REPORT.json", type=FilePath(dir_okay=False))
@click.option("--html", "html_file", required=True, type=FilePath(dir_okay=False, output=True), help="Where to write the HTML report.")
def report(report_file: str, html_file: str) -> None:
    """Render a JSON report saved by `lossgraph verify --json` as one self-contained HTML file
    (opens offline: per-step difference plot, the divergence in the graph neighbourhood of both
    sides, the noise-floor verdict)."""
    from lossgraph.files import check_outputs
    from lossgraph.verify.report import read_report, write_html

    check_outputs([html_file], inputs=[report_file])
    data = read_report(report_file)
    write_html(data, html_file)
    click.echo(f"lossgraph report: {report_file} -> {html_file} ({'passed' if data['passed'] else 'diverged'})")


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[None]:
    """What a long run is doing, as one changing line on stderr, when stderr is a terminal."""
    from lossgraph.progress import reporting

    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield
        return
    with err.status("starting", spinner="dots") as status, reporting(lambda text: status.update(escape(text))):
        yield


def _console() -> Console:
    """Reports are wide tables: keep them readable when the output is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def native_runner():
    """The eager training runner (imports torch/paddle only when --native asks for them)."""
    from lossgraph.exporters.native import run_native

    return run_native


if __name__ == "__main__":
    main()
