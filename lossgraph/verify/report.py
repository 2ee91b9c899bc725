"""Every human- and machine-readable form of lossgraph's results.

``report_dict`` is the stable JSON report (keys in DESIGN.md); ``render_verify`` and
``render_export`` print rich terminal reports. Nothing else in lossgraph formats results.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lossgraph.graph import LossGraph
from lossgraph.verify.compare import ValueDiff
from lossgraph.verify.results import (
    Divergence,
    GradDiff,
    LossDiff,
    NativeDiff,
    StepResult,
    VerifyResult,
)

PASS = "[green]pass[/green]"
FAIL = "[bold red]FAIL[/bold red]"


# --- JSON ----------------------------------------------------------------------------------------


def report_dict(result: VerifyResult) -> dict[str, Any]:
    """The JSON report of a verification."""
    return {
        "passed": result.passed,
        "tolerance": result.tolerance.to_dict(),
        "reference": _graph_dict(result.reference),
        "candidate": _graph_dict(result.candidate),
        "seed": result.seed,
        "inputs": result.inputs_source,
        "parameter_map": result.param_map.to_dict(),
        "steps": [_step_dict(step) for step in result.steps],
        "first_divergence": _divergence_dict(result.first_divergence),
        "noise_floor": result.noise_floor,
        "verdict": verdict(result),
        "native": {
            side: [_native_dict(d) for d in diffs] for side, diffs in result.native.items()
        },
        "warnings": list(result.warnings),
    }


def verdict(result: VerifyResult) -> str:
    """``passed``, ``noise`` (only float32 rounding above the tolerance) or ``diverged``."""
    if result.within_tolerance:
        return "passed"
    if result.noise_only:
        return "noise" if not result.strict else "diverged (float32 noise, --strict)"
    return "diverged"


def _native_dict(diff: NativeDiff) -> dict[str, Any]:
    return {
        "step": diff.step,
        "losses": {name: _value_dict(d) for name, d in diff.losses.items()},
        "parameters": {**_value_dict(diff.parameters), "worst": diff.worst_parameter},
    }


def write_json(result: VerifyResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report_dict(result), indent=2, allow_nan=True) + "\n")


def _graph_dict(info: Any) -> dict[str, Any]:
    return {
        "path": info.path,
        "framework": info.framework,
        "source": info.source,
        "versions": info.versions,
        "eager": info.eager,
    }


def _loss_dict(diff: LossDiff) -> dict[str, Any]:
    return {
        "reference": diff.reference,
        "candidate": diff.candidate,
        "abs_diff": diff.abs_diff,
        "rel_diff": diff.diff.max_rel_diff,
        "required_tol": diff.diff.required_tol,
        "passed": diff.passed,
    }


def _value_dict(diff: ValueDiff) -> dict[str, Any]:
    return {
        "max_abs_diff": diff.max_abs_diff,
        "max_rel_diff": diff.max_rel_diff,
        "required_tol": diff.required_tol,
        "passed": diff.passed,
    }


def _grad_dict(diff: GradDiff) -> dict[str, Any]:
    return {
        "max_abs_diff": diff.max_abs_diff,
        "required_tol": diff.required_tol,
        "passed": diff.passed,
        "losses": {loss: _value_dict(d) for loss, d in diff.losses.items()},
    }


def _step_dict(step: StepResult) -> dict[str, Any]:
    return {
        "step": step.step,
        "loss": step.loss,
        "optimizer": step.optimizer,
        "passed": step.passed,
        "phase_failed": step.phase_failed(),
        "losses": {name: _loss_dict(d) for name, d in step.losses.items()},
        "gradients": {name: _grad_dict(d) for name, d in step.gradients.items()},
        "parameters": {name: _value_dict(d) for name, d in step.parameters.items()},
        "optimizer_state": {name: _value_dict(d) for name, d in step.optimizer_state.items()},
        "lr": _value_dict(step.lr) if step.lr is not None else None,
    }


def _divergence_dict(div: Divergence | None) -> dict[str, Any] | None:
    return None if div is None else asdict(div)


# --- terminal ------------------------------------------------------------------------------------


def _short(path: str) -> str:
    """A source path relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _fmt(value: float) -> str:
    return f"{value:.9g}"


def _sci(value: float) -> str:
    return f"{value:.2e}"


