"""Every human- and machine-readable form of lossgraph's results.

``report_dict`` is the stable JSON report (keys in DESIGN.md); ``render_verify`` and
``render_export`` print rich terminal reports. Nothing else in lossgraph formats results.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from lossgraph.errors import VerificationError, one_line
from lossgraph.files import relative_to_cwd, write_atomic
from lossgraph.graph import LossGraph
from lossgraph.verify.align import shown_names
from lossgraph.verify.compare import ValueDiff
from lossgraph.verify.report_schema import report_problem
from lossgraph.verify.results import (
    ConventionDiff,
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
        "steps": [_step_dict(step, item_verdicts(result.noise_floor)) for step in result.steps],
        "first_divergence": _divergence_dict(result.first_divergence),
        "noise_floor": result.noise_floor,
        "verdict": verdict(result),
        "native_failures": native_failure_lines(result),
        "native": {
            side: [_native_dict(d) for d in diffs] for side, diffs in result.native.items()
        },
        "warnings": list(result.warnings),
    }


def verdict(result: VerifyResult) -> str:
    """``passed``, ``noise`` (only float32 rounding above the tolerance) or ``diverged``."""
    if result.native_failures:
        return "diverged"
    if result.within_tolerance:
        return "passed"
    if result.noise_only:
        return "noise" if not result.strict else "diverged (float32 noise, --strict)"
    return "diverged"


def _native_dict(diff: NativeDiff) -> dict[str, Any]:
    out = {
        "step": diff.step,
        "losses": {name: _value_dict(d) for name, d in diff.losses.items()},
        "parameters": {**_value_dict(diff.parameters), "worst": diff.worst_parameter},
        "verdict": "pass" if diff.passed else ("semantic" if diff.semantic else "noise"),
    }
    if diff.float64 is not None:
        out["float64"] = _native_dict(diff.float64)
    if diff.amplified is not None:
        out["reason"], out["float64_nudged"] = "amplified", diff.amplified
    return out


def write_json(result: VerifyResult | Mapping[str, Any], path: str | Path) -> None:
    """Write the JSON report of a verification (or the report already made from it)."""
    data = result if isinstance(result, Mapping) else report_dict(result)
    write_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def _spec_text(source: str) -> str:
    """``FILE.py:NAME`` with the file relative to the working directory."""
    file, _, name = source.rpartition(":")
    return f"{relative_to_cwd(file)}:{name}" if file else source


def side_text(graph: Mapping[str, Any]) -> str:
    """One compared side: the spec it was exported from, its framework and the graph file
    (``lossgraph check`` graphs live in the cache: the spec is what the user knows)."""
    source = graph.get("source")
    spec = f"{_spec_text(source)} " if source else ""
    return f"{spec}({graph['framework']}), graph {relative_to_cwd(str(graph['path']))}"


def _graph_dict(info: Any) -> dict[str, Any]:
    return {
        "path": info.path,
        "framework": info.framework,
        "source": info.source,
        "versions": info.versions,
        "eager": info.eager,
        "low_precision": info.low_precision,
    }


def precision_lines(result: VerifyResult) -> list[str]:
    """One line per side that computes in a low precision (torch.autocast), emulated in float32:
    its rounding is part of what the float64 re-run calls rounding noise."""
    sides = (("reference", result.reference.low_precision), ("candidate", result.candidate.low_precision))
    return [_precision_text(role, low) for role, low in sides if low]


def _precision_text(role: str, low: Mapping[str, Any]) -> str:
    kinds = ", ".join(f"{name} ({count} values rounded)" for name, count in low.items())
    return (f"the {role} computes in mixed precision: {kinds}, emulated in float32 with the framework's "
            f"rounding; the float64 re-run leaves the rounding out, so a difference mixed precision "
            f"makes counts as rounding noise")


def noise_words(result: VerifyResult) -> str:
    """What the noise is: float32 rounding, and a low precision's where a side computes in one."""
    low = sorted({name for info in (result.reference, result.candidate) for name in info.low_precision})
    return f"rounding noise: float32 and {' and '.join(low)}" if low else "float32 rounding noise"


def _loss_dict(diff: LossDiff) -> dict[str, Any]:
    return {
        "reference": diff.reference,
        "candidate": diff.candidate,
        "abs_diff": diff.abs_diff,
        "rel_diff": diff.diff.max_rel_diff,
        "required_tol": diff.diff.required_tol,
        "passed": diff.passed,
    }


def _value_dict(diff: ValueDiff, verdict: str | None = None) -> dict[str, Any]:
    out = {
        "max_abs_diff": diff.max_abs_diff,
        "max_rel_diff": diff.max_rel_diff,
        "required_tol": diff.required_tol,
        "passed": diff.passed,
    }
    if verdict is not None:
        out["verdict"] = verdict
    return out


#: an item's verdict: within the tolerance, above it by float32 rounding noise (the float64
#: re-run of the same comparison is within it), above it for real, or above it unclassified (no
#: float64 re-run: --no-noise-floor); the worst of several is the one shown
ITEM_VERDICTS = ("pass", "noise", "fail", "semantic")


