"""Hostile inputs and faults through the command line: every one gives one line on stderr, exit
code 2 (130 for an interrupt), no traceback, and leaves the files it did not mean to write as
they were. The outputs' locations are checked before the run starts, writes are atomic, an
output never replaces an input, a spec that exits is no success."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
from click.testing import CliRunner

from lossgraph.cli import main

SPEC = """
    import torch
    import lossgraph as lg

    {top}

    def spec():
        {body}
        torch.manual_seed(0)
        return lg.Spec(model=torch.nn.Linear(3, 2), loss=lambda m, x: (m(x) ** 2).mean(),
                       inputs={{"x": lg.Input([4, 3])}})
"""


def run(*args):
    """The CLI as a user runs it (standalone: click's own error printing included)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        result.exception)
    return result


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def export_refused(tmp_path, source: str) -> str:
    """Export a spec written from ``source``: it must be refused (exit 2, nothing written);
    returns the one error line."""
    path = tmp_path / "refused.py"
    path.write_text(__import__("textwrap").dedent(source))
    out = tmp_path / "refused.onnx"
    result = run("export", path, "-o", out)
    assert result.exit_code == 2 and not out.exists()
    return one_error_line(result)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    spec = folder / "linear.py"
    spec.write_text(__import__("textwrap").dedent(SPEC.format(top="", body="pass")))
    out = folder / "linear.onnx"
    assert run("export", spec, "-o", out).exit_code == 0
    return out


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_a_report_into_a_missing_folder_is_refused_before_the_run(graph, tmp_path, option):
    result = run("verify", graph, graph, option, tmp_path / "missing" / "r.out")
    assert result.exit_code == 2
    assert "does not exist" in one_error_line(result)
    assert "PASSED" not in result.stdout  # refused before the run, not after it


def test_outputs_that_cannot_be_files_are_refused(graph, tmp_path):
    spec = graph.with_name("linear.py")
    for target in (tmp_path, "/dev/full"):
        result = run("export", spec, "-o", target)
        assert result.exit_code == 2 and str(target) in one_error_line(result), target
    result = run("report", tmp_path / "r.json", "--html", tmp_path / "missing" / "x.html")
    assert result.exit_code == 2 and "does not exist" in one_error_line(result)


def test_an_output_never_replaces_an_input(graph, tmp_path):
    spec = graph.with_name("linear.py")
    before = digest(spec), digest(graph)
    result = run("export", spec, "-o", spec)
    assert result.exit_code == 2 and "input of this run" in one_error_line(result)
    result = run("verify", graph, graph, "--json", graph)
    assert result.exit_code == 2 and "input of this run" in one_error_line(result)
    assert (digest(spec), digest(graph)) == before
    report = tmp_path / "same.out"
    result = run("verify", graph, graph, "--json", report, "--html", report)
    assert result.exit_code == 2 and "twice" in one_error_line(result)
    assert not report.exists()


def test_a_failed_write_leaves_the_old_file_and_no_debris(graph, tmp_path, monkeypatch):
    """A full disk while the report is written: the earlier report stays byte-identical."""
    report = tmp_path / "r.json"
    assert run("verify", graph, graph, "--json", report).exit_code == 0
    before = digest(report)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    result = run("verify", graph, graph, "--seed", "3", "--json", report)
    assert result.exit_code == 2 and "No space left on device" in one_error_line(result)
    assert digest(report) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    out = tmp_path / "again.onnx"
    result = run("export", graph.with_name("linear.py"), "-o", out)
    assert result.exit_code == 2 and not out.exists()


@pytest.mark.parametrize("command", ["export", "verify"])
def test_a_negative_seed_is_bad_usage(graph, command):
    args = [graph.with_name("linear.py"), "-o", "x.onnx"] if command == "export" else [graph, graph]
    result = run(command, *args, "--seed", "-1")
    assert result.exit_code == 2 and "-1" in one_error_line(result)


def test_usage_errors_are_one_line():
    for args in (["verify", "only-one.onnx"], ["verify", "a", "b", "--steps", "x"], ["frobnicate"]):
        result = run(*args)
        assert result.exit_code == 2
        assert one_error_line(result).startswith("Error: ")


@pytest.mark.parametrize(("top", "body", "said"), [
    ("import sys; sys.exit(3)", "pass", "SystemExit(3)"),
    ("", "raise SystemExit(0)", "SystemExit(0)"),
    ("", "import sys; sys.exit(0)", "sys.exit()"),
])
def test_a_spec_that_exits_is_no_success(tmp_path, top, body, said):
    path = tmp_path / "exits.py"
    path.write_text(__import__("textwrap").dedent(SPEC.format(top=top, body=body)))
    out = tmp_path / "exits.onnx"
    result = run("export", path, "-o", out)
    assert result.exit_code == 2 and said in one_error_line(result)
    assert not out.exists()


def test_an_interrupt_exits_130_and_writes_nothing(tmp_path):
    path = tmp_path / "interrupted.py"
    path.write_text(__import__("textwrap").dedent(SPEC.format(top="", body="raise KeyboardInterrupt")))
    out = tmp_path / "interrupted.onnx"
    result = run("export", path, "-o", out)
    assert result.exit_code == 130 and "Interrupted" in one_error_line(result)
    assert not out.exists()


def test_a_graph_compared_with_itself_is_said(graph):
    result = run("verify", graph, graph)
    assert result.exit_code == 0
    assert "same file" in " ".join(result.stdout.split())


@pytest.mark.parametrize(("field", "value", "said"), [
    ("inputs", [], "inputs must be an object"),
    ("losses", "loss", "losses must be a list"),
    ("train", "yes", "train must be true or false"),
    ("params", {"weight": {"shape": "3", "dtype": "float32", "trainable": True}}, "params.weight.shape"),
    ("schedule", [["loss"]], "schedule[0] must be a list of 2"),
    ("surprise", 1, "surprise is not a field"),
    ("optimizers", {"opt": {"cls": "SGD", "framework": "torch", "groups": [{"params": ["weight"], "lr": "fast"}]}},
     "optimizers.opt.groups[0].lr must be a finite number, got 'fast'"),
    ("optimizers", {"opt": {"cls": "SGD", "framework": "torch", "groups": [{"params": ["weight"], "lr": float("nan")}]}},
     "optimizers.opt.groups[0].lr must be a finite number, got nan"),
    ("optimizers", {"opt": {"cls": "Adam", "framework": "torch", "groups": [{"params": ["weight"], "betas": "x"}]}},
     "optimizers.opt.groups[0].betas must be a list of 2 numbers"),
    ("optimizers", {"opt": {"cls": "SGD", "framework": "torch", "groups": []}}, "optimizers.opt.groups is empty"),
    ("lr_schedulers", {"opt": {"lrs": [["x"]]}}, "lr_schedulers.opt.lrs[0][0] must be a finite number"),
    ("lr_schedulers", {"opt": {}}, "lr_schedulers.opt.lrs must be a non-empty list"),
    ("dropout", [{"p": "half", "scale": 2.0}], "dropout[0].p must be a finite number"),
])
def test_tampered_metadata_names_the_field(graph, tmp_path, field, value, said):
    import json

    import onnx

    from lossgraph.graph import META_KEY

    model = onnx.load(str(graph))
    entry = next(p for p in model.metadata_props if p.key == META_KEY)
    meta = json.loads(entry.value)
    meta[field] = value
    entry.value = json.dumps(meta)
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    result = run("verify", tampered, graph)
    assert result.exit_code == 2 and said in one_error_line(result)


@pytest.mark.parametrize(("path", "value", "said"), [
    (["tolerance"], "tight", "$.tolerance: 'tight' is not of type 'object'"),
    (["tolerance", "atol"], "tight", "$.tolerance.atol: 'tight' is not of type 'number'"),
    (["passed"], "yes", "$.passed: 'yes' is not of type 'boolean'"),
    (["steps"], {}, "$.steps: {} is not of type 'array'"),
    (["steps", 0, "step"], "zero", "$.steps[0].step: 'zero' is not of type 'integer'"),
    (["reference"], [], "$.reference: [] is not of type 'object'"),
    (["native"], [1], "$.native: [1] is not of type 'object', 'null'"),
])
def test_a_report_with_a_field_of_the_wrong_type_names_it(graph, tmp_path, path, value, said):
    import json

    report = tmp_path / "r.json"
    assert run("verify", graph, graph, "--json", report).exit_code == 0
    data = json.loads(report.read_text())
    owner = data
    for key in path[:-1]:
        owner = owner[key]
    owner[path[-1]] = value
    report.write_text(json.dumps(data))
    out = tmp_path / "r.html"
    result = run("report", report, "--html", out)
    assert result.exit_code == 2 and said in one_error_line(result)
    assert not out.exists()


CLASSES_SPEC = """
    import torch
    import lossgraph as lg

    def spec():
        torch.manual_seed(0)
        return lg.Spec(model=torch.nn.Linear(3, 10),
                       loss=lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y),
                       inputs={"x": lg.Input([4, 3]), "y": lg.Input([4], dtype="int64", high=10)})
"""


@pytest.mark.parametrize(("label", "said"), [(99, "99, outside its range [0, 10)"),
                                             (-7, "-7, outside"), (-1, "-1, outside")])
def test_labels_out_of_range_in_an_inputs_file_are_named(tmp_path, label, said):
    import numpy as np

    spec = tmp_path / "classes.py"
    spec.write_text(__import__("textwrap").dedent(CLASSES_SPEC))
    graph = tmp_path / "classes.onnx"
    assert run("export", spec, "-o", graph).exit_code == 0
    feeds = tmp_path / "inputs.npz"
    np.savez(feeds, x=np.zeros((4, 3), np.float32), y=np.array([1, 2, label, 3], np.int64))
    result = run("verify", graph, graph, "--inputs", feeds)
    assert result.exit_code == 2 and "'y'" in (line := one_error_line(result)) and said in line


@pytest.mark.parametrize(("fields", "said"), [
    ({"dtype": "int32", "high": 2**40}, "does not fit its dtype int32"),
    ({"dtype": "int32", "choices": [1, 2, 2**40]}, "Input choice 1099511627776 does not fit its dtype int32"),
    ({"low": -1e308, "high": 1e308}, "a finite high - low"),
])
def test_inputs_whose_values_would_wrap_or_overflow_are_refused(fields, said):
    """An int32 input drawn from [0, 2**40) wrapped to negative values, choices beyond the dtype
    to values that are no choice, a float range of 2e308 overflowed: each is refused at once."""
    from lossgraph.errors import SpecError
    from lossgraph.spec import Input

    with pytest.raises(SpecError, match=said.replace("(", r"\(")):
        Input([3], **fields)


def test_the_memory_estimate_counts_the_64_bit_draw(monkeypatch):
    """Inputs are drawn in 64 bits and cast: 1 GiB of float32 needs 3 GiB while drawn."""
    import lossgraph.inputs as inputs
    from lossgraph.errors import SpecError
    from lossgraph.spec import Input

    specs = {"x": Input([2**28])}  # 1 GiB as float32, 2 GiB drawn as float64
    monkeypatch.setattr(inputs, "available_memory", lambda: int(2.5 * 2**30))
    with pytest.raises(SpecError, match="3.0 GiB"):
        inputs.check_fits(specs)
    monkeypatch.setattr(inputs, "available_memory", lambda: int(3.5 * 2**30))
    inputs.check_fits(specs)


def test_inputs_too_large_for_the_machine_are_refused_before_allocating(tmp_path):
    assert "GiB" in export_refused(tmp_path, SPEC.format(top="", body="pass").replace(
        "lg.Input([4, 3])", "lg.Input([400000, 400000, 3])"))


def test_an_input_named_like_a_parameter_is_named_at_export(tmp_path):
    spec = tmp_path / "clash.py"
    spec.write_text(__import__("textwrap").dedent("""
        import torch
        import lossgraph as lg

        def spec():
            return lg.Spec(model=torch.nn.Linear(3, 2), loss=lambda m, weight: (m(weight) ** 2).mean(),
                           inputs={"weight": lg.Input([4, 3])})
    """))
    out = tmp_path / "clash.onnx"
    result = run("export", spec, "-o", out)
    assert result.exit_code == 2 and "'weight' has the name of a parameter" in one_error_line(result)
    assert not out.exists()


def test_models_without_parameters_are_compared(tmp_path):
    """Nothing to pair is no reason to refuse: the losses (and, with --grads, nothing else) are
    compared. A model without parameters against one with them differs in structure."""

    graphs = {}
    for name, (module, layer) in {"torch": ("torch", "torch.nn.Tanh()"),
                                  "paddle": ("paddle", "paddle.nn.Tanh()"),
                                  "linear": ("torch", "torch.nn.Linear(3, 3)")}.items():
        path = tmp_path / f"spec_{name}.py"  # a file named torch.py would shadow torch
        path.write_text(
            f"import {module}\nimport lossgraph as lg\n\n\ndef spec():\n"
            f"    return lg.Spec(model={layer}, loss=lambda m, x: (m(x) ** 2).mean(),\n"
            f"                   inputs={{'x': lg.Input([4, 3])}})\n")
        graphs[name] = tmp_path / f"{name}.onnx"
        assert run("export", path, "-o", graphs[name]).exit_code == 0, name
    assert run("verify", graphs["torch"], graphs["paddle"], "--grads", "--steps", "2").exit_code == 0
    result = run("verify", graphs["linear"], graphs["paddle"])
    assert result.exit_code == 2 and "differ in structure" in one_error_line(result)


def test_a_paddle_trace_failure_names_its_cause_and_line(tmp_path):
    """dy2static's report starts with the generated forward's code; the one line carries the
    error it ends with and the user's line that raised it."""
    spec = tmp_path / "numpy_in_forward.py"
    spec.write_text(__import__("textwrap").dedent("""
        import paddle
        import lossgraph as lg

        class M(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.fc = paddle.nn.Linear(3, 2)

            def forward(self, x):
                h = self.fc(x)
                return h * float(h.numpy().mean())

        def spec():
            return lg.Spec(model=M(), loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": lg.Input([4, 3])})
    """))
    result = run("export", spec, "-o", tmp_path / "out.onnx")
    line = one_error_line(result)
    assert result.exit_code == 2
    assert "'numpy' only can be called by `paddle.Tensor` in dynamic graph mode" in line
    assert "numpy_in_forward.py:12: return h * float(h.numpy().mean())" in line


def test_steps_that_cannot_fit_in_memory_are_refused_before_the_run(graph):
    result = run("verify", graph, graph, "--steps", "1000000000")
    line = one_error_line(result)
    assert result.exit_code == 2 and "--steps 1000000000 needs about" in line and "or fewer" in line
    assert "PASSED" not in result.stdout


def _graph_files(folder, graph):
    """Graph files that are not lossgraph graphs: empty, truncated, random, foreign."""
    import onnx

    (folder / "empty.onnx").write_bytes(b"")
    (folder / "truncated.onnx").write_bytes(graph.read_bytes()[:300])
    (folder / "random.onnx").write_bytes(bytes(range(256)) * 8)
    model = onnx.load(str(graph))
    del model.metadata_props[:]
    onnx.save(model, str(folder / "foreign.onnx"))


@pytest.mark.parametrize(("args", "said"), [
    (["{empty}", "{graph}"], "no lossgraph metadata"),
    (["{truncated}", "{graph}"], "not a readable ONNX file"),
    (["{random}", "{graph}"], "not a readable ONNX file"),
    (["{foreign}", "{graph}"], "no lossgraph metadata"),
    (["{graph}", "{missing}"], "does not exist"),
    (["{graph}", "{graph}", "--tol", "-1"], "Tolerances must be finite"),
    (["{graph}", "{graph}", "--rtol", "nan"], "Tolerances must be finite"),
    (["{graph}", "{graph}", "--steps", "-3"], "--steps"),
    (["{graph}", "{graph}", "--device", "tpu"], "--device"),
    (["{graph}", "{graph}", "--native"], "--steps"),
    (["{graph}", "{graph}", "--inputs", "{wrong_dtype}"], "dtype float64, expected float32"),
    (["{graph}", "{graph}", "--inputs", "{not_npz}"], "not a readable .npz"),
    (["{graph}", "{graph}", "--inputs", "{no_x}"], "lacks input(s) x"),
    (["{graph}", "{graph}", "--name-map", "{not_json}"], "not valid JSON"),
    (["{graph}", "{graph}", "--name-map", "{list_map}"], "must be a JSON object"),
    (["{graph}", "{graph}", "--name-map", "{bad_entry}"], "entry 'weight' must be"),
    (["{graph}", "{graph}", "--name-map", "{typo_entry}"], "entry 'weight' has key 'tranpose'"),
    (["{graph}", "{graph}", "--name-map", "{deep_map}"], "nested too deeply"),
    (["{graph}", "{graph}", "--name-map", ""], "is empty"),
    (["{graph}", "{graph}", "--inputs", ""], "is empty"),
    (["{graph}", "{graph}", "--json", ""], "is empty"),
    (["{graph}", "{broken}"], "The candidate graph ("),
])
def test_bad_verify_inputs_are_one_line(graph, tmp_path, args, said):
    import numpy as np
    import onnx

    _graph_files(tmp_path, graph)
    np.savez(tmp_path / "wrong_dtype.npz", x=np.zeros((4, 3), np.float64))
    np.savez(tmp_path / "no_x.npz", y=np.zeros((4, 3), np.float32))
    (tmp_path / "not_npz.npz").write_text("not an npz")
    (tmp_path / "not_json.json").write_text("{")
    (tmp_path / "list_map.json").write_text("[1, 2]")
    (tmp_path / "bad_entry.json").write_text('{"weight": 3}')
    (tmp_path / "typo_entry.json").write_text('{"weight": {"name": "weight", "tranpose": true}}')
    (tmp_path / "deep_map.json").write_text("[" * 100000 + "]" * 100000)
    model = onnx.load(str(graph))
    del model.graph.node[:]  # a tampered graph ONNX Runtime cannot load
    onnx.save(model, str(tmp_path / "broken.onnx"))
    names = {p.stem: p for p in tmp_path.iterdir()} | {"graph": graph, "missing": tmp_path / "no.onnx"}
    result = run("verify", *[a.format(**names) for a in args])
    assert result.exit_code == 2 and said in one_error_line(result)


def test_sigint_during_a_run_exits_130_and_writes_nothing(graph, tmp_path):
    """Ctrl-C while the steps run: exit 130 (not 1, "diverged"), one line, no report."""
    import signal
    import subprocess
    import sys
    import time

    report = tmp_path / "interrupted.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "lossgraph.cli", "verify", str(graph), str(graph), "--steps", "5000", "--no-noise-floor",
         "--json", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(6)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip() == "Interrupted."
    assert not report.exists() and list(tmp_path.iterdir()) == []


def test_two_runs_at_once_give_the_same_complete_reports(graph, tmp_path):
    """Two verify runs started together, one writing its own report and both writing the same
    one: each exits 0, the reports are byte-identical to a run alone (same seed, same bytes),
    and the shared report is whole (written by rename, never interleaved)."""
    import subprocess
    import sys

    alone, own, shared = tmp_path / "alone.json", tmp_path / "own.json", tmp_path / "shared.json"
    assert run("verify", graph, graph, "--steps", "3", "--json", alone).exit_code == 0

    def start(report):
        return subprocess.Popen(
            [sys.executable, "-m", "lossgraph.cli", "verify", str(graph), str(graph), "--steps", "3",
             "--json", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    runs = [start(own), start(shared), start(shared)]
    for process in runs:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert digest(own) == digest(alone) == digest(shared)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.json", "own.json", "shared.json"]


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_report_with_a_non_finite_difference_renders(graph, tmp_path, value):
    """One side's loss NaN or Inf is a divergence of size inf: its report renders (the point
    drawn at the top of the plot), and so does a saved report whose tolerance is infinite."""
    import json

    report = tmp_path / "r.json"
    assert run("verify", graph, graph, "--steps", "2", "--json", report).exit_code == 0
    data = json.loads(report.read_text())
    data["steps"][1]["losses"]["loss"].update(candidate=value, abs_diff=value)
    data["steps"][1]["parameters"]["weight"]["max_abs_diff"] = value
    data["tolerance"]["atol"] = float("inf")
    report.write_text(json.dumps(data))
    out = tmp_path / "r.html"
    result = run("report", report, "--html", out)
    assert result.exit_code == 0, result.output
    assert "<svg" in out.read_text()


def test_deeply_nested_metadata_is_one_line(graph, tmp_path):
    import onnx

    from lossgraph.graph import META_KEY

    model = onnx.load(str(graph))
    entry = next(p for p in model.metadata_props if p.key == META_KEY)
    entry.value = "[" * 100000 + "]" * 100000
    onnx.save(model, str(tmp_path / "deep.onnx"))
    result = run("verify", tmp_path / "deep.onnx", graph)
    assert result.exit_code == 2 and "nested too deeply" in one_error_line(result)


@pytest.mark.parametrize(("top", "body", "said"), [
    ("class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError('no')", "raise Odd()",
     "Odd whose message cannot be printed"),
    ("", "raise GeneratorExit('ge')", "GeneratorExit: ge"),
])
def test_whatever_a_spec_raises_is_one_line(tmp_path, top, body, said):
    path = tmp_path / "odd.py"
    path.write_text(__import__("textwrap").dedent(SPEC.format(top=top.replace("\n", "\n    "), body=body)))
    out = tmp_path / "odd.onnx"
    result = run("export", path, "-o", out)
    assert result.exit_code == 2 and said in one_error_line(result)
    assert not out.exists()


def test_a_loss_named_like_an_input_is_refused(tmp_path):
    assert "loss 'x' has the name of an input" in export_refused(tmp_path, SPEC.format(top="", body="pass").replace(
        "loss=lambda m, x: (m(x) ** 2).mean()", "loss=lambda m, x: {'x': (m(x) ** 2).mean()}"))


NAN_LR = """
    import torch
    import lossgraph as lg

    def spec():
        m = torch.nn.Linear(3, 2)
        return lg.Spec(model=m, loss=lambda m, x: (m(x) ** 2).mean(), inputs={"x": lg.Input([4, 3])},
                       optimizers={"sgd": torch.optim.SGD(m.parameters(), lr=float("nan"))})
"""


def test_an_nan_learning_rate_is_refused_at_export(tmp_path):
    """lr=NaN trained every parameter into NaN, and NaN against NaN compared as no difference."""
    assert "optimizers.sgd.groups[0].lr must be a finite number" in export_refused(tmp_path, NAN_LR)


def test_an_output_stays_where_it_was_asked_for_when_the_spec_changes_directory(tmp_path):
    """-o is resolved before the spec runs: a spec that calls os.chdir() does not move it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = tmp_path / "moving.py"
    path.write_text(__import__("textwrap").dedent(SPEC.format(top="import os", body=f"os.chdir({str(elsewhere)!r})")))
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = run("export", path, "-o", "out.onnx")
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.onnx").exists() and not (elsewhere / "out.onnx").exists()
