"""Static types without running the graph: what ONNX shape inference leaves open, lossgraph
types from folded constants (lossgraph.runtime.types)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import DISCOGAN
from onnx import TensorProto, helper, numpy_helper

import lossgraph.runtime.session as session
import lossgraph.runtime.types as shapes
from lossgraph.runtime import infer_types
from lossgraph.runtime.float64 import to_float64


def _zero_bias_conv(extra_nodes=(), extra_outputs=()) -> onnx.ModelProto:
    """A bias-free Conv as torch's exporter writes it: bias = Expand(0, Expand(Shape(w)[0:1], [1]))."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Shape", ["w"], ["n_out"], start=0, end=1),
        helper.make_node("Constant", [], ["one"], value_ints=[1]),
        helper.make_node("Expand", ["n_out", "one"], ["bias_shape"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"]),
        helper.make_node("Expand", ["zero_like", "bias_shape"], ["bias"]),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"], pads=[1, 1, 1, 1]),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), *extra_outputs], initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail where infer_types would fall back to running the graph."""

    def refuse(model, names, feeds):
        raise AssertionError(f"measured {names}")

    monkeypatch.setattr(session, "_measure", refuse)


def test_inference_stops_at_expand_of_a_computed_shape():
    """The case this module handles: ONNX's own inference leaves the zero bias untyped."""
    inferred = onnx.shape_inference.infer_shapes(_zero_bias_conv(), data_prop=True)
    typed = {i.name for i in inferred.graph.value_info if shapes._from_value_info(i) is not None}
    assert "bias" not in typed


def test_folded_values_are_typed_without_running(no_measuring):
    types = infer_types(_zero_bias_conv(), feeds={"x": np.zeros((2, 3, 64, 64), np.float32)})
    assert types["bias"] == shapes.ValueType(TensorProto.FLOAT, (4,))
    assert types["y"] == shapes.ValueType(TensorProto.FLOAT, (2, 4, 64, 64))


def test_values_too_large_to_fold_are_typed_by_a_second_inference(no_measuring):
    """A zero tensor expanded to a shape built from the computed one: too large to fold
    (16384 elements), typed by inferring again with the folded shape as an initializer."""
    extra = [
        helper.make_node("Constant", [], ["hw"], value_ints=[64, 64]),
        helper.make_node("Concat", ["bias_shape", "hw"], ["big_shape"], axis=0),
        helper.make_node("Expand", ["zero_like", "big_shape"], ["big"]),
        helper.make_node("Add", ["big", "big"], ["twice"]),
    ]
    model = _zero_bias_conv(extra, [helper.make_tensor_value_info("twice", TensorProto.FLOAT, None)])
    types = infer_types(model, feeds={"x": np.zeros((2, 3, 64, 64), np.float32)})
    assert types["big"] == shapes.ValueType(TensorProto.FLOAT, (4, 64, 64))
    assert types["twice"] == shapes.ValueType(TensorProto.FLOAT, (4, 64, 64))


def test_open_values_are_left_out_without_feeds():
    """What neither inference nor folding types stays out (no feeds, nothing to measure with)."""
    nodes = [helper.make_node("NonZero", ["x"], ["idx"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, None)],
    )
    types = infer_types(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert "idx" not in types


def test_exported_discogan_is_typed_without_running(exported, no_measuring):
    """Every value of the torch DiscoGAN export, and of its float64 conversion, typed statically
    (they had 36 and 72 open values, each gradient build ran the graph to measure them)."""
    model = onnx.load(exported(str(DISCOGAN / "discogan_torch.py")))
    for graph in (model, to_float64(model)):
        types = infer_types(graph, feeds={})
        assert [o for n in graph.graph.node for o in n.output if o and o not in types] == []
