"""Packed parameters against split ones, unit by unit: fused names read, values carried and
gathered back along either axis, and the ``--name-map`` grammar for slices that no rule finds
(the pairs themselves: ``test_transformer.py``)."""

import json

import numpy as np
import pytest
from conftest import EXAMPLES

import lossgraph as lg
from lossgraph.errors import VerificationError
from lossgraph.verify.align import ParamPair, Part, _split_order

E = 8


def test_split_order_reads_fused_names():
    children = {c: c for c in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert _split_order("qkv_proj", children) == ["q_proj", "k_proj", "v_proj"]
    assert _split_order("in_proj", children) == ["q_proj", "k_proj", "v_proj"]
    assert _split_order("gate_up_proj", {c: c for c in ("gate_proj", "up_proj", "down_proj")}) \
        == ["gate_proj", "up_proj"]
    assert _split_order("kv", {"k": "k", "v": "v"}) == ["k", "v"]
    assert _split_order("fc", {"fc1": "fc1", "fc2": "fc2"}) is None
    assert _split_order("qk_proj", {"q_proj": "q", "v_proj": "v"}) is None


@pytest.mark.parametrize("axis, transform", [(0, "transpose"), (1, "identity"), (0, "identity")])
def test_packed_values_are_carried_and_gathered_back(axis, transform):
    rng = np.random.default_rng(0)
    packed = rng.normal(size=(6, 4) if axis == 0 else (4, 6)).astype(np.float32)
    bounds = [(0, 2), (2, 5), (5, 6)]
    parts = [Part(f"p{i}", b, transform, axis) for i, b in enumerate(bounds)]
    pair = ParamPair.split("packed", parts)
    carried = pair.carry_to(packed)
    for part in parts:
        piece = part.take(packed)
        np.testing.assert_array_equal(carried[part.name], piece.T if transform == "transpose" else piece)
    np.testing.assert_array_equal(pair.gather(carried), packed)
    assert pair.gather({"p0": carried["p0"]}) is None
    zeros = pair.gather({"p1": carried["p1"]}, like=packed)
    assert zeros.shape == packed.shape and np.count_nonzero(parts[1].take(zeros)) == parts[1].take(packed).size
    # the other way round: each split reference parameter is a slice of a packed candidate one
    into = {"packed": np.zeros_like(packed)}
    for part in parts:
        piece = carried[part.name]
        single = ParamPair.slice_of(part.name, Part("packed", part.rows, transform, axis))
        into.update(single.carry_to(piece, into))
        np.testing.assert_array_equal(single.gather(into), piece)
    np.testing.assert_array_equal(into["packed"], packed)


@pytest.fixture(scope="module")
def graphs(exported):
    folder = EXAMPLES / "transformer"
    return {"tel_torch": exported(f"{folder}/transformer_torch.py:encoder_layer"),
            "tel_paddle": exported(f"{folder}/transformer_paddle.py:encoder_layer")}


def test_name_map_slices_pair_what_no_rule_finds(cli, graphs, tmp_path):
    """The packed tensor renamed so that no rule applies: the name map says it."""
    slices = [{"name": f"self_attn.{p}_proj.weight", "rows": [i * E, (i + 1) * E]}
              for i, p in enumerate("qkv")]
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"self_attn.in_proj_weight": slices}))
    result = cli("verify", graphs["tel_torch"], graphs["tel_paddle"], "--name-map", path,
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    pairs = json.loads((tmp_path / "r.json").read_text())["parameter_map"]["pairs"]
    mapped = next(p for p in pairs if p["reference"] == "self_attn.in_proj_weight")
    assert mapped["how"] == "map" and [p["transform"] for p in mapped["parts"]] == ["transpose"] * 3
    back = {f"self_attn.{p}_proj.weight": {"name": "self_attn.in_proj_weight",
                                           "rows": [i * E, (i + 1) * E]} for i, p in enumerate("qkv")}
    path.write_text(json.dumps(back))
    assert cli("verify", graphs["tel_paddle"], graphs["tel_torch"], "--name-map", path).exit_code == 0


@pytest.mark.parametrize("entry, message", [
    ([{"name": "self_attn.q_proj.weight"}], "needs exactly one of 'rows' or 'cols'"),
    ([{"name": "self_attn.q_proj.weight", "rows": [8, 0]}], "must be \\[start, stop\\]"),
    ([{"name": "self_attn.q_proj.weight", "rows": [0, 8]},
      {"name": "self_attn.k_proj.weight", "rows": [8, 16]}], "slices of 'self_attn.in_proj_weight' \\(0-8, 8-16 "
                                                           "along axis 0\\) must cover its 24 rows"),
    ([{"name": "self_attn.q_proj.weight", "rows": [0, 8]},
      {"name": "self_attn.k_proj.weight", "rows": [8, 99]}], "runs past the reference's 'self_attn.in_proj_weight'"),
])
def test_bad_name_map_slices_are_one_line(cli, graphs, tmp_path, entry, message):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"self_attn.in_proj_weight": entry}))
    result = cli("verify", graphs["tel_torch"], graphs["tel_paddle"], "--name-map", path)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(VerificationError, match=message):
        lg.verify(graphs["tel_torch"], graphs["tel_paddle"], name_map=str(path))
