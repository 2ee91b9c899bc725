"""OrtRunner: graph outputs that a Reshape computes come back as numpy views, values unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lossgraph.runtime.session import OrtRunner, reshapes_as_views


def reshaping_model() -> onnx.ModelProto:
    """Outputs computed by Reshapes in each form the rewrite meets or must leave alone."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("a", f, [4, 6]), helper.make_tensor_value_info("b", f, [6, 3])]
    shapes = {"to_2x6": [2, 6], "keep_first": [0, 3, -1], "flat": [-1], "allowzero_shape": [3, 4]}
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["ab"]),  # [4, 3]
        helper.make_node("Reshape", ["ab", "to_2x6"], ["ab_2x6"]),  # an output, by Reshape
        helper.make_node("Add", ["a", "a"], ["a2"]),
        helper.make_node("Reshape", ["a2", "keep_first"], ["a2_view"]),
        helper.make_node("Identity", ["a2_view"], ["a2_out"]),  # through an Identity
        helper.make_node("Reshape", ["a", "flat"], ["a_flat"]),  # of a graph input: left alone
        helper.make_node("Constant", [], ["shape_const"], value=numpy_helper.from_array(np.array([3, 4], np.int64))),
        helper.make_node("Reshape", ["ab", "shape_const"], ["ab_3x4"]),  # shape from a Constant
        helper.make_node("Reshape", ["ab", "allowzero_shape"], ["ab_az"], allowzero=1),  # left alone
    ]
    outputs = ["ab_2x6", "a2_out", "a_flat", "ab_3x4", "ab", "ab_az"]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info(o, f, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.array(v, np.int64), k) for k, v in shapes.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_outputs_of_reshapes_are_fetched_unreshaped():
    model = reshaping_model()
    rewritten, views = reshapes_as_views(model)
    assert {k: v[0] for k, v in views.items()} == {"ab_2x6": "ab", "a2_out": "a2", "ab_3x4": "ab"}
    assert [o.name for o in rewritten.graph.output] == ["ab", "a2", "a_flat", "ab_az"]
    declared = {o.name: o.type.tensor_type.elem_type for o in rewritten.graph.output}
    assert declared["a_flat"] == declared["ab_az"] == TensorProto.FLOAT  # kept as declared
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Reshape") == 2 and "Identity" not in ops  # the others were only for outputs
    assert [o.name for o in model.graph.output][0] == "ab_2x6"  # the model itself is unchanged


def test_values_and_shapes_as_without_views():
    model = reshaping_model()
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((4, 6)).astype(np.float32), "b": rng.standard_normal((6, 3)).astype(np.float32)}
    fast, plain = OrtRunner(model), OrtRunner(model, views=False)
    assert fast.views and not plain.views
    got, want = fast.run(feeds), plain.run(feeds)
    assert list(got) == list(want) == [o.name for o in model.graph.output]
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])
    some = fast.run(feeds, outputs=["ab_3x4", "ab_2x6"])
    assert list(some) == ["ab_3x4", "ab_2x6"] and some["ab_3x4"].shape == (3, 4)


def test_transposed_matrix_times_vector_is_right():
    """ONNX Runtime's MatmulTransposeFusion multiplies a transposed matrix by a 1-D vector
    wrongly (a spectral norm's power iteration, ``torch.mv(W.t(), u)``), also where its own
    optimizers move the Transpose next to the MatMul (through a Reshape); the runner leaves that
    fusion out. A batched matrix, a 1-D first operand and a matrix second operand beside it."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    cases = {  # (W shape, perm, v shape, whether the vector is the second operand, reshaped)
        "matrix_vector": ((3, 4), [1, 0], (3,), True, False),
        "through_reshape": ((3, 4), [1, 0], (3,), True, True),
        "batched_vector": ((2, 3, 4), [0, 2, 1], (3,), True, False),
        "vector_matrix": ((3, 4), [1, 0], (4,), False, False),
        "matrix_matrix": ((3, 4), [1, 0], (3, 2), True, False),
    }
    for label, (w_shape, perm, v_shape, second, reshaped) in cases.items():
        transposed = [w_shape[p] for p in perm]
        nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=perm),
                 helper.make_node("Reshape", ["wt", "shape"], ["wt_copy"]) if reshaped
                 else helper.make_node("Identity", ["wt"], ["wt_copy"]),
                 helper.make_node("MatMul", ["wt_copy", "v"] if second else ["v", "wt_copy"], ["y"])]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("w", f, list(w_shape)),
                         helper.make_tensor_value_info("v", f, list(v_shape))],
            [helper.make_tensor_value_info("y", f, None)],
            initializer=[numpy_helper.from_array(np.array(transposed, np.int64), "shape")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        w = rng.random(w_shape, dtype=np.float32)
        v = rng.random(v_shape, dtype=np.float32)
        wt = np.transpose(w, perm)
        expected = wt @ v if second else v @ wt
        got = OrtRunner(model).run({"w": w, "v": v})["y"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=label)
