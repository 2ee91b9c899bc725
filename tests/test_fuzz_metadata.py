"""Property-based probes of the JSON lossgraph reads back: a graph's metadata with any field
replaced by any JSON value, and a saved report with any field replaced, either load and verify
or fail with one LossgraphError (one line, exit 2) -- never another exception."""

from __future__ import annotations

import json

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossgraph as lg
from lossgraph.errors import LossgraphError
from lossgraph.graph import META_KEY, LossGraph
from lossgraph.verify.pipeline import VerifyOptions, prepare

SPEC = """
import torch
import lossgraph as lg

def spec():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    return lg.Spec(model=model, loss=lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y),
                   inputs={"x": lg.Input([4, 3]), "y": lg.Input([4], dtype="int64", high=2)},
                   optimizers={"adam": torch.optim.Adam(model.parameters(), lr=1e-3)})
"""

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "mlp.py").write_text(SPEC)
    out = folder / "mlp.onnx"
    lg.export(f"{folder / 'mlp.py'}:spec", out)
    report = folder / "report.json"
    result = lg.verify(out, out, grads=True, steps=1)
    from lossgraph.verify.report import write_json

    write_json(result, report)
    return out, report


def _paths(data, prefix=()):
    """Every key path into a JSON value (dicts and lists), the value itself first."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data[:3]):
            yield from _paths(value, (*prefix, index))


def _replaced(data, path, value):
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replaced(data[path[0]], path[1:], value)
    return copy


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tampered_metadata_loads_or_fails_in_one_line(exported, tmp_path_factory, data):
    graph, _ = exported
    model = onnx.load(str(graph))
    entry = next(p for p in model.metadata_props if p.key == META_KEY)
    meta = json.loads(entry.value)
    path = data.draw(st.sampled_from([p for p in _paths(meta) if p != ("version",)]))
    entry.value = json.dumps(_replaced(meta, path, data.draw(JSON)))
    tampered = tmp_path_factory.mktemp("tampered") / "t.onnx"
    onnx.save(model, str(tampered))
    try:
        loaded = LossGraph.load(tampered)
        prepare(loaded, graph, VerifyOptions(grads=True, steps=1))
    except LossgraphError:
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tampered_report_renders_or_fails_in_one_line(exported, tmp_path_factory, data):
    from lossgraph.verify.report import read_report, write_html

    _, report = exported
    original = json.loads(report.read_text())
    path = data.draw(st.sampled_from(list(_paths(original))[1:]))
    folder = tmp_path_factory.mktemp("report")
    tampered = folder / "r.json"
    tampered.write_text(json.dumps(_replaced(original, path, data.draw(JSON))))
    try:
        write_html(read_report(tampered), folder / "r.html")
    except LossgraphError:
        pass
