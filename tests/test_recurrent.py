"""ONNX LSTM, GRU and RNN nodes unrolled into the ops the autodiff differentiates
(``lossgraph/exporters/recurrent.py``): every attribute the exporters emit and the operator
defines, checked against ONNX Runtime's own recurrent kernels; what cannot be unrolled exactly
is refused in one line. (Ports of real layers, with gradients and eager training:
``test_transformer.py``.)"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lossgraph.errors import UnsupportedOpError
from lossgraph.exporters.recurrent import unroll_recurrent

T, B, I, H = 4, 3, 2, 5  # noqa: E741 - the operator spec's names
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def model(op, direction="forward", layout=0, bias=True, initial=True, peepholes=False,
          outputs=3, lengths=None, **attrs):
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x_shape = [B, T, I] if layout else [T, B, I]
    inits = {"W": rng.normal(0, 0.5, (dirs, g * H, I)), "R": rng.normal(0, 0.5, (dirs, g * H, H))}
    inputs = ["x", "W", "R"]
    inputs.append("B" if bias else "")
    if bias:
        inits["B"] = rng.normal(0, 0.5, (dirs, 2 * g * H))
    inputs.append("lengths" if lengths is not None else "")
    def state():  # drawn as [dirs, B, H] whatever the layout, for the layout-0 reference
        value = rng.normal(0, 0.5, (dirs, B, H))
        return value.transpose(1, 0, 2) if layout else value

    inputs.append("h0" if initial else "")
    if initial:
        inits["h0"] = state()
    if op == "LSTM":
        inputs.append("c0" if initial else "")
        if initial:
            inits["c0"] = state()
        if peepholes:
            inputs.append("P")
            inits["P"] = rng.normal(0, 0.5, (dirs, 3 * H))
    names = ["y", "y_h", "y_c"][: min(outputs, 3 if op == "LSTM" else 2)]
    node = helper.make_node(op, inputs, names, name="rnn", hidden_size=H, direction=direction,
                            layout=layout, **attrs)
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    if lengths is not None:
        initializers.append(numpy_helper.from_array(np.asarray(lengths, np.int32), "lengths"))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X = np.random.default_rng(1).normal(size=(T, B, I)).astype(np.float32)


def run(m):
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})


def expected(op, options):
    """ONNX Runtime's kernels; they run layout 0 only, so layout 1 is the layout-0 run with
    inputs and outputs transposed."""
    if not options.get("layout"):
        return run(model(op, **options))
    session = ort.InferenceSession(model(op, **{**options, "layout": 0}).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    y, *states = session.run(None, {"x": X})
    return [y.transpose(2, 0, 1, 3), *(s.transpose(1, 0, 2) for s in states)]


CASES = [
    ("LSTM", {}), ("LSTM", {"direction": "reverse"}), ("LSTM", {"direction": "bidirectional"}),
    ("LSTM", {"layout": 1, "direction": "bidirectional"}), ("LSTM", {"bias": False, "initial": False}),
    ("LSTM", {"peepholes": True}), ("LSTM", {"outputs": 1}),
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Tanh"]}),
    ("LSTM", {"lengths": [T] * B}),
    ("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("GRU", {"direction": "bidirectional", "layout": 1}),
    ("GRU", {"initial": False}), ("GRU", {"initial": False, "linear_before_reset": 1}),
    ("GRU", {"bias": False, "direction": "reverse"}),
    ("RNN", {}), ("RNN", {"activations": ["Relu", "Tanh"], "direction": "bidirectional"}),
    ("RNN", {"initial": False, "bias": False}),
]


@pytest.mark.parametrize("op, options", CASES, ids=[f"{op}-{'-'.join(map(str, o.items()))}" for op, o in CASES])
def test_unrolled_equals_onnx_runtime(op, options):
    want_all = expected(op, options)
    unrolled = model(op, **options)
    assert unroll_recurrent(unrolled) == 1
    assert not any(n.op_type in GATES for n in unrolled.graph.node)
    assert all(n.name.startswith("rnn/unroll/") for n in unrolled.graph.node)
    session = ort.InferenceSession(unrolled.SerializeToString(), providers=["CPUExecutionProvider"])
    x = X.transpose(1, 0, 2) if options.get("layout") else X
    got_all = session.run(None, {"x": x})
    assert len(got_all) == len(want_all)
    for got, want in zip(got_all, want_all):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op, options, message", [
    ("LSTM", {"clip": 1.0}, "it clips the cell input"),
    ("LSTM", {"input_forget": 1}, "it couples the input and forget gates"),
    ("GRU", {"lengths": [T, T - 1, T]}, "its sequence lengths differ from the sequence length"),
    ("RNN", {"activations": ["Softsign"]}, "activations \\['Softsign'\\]"),
])
def test_what_cannot_be_unrolled_exactly_is_refused(op, options, message):
    with pytest.raises(UnsupportedOpError, match=f"{op} node 'rnn' cannot be unrolled for gradients: {message}"):
        unroll_recurrent(model(op, **options))


def test_an_unknown_sequence_length_is_refused():
    m = model("LSTM")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"  # clears dim_value
    with pytest.raises(UnsupportedOpError, match="sequence length is not known at export"):
        unroll_recurrent(m)


def test_paddle_simple_rnn_that_paddle2onnx_drops_is_one_line(cli, write_spec, tmp_path):
    """paddle2onnx 2.1.0 leaves SimpleRNN's op out of the graph without a word."""
    spec = write_spec('''
        import paddle
        import lossgraph as lg

        def spec():
            paddle.seed(0)
            model = paddle.nn.SimpleRNN(2, 3)
            return lg.Spec(model=model, loss=lambda m, x: m(x)[0].mean(),
                           inputs={"x": lg.Input([2, 4, 2])})
    ''')
    result = cli("export", spec, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "left Paddle op(s) rnn out of the ONNX graph" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