def item_verdicts(floor: Mapping[str, Any] | None) -> dict[tuple[int, str], str]:
    """(step, what) -> the noise floor's verdict of each difference above the tolerance."""
    return {(i["step"], i["what"]): i["verdict"] for i in (floor or {}).get("items", [])}


def _verdict_of(passed: bool, step: int, what: str, verdicts: Mapping[tuple[int, str], str]) -> str:
    return "pass" if passed else verdicts.get((step, what), "fail")


def _grad_dict(name: str, diff: GradDiff, step: int, verdicts: Mapping[tuple[int, str], str]) -> dict[str, Any]:
    losses = {loss: _value_dict(d, _verdict_of(d.passed, step, f"gradient {name} ({loss})", verdicts))
              for loss, d in diff.losses.items()}
    return {
        "max_abs_diff": diff.max_abs_diff,
        "required_tol": diff.required_tol,
        "passed": diff.passed,
        "verdict": max((d["verdict"] for d in losses.values()), key=ITEM_VERDICTS.index, default="pass"),
        "losses": losses,
    }


def _step_dict(step: StepResult, verdicts: Mapping[tuple[int, str], str] | None = None) -> dict[str, Any]:
    verdicts = verdicts or {}

    def values(kind: str, diffs: Mapping[str, ValueDiff]) -> dict[str, Any]:
        return {name: _value_dict(d, _verdict_of(d.passed, step.step, f"{kind} {name}", verdicts))
                for name, d in diffs.items()}

    return {
        "step": step.step,
        "loss": step.loss,
        "optimizer": step.optimizer,
        "passed": step.passed,
        "phase_failed": step.phase_failed(),
        "losses": {name: {**_loss_dict(d), "verdict": _verdict_of(d.passed, step.step, f"loss {name}", verdicts)}
                   for name, d in step.losses.items()},
        "module_outputs": values("module output", step.taps),
        "gradients": {name: _grad_dict(name, d, step.step, verdicts) for name, d in step.gradients.items()},
        "parameters": values("parameter", step.parameters),
        "optimizer_state": values("optimizer state", step.optimizer_state),
        "lr": (_value_dict(step.lr, _verdict_of(step.lr.passed, step.step, "learning rate", verdicts))
               if step.lr is not None else None),
        "conventions": [_convention_dict(c) for c in step.conventions],
    }


def _convention_dict(conv: ConventionDiff) -> dict[str, Any]:
    return {
        "parameter": conv.name,
        "candidate": conv.candidate,
        "kind": conv.kind,
        "reference_convention": conv.reference_convention,
        "candidate_convention": conv.candidate_convention,
        "counts": list(conv.counts),
        "raw": _value_dict(conv.raw),
        "converted": _value_dict(conv.converted),
    }


def _divergence_dict(div: Divergence | None) -> dict[str, Any] | None:
    return None if div is None else asdict(div)


# --- terminal ------------------------------------------------------------------------------------


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
            f" (diffs above the tolerance are {noise_words(result)})", style="green"
        )
    else:
        headline = Text("DIVERGED", style="bold red")
    console.print(Text("lossgraph verify: ").append(headline))
    console.print(escape(f"  reference  {side_text(_graph_dict(ref))}"))
    console.print(escape(f"  candidate  {side_text(_graph_dict(cand))}"))
    tol = result.tolerance
    console.print(
        f"  tolerance  |diff| <= {tol.atol:g} + {tol.rtol:g}*|ref|   inputs: {result.inputs_source}"
    )
    pmap = result.param_map
    transposed = sum(p.transform == "transpose" for p in pmap.pairs)
    renamed = sum(p.reference != p.candidate and not p.parts and p.packed_in is None
                  for p in pmap.pairs)
    details = [f"{renamed} renamed"] if renamed else []
    details += [f"{transposed} transposed"] if transposed else []
    reshaped = sum(p.transform == "reshape" for p in pmap.pairs)
    details += [f"{reshaped} reshaped"] if reshaped else []
    packed = sum(bool(p.parts) or p.packed_in is not None for p in pmap.pairs)
    details += [f"{packed} packed"] if packed else []
    mapped = f"  parameters {len(pmap.pairs)} paired"
    if details:
        mapped += f" ({', '.join(details)})"
    unpaired = len(pmap.unmapped_reference) + len(pmap.unmapped_candidate) + len(pmap.shape_mismatch)
    if unpaired:
        mapped += f", [yellow]{unpaired} unpaired[/yellow]"
    console.print(mapped)
    for line in precision_lines(result):
        console.print(escape(f"  precision  {line}"))
    for line in native_failure_lines(result):
        console.print(f"[red]{escape(line)}[/red]")
    if result.first_divergence is not None and not (result.noise_only and not result.strict):
        _render_divergence(result.first_divergence, console)
    if result.noise_floor:
        _render_noise_floor(result.noise_floor, console)
    verdicts = item_verdicts(result.noise_floor)
    if len(result.steps) > 1 or result.steps[0].loss is not None:
        console.print(_steps_table(result.steps, noise_steps(result.noise_floor)))
        _render_conventions(result, console)
        failing = next((s for s in result.steps if not s.passed), None)
        if failing is not None:
            console.print(_losses_table(failing, verdicts))
    else:
        console.print(_losses_table(result.steps[0], verdicts))
        if result.steps[0].gradients:
            console.print(_gradients_table(result.steps[0], verdicts))
    for side, diffs in result.native.items():
        console.print(_native_table(side, diffs))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def summary_text(result: VerifyResult) -> str:
    """The report in a few plain lines: the verdict, the first divergence (where, source line,
    likely cause) and the eager runs that part from their graph (``lossgraph.testing``'s
    assertion message)."""
    out = io.StringIO()
    console = Console(file=out, width=110, color_system=None, highlight=False, soft_wrap=True)
    console.print(f"lossgraph: {verdict(result)}", markup=False)
    if result.first_divergence is not None:
        _render_divergence(result.first_divergence, console)
    for line in native_failure_lines(result):
        console.print(line, markup=False)
    return out.getvalue().rstrip()


