"""Loading FILE.py:NAME and validating the Spec it returns."""

import pytest

import lossgraph as lg
from lossgraph.errors import SpecError
from lossgraph.spec import load_spec, parse_target

GOOD = """
import torch
import lossgraph as lg

def spec():
    model = torch.nn.Linear(3, 2)
    def loss(model, x):
        return model(x).pow(2).mean()
    return lg.Spec(model=model, loss=loss, inputs={"x": lg.Input([4, 3])})

def not_a_spec():
    return 42

def raises():
    raise RuntimeError("boom")

def wrong_inputs():
    model = torch.nn.Linear(3, 2)
    def loss(model, x):
        return model(x).sum()
    return lg.Spec(model=model, loss=loss, inputs={"x": lg.Input([4, 3]), "y": lg.Input([4])})

def not_a_model():
    return lg.Spec(model=object(), loss=lambda model, x: x, inputs={"x": lg.Input([1])})

def bad_schedule():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return lg.Spec(model=model, loss=lambda model, x: model(x).sum(), inputs={"x": lg.Input([1, 3])},
                   optimizers={"sgd": opt}, schedule=[("loss", "adam")])
"""


def test_parse_target_defaults_to_spec():
    assert parse_target("a/b.py") == (__import__("pathlib").Path("a/b.py"), "spec")
    assert parse_target("a/b.py:other")[1] == "other"


def test_load_spec_returns_a_validated_spec(write_spec):
    path = write_spec(GOOD)
    spec = load_spec(str(path))
    assert isinstance(spec, lg.Spec) and spec.framework == "torch"
    assert spec.source == f"{path}:spec"


@pytest.mark.parametrize(
    "target, message",
    [
        (":not_a_spec", "must return a lossgraph.Spec, got int"),
        (":missing", "has no function 'missing'; functions defined there: bad_schedule"),
        (":raises", "raised RuntimeError: boom"),
        (":wrong_inputs", "does not accept the spec's inputs (x, y)"),
        (":not_a_model", "must be a torch.nn.Module or a paddle.nn.Layer"),
        (":bad_schedule", "names optimizer 'adam', but the optimizers are: sgd"),
    ],
)
def test_spec_errors(write_spec, target, message):
    path = write_spec(GOOD)
    with pytest.raises(SpecError) as info:
        load_spec(f"{path}{target}")
    assert message in str(info.value)


def test_missing_and_non_python_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "nope.py"))
    other = tmp_path / "spec.txt"
    other.write_text("x")
    with pytest.raises(SpecError, match="is not a .py file"):
        load_spec(str(other))


def test_import_errors_are_one_line(write_spec):
    path = write_spec("import this_module_does_not_exist_anywhere\n", "broken.py")
    with pytest.raises(SpecError, match="Importing spec file .* failed: ModuleNotFoundError"):
        load_spec(str(path))
