import numpy as np
import pytest

import lossgraph as lg
from lossgraph.errors import SpecError, VerificationError
from lossgraph.inputs import load_inputs, make_input, make_inputs


def test_each_distribution_draws_what_it_says():
    specs = {
        "normal": lg.Input([2000]),
        "uniform": lg.Input([2000], low=2.0, high=3.0),
        "ints": lg.Input([2000], dtype="int64", low=-3, high=4),
        "signs": lg.Input([2000], choices=[-1.0, 1.0]),
        "flags": lg.Input([2000], dtype="bool"),
        "f64": lg.Input([3], dtype="float64"),
    }
    values = make_inputs(specs, seed=1)
    assert abs(values["normal"].mean()) < 0.1 and 0.9 < values["normal"].std() < 1.1
    assert values["uniform"].min() >= 2.0 and values["uniform"].max() < 3.0
    assert values["ints"].dtype == np.int64
    assert set(np.unique(values["ints"])) == set(range(-3, 4))
    assert set(np.unique(values["signs"])) == {-1.0, 1.0}
    assert values["flags"].dtype == bool and 0.4 < values["flags"].mean() < 0.6
    assert values["f64"].dtype == np.float64 and values["normal"].dtype == np.float32


def test_inputs_are_reproducible_and_independent_of_each_other():
    a = make_inputs({"x": lg.Input([4]), "y": lg.Input([4])}, seed=7)
    b = make_inputs({"y": lg.Input([4]), "z": lg.Input([9]), "x": lg.Input([4])}, seed=7)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["x"], a["y"])
    assert not np.array_equal(make_input(lg.Input([4]), "x", 8), a["x"])


def test_float32_values_are_rounded_float64_draws():
    x32 = make_input(lg.Input([5]), "x", 3)
    x64 = make_input(lg.Input([5], dtype="float64"), "x", 3)
    np.testing.assert_array_equal(x32, x64.astype(np.float32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": [2, 0]}, "positive integers"),
        ({"shape": 3}, "list of positive integers"),
        ({"shape": [2], "dtype": "float16"}, "dtype must be one of"),
        ({"shape": [2], "dtype": "int64"}, "needs high="),
        ({"shape": [2], "low": 1.0, "high": 0.0}, "low < high"),
        ({"shape": [2], "choices": []}, "non-empty list"),
        ({"shape": [2], "choices": [1.0], "low": 0.0}, "not both"),
        ({"shape": [2], "dtype": "bool", "high": 1}, "no low/high"),
    ],
)
def test_bad_input_specs_are_spec_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        lg.Input(**kwargs)


def test_load_inputs_checks_names_shapes_and_dtypes(tmp_path):
    specs = {"x": lg.Input([2, 3]), "k": lg.Input([2], dtype="int64", high=3)}
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((2, 3), np.float32), k=np.array([0, 2]))
    loaded = load_inputs(good, specs)
    assert loaded["x"].shape == (2, 3) and loaded["k"].tolist() == [0, 2]
    np.savez(tmp_path / "missing.npz", x=np.ones((2, 3), np.float32))
    with pytest.raises(VerificationError, match="lacks input"):
        load_inputs(tmp_path / "missing.npz", specs)
    np.savez(tmp_path / "shape.npz", x=np.ones((3, 2), np.float32), k=np.array([0, 2]))
    with pytest.raises(VerificationError, match="shape"):
        load_inputs(tmp_path / "shape.npz", specs)
    np.savez(tmp_path / "dtype.npz", x=np.ones((2, 3)), k=np.array([0, 2]))
    with pytest.raises(VerificationError, match="dtype float64, expected float32"):
        load_inputs(tmp_path / "dtype.npz", specs)
    with pytest.raises(VerificationError, match="does not exist"):
        load_inputs(tmp_path / "nope.npz", specs)


def test_choices_draw_each_choice_where_there_is_room():
    for seed in range(50):
        signs = make_input(lg.Input([2, 1], choices=[-1.0, 1.0]), "y", seed)
        assert sorted(signs.ravel()) == [-1.0, 1.0]
        classes = make_input(lg.Input([5], dtype="int64", choices=[0, 3, 7]), "c", seed)
        assert set(classes.tolist()) == {0, 3, 7}
        few = make_input(lg.Input([2], choices=[1.0, 2.0, 3.0]), "f", seed)  # no room: plain draws
        assert set(few.tolist()) <= {1.0, 2.0, 3.0}
    many = make_input(lg.Input([4000], choices=[-1.0, 1.0]), "y", 0)
    assert 0.45 < (many == 1.0).mean() < 0.55  # still uniform