def native_failure_lines(result: VerifyResult) -> list[str]:
    """One line per side whose exported graph does not train like its framework's eager run."""
    lines = []
    sides = {"reference": result.reference, "candidate": result.candidate}
    for side in dict.fromkeys(s for s, _ in result.native_failures):
        diff = next(d for s, d in result.native_failures if s == side)
        worst_loss = max(diff.losses.items(), key=lambda item: item[1].max_abs_diff, default=None)
        parts = []
        if worst_loss is not None and not worst_loss[1].passed:
            parts.append(f"loss {worst_loss[0]} |diff| {_sci(worst_loss[1].max_abs_diff)}")
        if not diff.parameters.passed:
            parts.append(f"{diff.worst_parameter} |diff| {_sci(diff.parameters.max_abs_diff)}")
        lines.append(
            f"The exported {side} graph does not train like {sides[side].framework} eager: step "
            f"{diff.step}, {', '.join(parts)} (ONNX Runtime vs native, above the tolerance)."
        )
    return lines


#: how a divergence's phase reads after "step N, "
PHASE_WORDS = {"forward": "forward pass", "backward": "backward pass", "update": "optimizer update"}


def _where_parts(div: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """Where a divergence is, as (text, is a name) parts: a node in a module's scope, or in an
    update the parameter (or buffer) the optimizer (or the running statistics) wrote."""
    scope = div.get("scope") or "(top level)"
    ref, cand = div.get("reference_node") or "-", div.get("candidate_node") or "-"
    if div.get("phase") == "update":
        parts = [(div.get("op_type") or "optimizer", True), (" update of ", False), (ref, True)]
        if cand != ref:
            parts += [(" (candidate ", False), (cand, True), (")", False)]
        return [*parts, (" in module ", False), (scope, True)]
    return [(div.get("op_type") or "?", True), (" in scope ", False), (scope, True),
            (": reference node ", False), (ref, True), (", candidate node ", False), (cand, True)]


def _render_divergence(div: Divergence, console: Console) -> None:
    where = f"step {div.step}, {PHASE_WORDS.get(div.phase, div.phase)}"
    what = f"loss {div.loss!r}" if div.loss else "value"
    console.print(
        f"[bold red]First divergence[/bold red] ({escape(where)}): {escape(what)}, max |diff| "
        f"{_sci(div.max_abs_diff)}"
    )
    console.print(escape("  " + "".join(text for text, _ in _where_parts(asdict(div)))))
    if div.source:
        source = div.source
        console.print(escape(f"  source {relative_to_cwd(source['file'])}:{source['line']}  {source['code']}"))
    stats = div.statistics
    if stats and stats.get("shapes_differ"):
        console.print(escape(
            f"  {stats['what']}: reference {_stats_text(stats['reference'])}; candidate "
            f"{_stats_text(stats['candidate'])}: the shapes differ (max |diff| above is the losses')"
        ))
    elif stats:
        console.print(escape(
            f"  {stats['what']}: reference {_stats_text(stats['reference'])}; candidate "
            f"{_stats_text(stats['candidate'])}; max rel diff {_sci(stats['max_rel_diff'])}, "
            f"would pass with tol >= {_sci(stats['required_tol'])}"
        ))
    if div.hint:
        console.print(f"  [bold]likely cause:[/bold] {escape(div.hint)}")
    if not div.localized and div.phase == "forward":
        console.print("  (observed at the loss output; node-level localization not run)")
    elif not div.localized:
        console.print("  (observed at the parameter's gradient; node-level localization not run)")


def _stats_text(stats: Mapping[str, Any]) -> str:
    if "mean" not in stats:
        return f"{stats['shape']} (no finite values)"
    text = (f"{stats['shape']} mean {stats['mean']:.4g} std {stats['std']:.4g} "
            f"[{stats['min']:.4g}, {stats['max']:.4g}]")
    return text + (f", {stats['non_finite']} NaN/Inf" if stats.get("non_finite") else "")


def _render_noise_floor(floor: Mapping[str, Any], console: Console) -> None:
    items = floor.get("items", [])
    if not items:
        return
    amplified = [i for i in items if i.get("reason") == "amplified"]
    noise = [i for i in items if i["verdict"] == "noise" and i not in amplified]
    semantic = [i for i in items if i["verdict"] == "semantic"]
    console.print(
        f"Noise floor (float64 re-run): {len(items)} diff(s) above the tolerance; {len(noise)} "
        f"within the tolerance in float64 (float32 rounding), "
        + (f"{len(amplified)} rounding the computation amplifies (float64 no larger than 10x what "
           f"the reference itself moves from a rounding error in its starting values), " if amplified else "")
        + f"{len(semantic)} not (semantic). Largest: float32 {_sci(floor['max_float32_diff'])}, "
        f"float64 {_sci(floor['max_float64_diff'])}."
    )
    for item in semantic[:3] + amplified[:3]:
        nudged = f", reference nudged {_sci(item['float64_nudged'])}" if "float64_nudged" in item else ""
        console.print(
            f"  {item.get('reason', item['verdict'])}: step {item['step']} {item['what']}: float32 "
            f"{_sci(item['float32'])}, float64 {_sci(item['float64'])}{nudged}"
        )


def _worst(diffs) -> float:
    return max((d.max_abs_diff for d in diffs), default=0.0)


def noise_steps(floor: Mapping[str, Any] | None) -> set[int]:
    """The steps whose every difference above the tolerance the noise floor calls noise."""
    items = (floor or {}).get("items", [])
    steps = {i["step"] for i in items}
    return {s for s in steps if all(i["verdict"] == "noise" for i in items if i["step"] == s)}


def _steps_table(steps: list[StepResult], noise: set[int] = frozenset()) -> Table:
    """One row per training step, in the manner of reprod_log's diff log; a step whose
    differences are all rounding noise says so."""
    table = Table(title="Training steps (max |diff| reference vs candidate)", title_justify="left")
    for column in ("step", "loss / optimizer", "losses", "gradients", "parameters", "opt. state", "lr", ""):
        table.add_column(column, justify="left" if column in ("loss / optimizer",) else "right")
    for step in steps:
        status = PASS if step.passed else ("[green]noise[/green]" if step.step in noise
                                           else f"{FAIL} {step.phase_failed()}")
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


def _render_conventions(result: VerifyResult, console: Console) -> None:
    """One line on the values compared in the candidate's convention (the JSON has each)."""
    notes = [c for step in result.steps for c in step.conventions]
    if not notes:
        return
    first = notes[0]
    names = {c.name for c in notes}
    counts = sorted({n for c in notes for n in c.counts})
    console.print(escape(
        f"Conventions: {len(names)} {first.kind}(s) compared in the candidate's convention "
        f"({result.reference.framework}: {first.reference_convention} batch variance, "
        f"{result.candidate.framework}: {first.candidate_convention}; n = "
        f"{', '.join(map(str, counts))} per channel), a framework convention, not a porting bug: "
        f"max |diff| raw {_sci(_worst(c.raw for c in notes))}, converted "
        f"{_sci(_worst(c.converted for c in notes))}."
    ))


def _native_table(side: str, diffs: list[NativeDiff]) -> Table:
    table = Table(title=f"Native fidelity, {side}: ONNX Runtime vs eager framework", title_justify="left")
    for column in ("step", "max |diff| losses", "max |diff| parameters", "worst parameter",
                   "float64 params", ""):
        table.add_column(column, justify="left" if column == "worst parameter" else "right")
    for diff in diffs:
        exact = _sci(diff.float64.parameters.max_abs_diff) if diff.float64 is not None else "-"
        status = PASS if diff.passed else (FAIL if diff.semantic else "noise")
        table.add_row(str(diff.step), _sci(_worst(diff.losses.values())),
                      _sci(diff.parameters.max_abs_diff), diff.worst_parameter, exact, status)
    return table


#: an item's verdict in a terminal table
STATUS = {"pass": PASS, "noise": "[green]noise[/green]", "fail": FAIL, "semantic": FAIL}


def _losses_table(step: StepResult, verdicts: Mapping[tuple[int, str], str]) -> Table:
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
            STATUS[_verdict_of(diff.passed, step.step, f"loss {name}", verdicts)],
        )
    return table