def render_verify(result: VerifyResult, console: Console) -> None:
    """Print a verification: the verdict and divergence first, then the per-loss table."""
    ref, cand = result.reference, result.candidate
    outcome = verdict(result)
    if outcome == "passed":
        headline = Text("PASSED", style="bold green")
    elif outcome == "noise":
        headline = Text("PASSED", style="bold green").append(
            " (diffs above the tolerance are float32 rounding noise)", style="green"
        )
    else:
        headline = Text("DIVERGED", style="bold red")
    console.print(Text("lossgraph verify: ").append(headline))
    console.print(escape(f"  reference  {ref.path}  ({ref.framework})"))
    console.print(escape(f"  candidate  {cand.path}  ({cand.framework})"))
    tol = result.tolerance
    console.print(
        f"  tolerance  |diff| <= {tol.atol:g} + {tol.rtol:g}*|ref|   inputs: {result.inputs_source}"
    )
    pmap = result.param_map
    transposed = sum(p.transform == "transpose" for p in pmap.pairs)
    renamed = sum(p.reference != p.candidate for p in pmap.pairs)
    details = [f"{renamed} renamed"] if renamed else []
    details += [f"{transposed} transposed"] if transposed else []
    mapped = f"  parameters {len(pmap.pairs)} paired"
    if details:
        mapped += f" ({', '.join(details)})"
    unpaired = len(pmap.unmapped_reference) + len(pmap.unmapped_candidate) + len(pmap.shape_mismatch)
    if unpaired:
        mapped += f", [yellow]{unpaired} unpaired[/yellow]"
    console.print(mapped)
    if result.first_divergence is not None and not (result.noise_only and not result.strict):
        _render_divergence(result.first_divergence, console)
    if result.noise_floor:
        _render_noise_floor(result.noise_floor, console)
    if len(result.steps) > 1 or result.steps[0].loss is not None:
        console.print(_steps_table(result.steps))
        failing = next((s for s in result.steps if not s.passed), None)
        if failing is not None:
            console.print(_losses_table(failing))
    else:
        console.print(_losses_table(result.steps[0]))
        if result.steps[0].gradients:
            console.print(_gradients_table(result.steps[0]))
    for side, diffs in result.native.items():
        console.print(_native_table(side, diffs))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def _render_divergence(div: Divergence, console: Console) -> None:
    where = f"step {div.step}, {div.phase}"
    what = f"loss {div.loss!r}" if div.loss else "value"
    console.print(
        f"[bold red]First divergence[/bold red] ({escape(where)}): {escape(what)}, max |diff| "
        f"{_sci(div.max_abs_diff)}"
    )
    console.print(escape(
        f"  {div.op_type or '?'} in scope {div.scope or '(top level)'}: reference node "
        f"{div.reference_node or '-'}, candidate node {div.candidate_node or '-'}"
    ))
    if div.source:
        source = div.source
        console.print(escape(f"  source {_short(source['file'])}:{source['line']}  {source['code']}"))
    if div.hint:
        console.print(f"  [bold]likely cause:[/bold] {escape(div.hint)}")
    if not div.localized and div.phase == "forward":
        console.print("  (observed at the loss output; node-level localization not run)")
    elif not div.localized:
        console.print("  (observed at the parameter's gradient; node-level localization not run)")


def _render_noise_floor(floor: Mapping[str, Any], console: Console) -> None:
    items = floor.get("items", [])
    if not items:
        return
    noise = [i for i in items if i["verdict"] == "noise"]
    semantic = [i for i in items if i["verdict"] == "semantic"]
    console.print(
        f"Noise floor (float64 re-run): {len(items)} diff(s) above the tolerance; {len(noise)} "
        f"shrink below {floor['ratio']:g}x in float64 (float32 rounding), {len(semantic)} stay "
        f"(semantic). Largest: float32 {_sci(floor['max_float32_diff'])}, float64 "
        f"{_sci(floor['max_float64_diff'])}."
    )
    for item in semantic[:3]:
        console.print(
            f"  semantic: step {item['step']} {item['what']}: float32 {_sci(item['float32'])}, "
            f"float64 {_sci(item['float64'])}"
        )


def _worst(diffs) -> float:
    return max((d.max_abs_diff for d in diffs), default=0.0)


def _steps_table(steps: list[StepResult]) -> Table:
    """One row per training step, in the manner of reprod_log's diff log."""
    table = Table(title="Training steps (max |diff| reference vs candidate)", title_justify="left")
    for column in ("step", "loss / optimizer", "losses", "gradients", "parameters", "opt. state", "lr", ""):
        table.add_column(column, justify="left" if column in ("loss / optimizer",) else "right")
    for step in steps:
        status = PASS if step.passed else f"{FAIL} {step.phase_failed()}"
        table.add_row(
            str(step.step),
            f"{step.loss} / {step.optimizer}",
            _sci(_worst(d.diff for d in step.losses.values())),
            _sci(_worst(step.gradients.values())),
            _sci(_worst(step.parameters.values())),
            _sci(_worst(step.optimizer_state.values())),
            _sci(step.lr.max_abs_diff) if step.lr is not None else "-",
            status,
        )
    return table


def _native_table(side: str, diffs: list[NativeDiff]) -> Table:
    table = Table(title=f"Native fidelity, {side}: ONNX Runtime vs eager framework", title_justify="left")
    for column in ("step", "max |diff| losses", "max |diff| parameters", "worst parameter"):
        table.add_column(column, justify="left" if column == "worst parameter" else "right")
    for diff in diffs:
        table.add_row(str(diff.step), _sci(_worst(diff.losses.values())),
                      _sci(diff.parameters.max_abs_diff), diff.worst_parameter)
    return table


def _losses_table(step: StepResult) -> Table:
    title = "Forward losses" if step.loss is None else f"Step {step.step} losses ({step.loss} / {step.optimizer})"
    table = Table(title=title, title_justify="left")
    for column in ("loss", "reference", "candidate", "|diff|", "rel diff", "min tol", ""):
        table.add_column(column, justify="left" if column == "loss" else "right")
    for name, diff in step.losses.items():
        table.add_row(
            name,
            _fmt(diff.reference),
            _fmt(diff.candidate),
            _sci(diff.abs_diff),
            _sci(diff.diff.max_rel_diff),
            _sci(diff.diff.required_tol),
            PASS if diff.passed else FAIL,
        )
    return table


#: Rows of the gradient table shown on a terminal; the JSON report has every parameter.
GRADIENT_ROWS = 12


def _gradients_table(step: StepResult) -> Table:
    """The parameters whose gradients differ most (all of them in the JSON report)."""
    rows = sorted(step.gradients.items(), key=lambda item: -item[1].max_abs_diff)
    failed = sum(not d.passed for _, d in rows)
    title = f"Gradients: {len(rows) - failed}/{len(rows)} parameters within tolerance"
    if len(rows) > GRADIENT_ROWS:
        title += f" (largest {GRADIENT_ROWS} differences shown)"
    table = Table(title=title, title_justify="left")
    for column in ("parameter", "worst loss", "max |diff|", "min tol", ""):
        table.add_column(column, justify="left" if column in ("parameter", "worst loss") else "right")
    for name, diff in rows[:GRADIENT_ROWS]:
        loss = max(diff.losses, key=lambda k: diff.losses[k].max_abs_diff)
        table.add_row(name, loss, _sci(diff.max_abs_diff), _sci(diff.required_tol),
                      PASS if diff.passed else FAIL)
    return table


def render_export(graph: LossGraph, path: str, console: Console) -> None:
    """Print the summary of an export: losses (eager vs ORT), inputs, parameters, op histogram."""
    meta = graph.meta
    source = _short(meta.source.rpartition(":")[0]) + ":" + meta.source.rpartition(":")[2]
    console.print(f"[bold]lossgraph export[/bold]: {escape(source)} ({meta.framework}) -> {escape(str(path))}")
    eager: Mapping[str, Any] = meta.eager
    table = Table(title="Losses", title_justify="left")
    for column in ("loss", "eager", "ONNX Runtime", "|diff|"):
        table.add_column(column, justify="left" if column == "loss" else "right")
    for name in meta.losses:
        e = eager.get("losses", {}).get(name)
        o = eager.get("ort", {}).get(name)
        diff = _sci(abs(e - o)) if e is not None and o is not None else "-"
        table.add_row(name, _fmt(e) if e is not None else "-", _fmt(o) if o is not None else "-", diff)
    console.print(table)
    inputs = ", ".join(f"{n} {s.dtype}{list(s.shape)} ({s.distribution})" for n, s in meta.inputs.items())
    console.print(f"inputs: {inputs}")
    params = list(meta.params.values())
    trainable = [p for p in params if p.trainable]
    count = sum(_numel(p.shape) for p in trainable)
    console.print(
        f"parameters: {len(trainable)} trainable tensors ({count:,} values), "
        f"{len(params) - len(trainable)} other (buffers, frozen)"
    )
    if meta.optimizers:
        opts = ", ".join(f"{n}={o.cls}({len(o.params)} params)" for n, o in meta.optimizers.items())
        console.print(f"optimizers: {opts}")
    if meta.schedule:
        console.print("schedule: " + " -> ".join(f"{loss}/{opt}" for loss, opt in meta.schedule))
    histogram = graph.op_histogram().most_common()
    console.print(
        f"ops ({sum(c for _, c in histogram)} nodes): " + ", ".join(f"{op} {c}" for op, c in histogram)
    )


def _numel(shape: list[int]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out