#: Rows of the gradient table shown on a terminal; the JSON report has every parameter.
GRADIENT_ROWS = 12


def _gradients_table(step: StepResult, verdicts: Mapping[tuple[int, str], str]) -> Table:
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
                      STATUS[_grad_dict(name, diff, step.step, verdicts)["verdict"]])
    return table


def render_export(graph: LossGraph, path: str, console: Console) -> None:
    """Print the summary of an export: losses (eager vs ORT), inputs, parameters, op histogram."""
    meta = graph.meta
    source = _spec_text(meta.source)
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
    buffers = sum(p.kind == "buffer" for p in params)
    frozen = len(params) - len(trainable) - buffers
    updated = " (updated in training mode)" if meta.train and meta.state_outputs else ""
    console.print(
        f"parameters: {len(trainable)} trainable tensors ({count:,} values), {buffers} buffer(s){updated}, "
        f"{frozen} frozen parameter(s)"
    )
    if meta.optimizers:
        opts = ", ".join(f"{n}={o.cls}({len(o.params)} params)" for n, o in meta.optimizers.items())
        console.print(f"optimizers: {opts}")
        for n, o in meta.optimizers.items():
            if o.unreached:
                console.print(
                    f"  {n} also holds {len(o.unreached)} parameter(s) no loss reaches (no gradient, never "
                    f"updated): {shown_names(o.unreached)}"
                )
    if meta.schedule:
        console.print("schedule: " + " -> ".join(f"{loss}/{opt}" for loss, opt in meta.schedule))
    histogram = graph.op_histogram().most_common()
    console.print(
        f"ops ({sum(c for _, c in histogram)} nodes): " + ", ".join(f"{op} {c}" for op, c in histogram)
    )


def render_exported(sides: Sequence[Any], roles: Sequence[str], keep: str | None, console: Console) -> None:
    """One line per side of ``lossgraph check``: its spec, and whether its graph was exported now
    (how long it took) or reused from the cache; then where ``--keep`` wrote them."""
    for role, side in zip(roles, sides):
        how = "unchanged, graph from the cache" if side.cached else f"exported in {side.seconds:.1f} s"
        console.print(f"[bold]lossgraph check[/bold]: {role} {escape(relative_to_cwd(side.target))}: {how}")
    if keep:
        console.print(f"graphs written to {escape(relative_to_cwd(keep))}: " + ", ".join(f"{r}.onnx" for r in roles))


def _numel(shape: list[int]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


# --- HTML ----------------------------------------------------------------------------------------
#
# One self-contained file (inline CSS and SVG, no scripts, nothing fetched), rendered from the
# JSON report so that ``lossgraph report report.json --html`` and ``verify --html`` agree.

#: The series of the per-step plot: JSON step key -> label.
PLOT_SERIES = {"losses": "losses", "gradients": "gradients", "parameters": "parameters",
               "optimizer_state": "optimizer state"}
SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
STATUS_COLORS = {"origin": "#f8d0d0", "agrees": "#d9f2d9", "differs": "#fde6c8", "": "#eeeeee"}
#: The logarithmic axis reaches no lower than this (exact zeros are drawn on a row below).
PLOT_FLOOR = 1e-12

HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.pass{color:#1a7f37}.fail{color:#c62828}.noise{color:#1a7f37}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .7em;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}
.box{border:1px solid #ccc;border-radius:6px;padding:.8em 1em;background:#fafafa}
.divergence{border-color:#c62828;background:#fff6f6}.rounding{border-color:#1a7f37;background:#f6fff8}.hint{font-weight:600}
code{background:#f0f0f0;padding:0 .2em}.graphs{display:flex;gap:1em;flex-wrap:wrap}
.graphs figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_sci(value: Any) -> str:
    return "-" if value is None else _sci(float(value))


OUTCOMES = {"noise": "the differences above the tolerance are float32 rounding noise"}


def render_html(report: Mapping[str, Any]) -> str:
    """The HTML page of a JSON report (:func:`report_dict`)."""
    outcome = report.get("verdict") or ("passed" if report["passed"] else "diverged")
    passed = bool(report["passed"])
    title = f"lossgraph verify: {'PASSED' if passed else 'DIVERGED'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{HTML_STYLE}</style></head><body>",
        f'<h1 id="verdict">lossgraph verify: <span class="{"pass" if passed else "fail"}">'
        f"{'PASSED' if passed else 'DIVERGED'}</span>"
        + (f" <small>({_esc(OUTCOMES.get(outcome, outcome))})</small>" if outcome not in ("passed", "diverged") else "")
        + "</h1>",
        _html_header(report),
        _html_divergence(report.get("first_divergence"), passed),
        _html_noise_floor(report.get("noise_floor")),
        '<h2 id="plot">Differences per step</h2>',
        _svg_step_plot(report["steps"], report["tolerance"]["atol"]),
        _html_steps_table(report["steps"], noise_steps(report.get("noise_floor"))),
        _html_native(report.get("native") or {}),
        _html_parameter_map(report.get("parameter_map") or {}),
        "".join(f'<p class="fail">warning: {_esc(w)}</p>' for w in report.get("warnings", [])),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_html(report: Mapping[str, Any], path: str | Path) -> None:
    try:
        page = render_html(report)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a report read back from a file someone edited: what lossgraph wrote always renders
        what = f"key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {one_line(exc)}"
        raise VerificationError(f"The report cannot be rendered: a field has the wrong type ({what}).") from None
    write_atomic(path, page)


#: Keys a saved report must have to be rendered.
REPORT_KEYS = ("passed", "tolerance", "reference", "candidate", "steps")


def read_report(path: str | Path) -> dict[str, Any]:
    """A JSON report written by ``lossgraph verify --json``, checked against its schema."""
    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"Report file {str(path)!r} does not exist.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{str(path)!r} is not a JSON file: {exc}.") from None
    except RecursionError:
        raise VerificationError(f"{str(path)!r} is nested too deeply to be a lossgraph report.") from None
    missing = [k for k in REPORT_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise VerificationError(
            f"{str(path)!r} is not a lossgraph verify report: it lacks {', '.join(missing)}."
        )
    problem = report_problem(report)
    if problem:
        raise VerificationError(f"{str(path)!r} is not a report lossgraph can render: {one_line(problem)}.")
    return report


def _html_header(report: Mapping[str, Any]) -> str:
    tol = report["tolerance"]
    rows = [
        ("reference", side_text(report["reference"])),
        ("candidate", side_text(report["candidate"])),
        ("tolerance", f"{tol.get('rule', '')} with tol={tol['atol']:g}, rtol={tol['rtol']:g}"),
        ("inputs", report.get("inputs", "")),
        ("parameters", f"{len((report.get('parameter_map') or {}).get('pairs', []))} paired"),
    ]
    rows += [("precision", _precision_text(role, report[role]["low_precision"]))
             for role in ("reference", "candidate") if report[role].get("low_precision")]
    body = "".join(f"<tr><th>{_esc(k)}</th><td style='text-align:left'>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _html_divergence(div: Mapping[str, Any] | None, passed: bool) -> str:
    if div is None:
        return "" if passed else '<p class="fail">Diverged (no divergence point recorded).</p>'
    heading = "First divergence" if not passed else "First difference above the tolerance (float32 rounding noise)"
    loss = f", loss <code>{_esc(div['loss'])}</code>" if div.get("loss") else ""
    lines = [
        f'<h2 id="divergence">{heading}</h2><div class="box {"divergence" if not passed else "rounding"}">',
        f"<p>Step <b>{div['step']}</b>, <b>{_esc(PHASE_WORDS.get(div['phase'], div['phase']))}</b>{loss}: "
        f"max |diff| <b>{_html_sci(div.get('max_abs_diff'))}</b></p>",
        "<p>" + "".join(f"<code>{_esc(text)}</code>" if name else _esc(text) for text, name in _where_parts(div))
        + ("" if div.get("localized") else " (where the difference was observed, not localized)")
        + "</p>",
    ]
    source = div.get("source")
    if source:
        lines.append(
            f"<p>source <code>{_esc(source.get('file'))}:{_esc(source.get('line'))}</code> "
            f"<code>{_esc(source.get('code', ''))}</code></p>"
        )
    if div.get("hint"):
        lines.append(f'<p class="hint">likely cause: {_esc(div["hint"])}</p>')
    stats = div.get("statistics")
    if stats:
        rows = [("reference", stats["reference"]), ("candidate", stats["candidate"]),
                *((f"input {name}", v) for name, v in stats.get("inputs", {}).items())]
        lines.append(
            f"<table><tr><th>{_esc(stats['what'])}</th><th>shape</th><th>min</th><th>max</th>"
            "<th>mean</th><th>std</th></tr>"
            + "".join(
                f"<tr><td>{_esc(k)}</td><td>{_esc(v['shape'])}</td>"
                + "".join(f"<td>{v[key]:.4g}</td>" if key in v else "<td>-</td>"
                          for key in ("min", "max", "mean", "std"))
                + "</tr>"
                for k, v in rows
            )
            + ("</table><p>the shapes differ</p>" if stats.get("shapes_differ") else
               f"</table><p>max rel diff {_html_sci(stats['max_rel_diff'])}; the smallest tolerance "
               f"that would have passed here: {_html_sci(stats['required_tol'])}</p>")
        )
    lines.append("</div>")
    around = div.get("neighbourhood") or {}
    figures = [
        f"<figure><figcaption>{side}</figcaption>{_svg_neighbourhood(around[side])}</figure>"
        for side in ("reference", "candidate") if around.get(side)
    ]
    if figures:
        lines.append('<h2 id="graph">Graph neighbourhood of the divergence</h2>')
        lines.append(
            "<p>Two hops up and down from the diverging node on each side. Colours: "
            + ", ".join(
                f'<span style="background:{c};padding:0 .3em">{n or "not compared"}</span>'
                for n, c in STATUS_COLORS.items()
            )
            + ".</p>"
        )
        lines.append(f'<div class="graphs">{"".join(figures)}</div>')
    return "\n".join(lines)


def _html_noise_floor(floor: Mapping[str, Any] | None) -> str:
    if not floor:
        return (
            '<h2 id="noise-floor">Noise floor</h2><p>Not run (nothing above the tolerance, or '
            "--no-noise-floor).</p>"
        )
    items = floor.get("items", [])
    verdict_text = {
        "noise": "every difference above the tolerance is float32 rounding noise",
        "semantic": "some differences stay in float64: a real (semantic) difference",
        "none": "nothing above the tolerance",
    }.get(floor.get("verdict"), floor.get("verdict"))
    rows = "".join(
        f"<tr><td>{i['step']}</td><td style='text-align:left'>{_esc(i['what'])}</td>"
        f"<td>{_html_sci(i['float32'])}</td><td>{_html_sci(i['float64'])}</td>"
        f"<td class=\"{'noise' if i['verdict'] == 'noise' else 'fail'}\">{_esc(i['verdict'])}"
        f"{' (amplified: reference nudged ' + _html_sci(i['float64_nudged']) + ')' if i.get('reason') == 'amplified' else ''}</td></tr>"
        for i in sorted(items, key=lambda i: -i["float32"])[:40]
    )
    more = f"<p>{len(items) - 40} more in the JSON report.</p>" if len(items) > 40 else ""
    noise = sum(i["verdict"] == "noise" for i in items)
    return (
        f'<h2 id="noise-floor">Noise floor (float64 re-run)</h2><p class="box"><b>Verdict: '
        f"{_esc(floor.get('verdict'))}</b>: {_esc(verdict_text)}. {len(items)} difference(s) above "
        f"the tolerance, {noise} of them noise; largest float32 {_html_sci(floor.get('max_float32_diff'))}, "
        f"float64 {_html_sci(floor.get('max_float64_diff'))}. Rule: {_esc(floor.get('rule', ''))}.</p>"
        f"<details><summary>each difference above the tolerance</summary><table><tr><th>step</th>"
        f"<th>value</th><th>float32 |diff|</th><th>float64 |diff|</th><th>verdict</th></tr>{rows}"
        f"</table>{more}</details>"
    )


def _series_max(entries: Mapping[str, Any], key: str) -> float:
    values = [e.get(key, 0.0) for e in entries.values()]
    return max((float(v) for v in values if v is not None), default=0.0)


def step_series(steps: list[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Per step, the largest |diff| of each series (None where a step has no such values)."""
    out: dict[str, list[float | None]] = {}
    for key in PLOT_SERIES:
        values = []
        for step in steps:
            entries = step.get(key) or {}
            field_name = "abs_diff" if key == "losses" else "max_abs_diff"
            values.append(_series_max(entries, field_name) if entries else None)
        if any(v is not None for v in values):
            out[key] = values
    return out


def _svg_step_plot(steps: list[Mapping[str, Any]], tol: float) -> str:
    """A logarithmic line plot of the largest difference per step, with the tolerance."""
    series = step_series(steps)
    tol = tol if math.isfinite(tol) else 0.0
    width, height, left, right, top, bottom = 720, 300, 64, 150, 16, 40
    # NaN and Inf (one side's loss is not finite) are drawn at the top, their value in the title
    every = [v for values in series.values() for v in values if v and math.isfinite(v)] + ([tol] if tol > 0 else [])
    lo = math.floor(math.log10(max(min(every, default=PLOT_FLOOR), PLOT_FLOOR)))
    hi = max(math.ceil(math.log10(max(every, default=1.0))), lo + 1)
    zeros = any(v == 0 for values in series.values() for v in values)
    bottom_decade = lo - 1 if zeros else lo  # exact zeros get a row of their own, labelled 0
    count = max(len(steps), 1)

    def x(i: int) -> float:
        return left + (i + 0.5) * (width - left - right) / count

    def y(v: float | None) -> float:
        if v is not None and not math.isfinite(v):
            return float(top)
        value = math.log10(v) if v else bottom_decade
        return top + (hi - value) * (height - top - bottom) / (hi - bottom_decade)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img" aria-label="max |diff| per step" class="step-plot">']
    for decade in range(bottom_decade, hi + 1):
        level = y(10.0 ** decade if decade >= lo else 0.0)
        label = f"1e{decade}" if decade >= lo else "0"
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{level:.1f}" y2="{level:.1f}" '
                   f'stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{level + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{label}</text>')
    for i, step in enumerate(steps):
        out.append(f'<text x="{x(i):.1f}" y="{height - bottom + 16}" font-size="11" '
                   f'text-anchor="middle">{step["step"]}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" font-size="12" '
               f'text-anchor="middle">step</text>')
    if tol > 0:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tol):.1f}" y2="{y(tol):.1f}" '
                   f'stroke="#555" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{width - right + 6}" y="{y(tol) + 4:.1f}" font-size="11">tol {tol:g}</text>')
    for k, (key, values) in enumerate(series.items()):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        points = [(x(i), y(v)) for i, v in enumerate(values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for (px, py), v in zip(points, [v for v in values if v is not None]):
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}">'
                       f"<title>{PLOT_SERIES[key]}: {v:.3g}</title></circle>")
        ly = top + 14 + 18 * (k + 1)
        out.append(f'<rect x="{width - right + 6}" y="{ly - 9}" width="12" height="4" fill="{color}"/>')
        out.append(f'<text x="{width - right + 22}" y="{ly - 4}" font-size="12">{PLOT_SERIES[key]}</text>')
    out.append("</svg>")
    return "".join(out)


def _html_steps_table(steps: list[Mapping[str, Any]], noise: set[int] = frozenset()) -> str:
    series = step_series(steps)
    head = "".join(f"<th>{_esc(PLOT_SERIES[k])}</th>" for k in series)
    rows = []
    for i, step in enumerate(steps):
        label = f"{step.get('loss')} / {step.get('optimizer')}" if step.get("loss") else "forward check"
        cells = "".join(f"<td>{_html_sci(series[k][i])}</td>" for k in series)
        state = ('<td class="pass">pass</td>' if step.get("passed")
                 else '<td class="noise">noise</td>' if step["step"] in noise
                 else f'<td class="fail">FAIL {_esc(step.get("phase_failed") or "")}</td>')
        rows.append(f"<tr><td>{step['step']}</td><td style='text-align:left'>{_esc(label)}</td>{cells}{state}</tr>")
    losses = []
    for step in steps:
        for name, d in step.get("losses", {}).items():
            losses.append(
                f"<tr><td>{step['step']}</td><td style='text-align:left'>{_esc(name)}</td>"
                f"<td>{_fmt(d['reference'])}</td><td>{_fmt(d['candidate'])}</td>"
                f"<td>{_html_sci(d['abs_diff'])}</td><td>{_html_sci(d.get('required_tol'))}</td>"
                f"{_html_item(d)}</tr>"
            )
    return (
        f"<table id='steps'><tr><th>step</th><th>loss / optimizer</th>{head}<th></th></tr>"
        f"{''.join(rows)}</table><h2>Losses</h2><table id='losses'><tr><th>step</th><th>loss</th>"
        f"<th>reference</th><th>candidate</th><th>|diff|</th><th>min tol</th><th></th></tr>"
        f"{''.join(losses)}</table>"
    )


def _html_item(value: Mapping[str, Any]) -> str:
    """The verdict cell of one compared value: pass, noise (green) or FAIL."""
    verdict = value.get("verdict") or ("pass" if value["passed"] else "fail")
    shown = {"pass": "pass", "noise": "noise"}.get(verdict, "FAIL")
    return f'<td class="{verdict if verdict in ("pass", "noise") else "fail"}">{shown}</td>'


def _html_native(native: Mapping[str, Any]) -> str:
    if not native:
        return ""
    parts = ['<h2 id="native">Native fidelity: ONNX Runtime vs eager framework</h2>']
    for side, diffs in native.items():
        rows = "".join(
            f"<tr><td>{d['step']}</td><td>{_html_sci(_series_max(d['losses'], 'max_abs_diff'))}</td>"
            f"<td>{_html_sci(d['parameters']['max_abs_diff'])}</td>"
            f"<td style='text-align:left'>{_esc(d['parameters'].get('worst', ''))}</td></tr>"
            for d in diffs
        )
        parts.append(f"<h3>{_esc(side)}</h3><table><tr><th>step</th><th>losses</th><th>parameters</th>"
                     f"<th>worst parameter</th></tr>{rows}</table>")
    return "".join(parts)


def _html_parameter_map(pmap: Mapping[str, Any]) -> str:
    pairs = pmap.get("pairs", [])
    rows = "".join(
        f"<tr><td>{_esc(p['reference'])}</td><td style='text-align:left'>{_esc(p['candidate'])}</td>"
        f"<td style='text-align:left'>{_esc(p.get('transform', ''))}</td>"
        f"<td style='text-align:left'>{_esc(p.get('how', ''))}</td></tr>"
        for p in pairs
    )
    unpaired = [*pmap.get("unmapped_reference", []), *pmap.get("unmapped_candidate", [])]
    extra = f"<p class='fail'>unpaired: {_esc(', '.join(unpaired))}</p>" if unpaired else ""
    return (
        f"<h2 id='parameter-map'>Parameter map</h2><details><summary>{len(pairs)} pairs</summary>"
        f"<table><tr><th>reference</th><th>candidate</th><th>carried</th><th>paired by</th></tr>"
        f"{rows}</table></details>{extra}"
    )


def _svg_neighbourhood(around: Mapping[str, Any]) -> str:
    """The nodes around a divergence as columns by distance (upstream left), edges as lines."""
    nodes = around.get("nodes", [])
    if not nodes:
        return "<p>(no nodes)</p>"
    box_w, box_h, gap_x, gap_y, pad = 150, 40, 40, 12, 10
    layers = sorted({n["layer"] for n in nodes})
    columns = {layer: [n for n in nodes if n["layer"] == layer] for layer in layers}
    rows = max(len(c) for c in columns.values())
    width = pad * 2 + len(layers) * box_w + (len(layers) - 1) * gap_x
    height = pad * 2 + rows * box_h + (rows - 1) * gap_y
    place = {}
    for ci, layer in enumerate(layers):
        column = columns[layer]
        offset = (rows - len(column)) * (box_h + gap_y) / 2
        for ri, node in enumerate(column):
            place[node["name"]] = (pad + ci * (box_w + gap_x), pad + offset + ri * (box_h + gap_y))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
           f'class="neighbourhood" role="img" aria-label="graph neighbourhood">']
    for src, dst in around.get("edges", []):
        if src in place and dst in place:
            (x1, y1), (x2, y2) = place[src], place[dst]
            out.append(f'<line x1="{x1 + box_w:.1f}" y1="{y1 + box_h / 2:.1f}" x2="{x2:.1f}" '
                       f'y2="{y2 + box_h / 2:.1f}" stroke="#888"/>')
    for node in nodes:
        x0, y0 = place[node["name"]]
        color = STATUS_COLORS.get(node.get("status", ""), STATUS_COLORS[""])
        stroke = "#c62828" if node.get("status") == "origin" else "#999"
        name = node["name"] if len(node["name"]) <= 24 else "…" + node["name"][-23:]
        scope = node.get("scope") or ""
        scope = scope if len(scope) <= 24 else "…" + scope[-23:]
        out.append(
            f'<g><title>{_esc(node["name"])} ({_esc(node.get("scope") or "no scope")}): '
            f'{_esc(node.get("status") or "not compared")}</title>'
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{box_w}" height="{box_h}" rx="5" fill="{color}" '
            f'stroke="{stroke}" stroke-width="{2 if node.get("status") == "origin" else 1}"/>'
            f'<text x="{x0 + 6:.1f}" y="{y0 + 15:.1f}" font-size="12" font-weight="600">{_esc(node["op_type"])}</text>'
            f'<text x="{x0 + 6:.1f}" y="{y0 + 28:.1f}" font-size="10">{_esc(name)}</text>'
            f'<text x="{x0 + 6:.1f}" y="{y0 + 37:.1f}" font-size="8" fill="#555">{_esc(scope)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
