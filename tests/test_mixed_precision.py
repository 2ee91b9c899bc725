"""Mixed precision: a loss computed under ``torch.autocast`` (bfloat16 or float16 on the CPU) is
exported with its casts, and ONNX Runtime's CPU provider has no bfloat16 Gemm, so lossgraph
computes such a graph in float32 on values rounded where torch rounds
(``lossgraph.runtime.precision``). Ground truth is torch's own eager autocast training
(``--native``); a float32 port of an autocast model passes as rounding, a wrong one diverges; a
fused kernel the emulation cannot follow (bfloat16 attention) and Paddle's ``auto_cast`` (which
does nothing eagerly on a CPU) are refused in one line."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import one_line_error, variant_exporter
from onnx import TensorProto, helper

import lossgraph as lg
from lossgraph.cli import native_runner
from lossgraph.errors import ExportError
from lossgraph.runtime.float64 import to_float64
from lossgraph.runtime.precision import emulate_low_precision

TORCH = '''
    import torch
    from torch import nn
    import lossgraph as lg

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.{act}()
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            h = nn.functional.max_pool2d(self.act(self.bn(self.conv(x))), 2)
            return self.fc(torch.flatten(h, 1))

    def spec():
        torch.manual_seed(0)
        m = Net()

        def loss(model, x, y):
            {body}
            return nn.functional.cross_entropy(out.float(), y)

        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        return lg.Spec(model=m, loss=loss, train=True, optimizers={{"sgd": opt}},
                       inputs={{"x": lg.Input([4, 3, 8, 8]), "y": lg.Input([4], dtype="int64", high=5)}})
'''

PADDLE = '''
    import paddle
    from paddle import nn
    import lossgraph as lg

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2D(3, 8, 3, padding=1, bias_attr=False)
            self.bn = nn.BatchNorm2D(8, momentum=0.9)
            self.act = nn.ReLU()
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            h = nn.functional.max_pool2d(self.act(self.bn(self.conv(x))), 2)
            return self.fc(paddle.flatten(h, 1))

    def spec():
        paddle.seed(0)
        m = Net()

        def loss(model, x, y):
            {body}
            return nn.functional.cross_entropy(out.astype("float32"), y)

        opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=m.parameters())
        return lg.Spec(model=m, loss=loss, train=True, optimizers={{"sgd": opt}},
                       inputs={{"x": lg.Input([4, 3, 8, 8]), "y": lg.Input([4], dtype="int64", high=5)}})
'''

AUTOCAST = {
    "bf16": 'with torch.autocast("cpu", dtype=torch.bfloat16):\n                out = model(x)',
    "fp16": 'with torch.autocast("cpu", dtype=torch.float16):\n                out = model(x)',
    "fp32": "out = model(x)",
}


def _torch(variant: str) -> str:
    precision, _, act = variant.partition("_")
    return TORCH.format(act={"": "ReLU", "gelu": "GELU"}[act], body=AUTOCAST[precision])


@pytest.fixture(scope="module")
def torch_graph(tmp_path_factory):
    return variant_exporter(tmp_path_factory, "amp_torch", _torch)


@pytest.fixture(scope="module")
def paddle_fp32(tmp_path_factory):
    return variant_exporter(tmp_path_factory, "amp_paddle", lambda v: PADDLE.format(body="out = model(x)"))("fp32")


@pytest.mark.parametrize("variant", ["bf16", "fp16"])
def test_autocast_graph_trains_like_torch_eager_autocast(torch_graph, variant):
    """Losses, gradients, momentum and BatchNorm statistics over 3 steps equal torch's own
    eager autocast training: bfloat16 exactly (measured: 0 on losses, 6e-8 on running_var);
    float16 within rounding (measured: losses 8e-7, parameters 9e-5 after 3 steps, one float16
    unit of a weight gradient that torch's kernel sums in another order), which the float64
    re-run classifies as noise, never as a difference."""
    path = torch_graph(variant)
    low = json.loads(onnx.load(str(path)).metadata_props[0].value)["low_precision"]
    assert set(low) == {"bfloat16" if variant == "bf16" else "float16"} and min(low.values()) > 0
    result = lg.verify(path, path, grads=True, steps=3, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures
    diffs = [d for side in result.native.values() for d in side]
    assert not any(d.semantic for d in diffs)
    if variant == "bf16":
        assert all(d.passed for d in diffs)
    assert max(v.max_abs_diff for d in diffs for v in d.losses.values()) <= 1e-5


def test_float32_port_of_an_autocast_model_passes_as_rounding(torch_graph, paddle_fp32):
    """torch with bfloat16 autocast against a float32 Paddle port: the differences are bfloat16
    rounding (the float64 re-run leaves it out), and the report says the side computes in it."""
    result = lg.verify(torch_graph("bf16"), paddle_fp32, grads=True, steps=3)
    assert result.passed and result.noise_only, result.first_divergence
    assert result.reference.low_precision and not result.candidate.low_precision
    from lossgraph.verify.report import noise_words, precision_lines

    assert noise_words(result) == "rounding noise: float32 and bfloat16"
    assert len(precision_lines(result)) == 1 and "reference" in precision_lines(result)[0]


def test_wrong_autocast_port_diverges_at_the_activation(torch_graph):
    """A GELU for a ReLU inside the autocast block is found at step 0, forward, in ``act``, and
    stays in float64; no normalization hint (both sides apply the BatchNorm)."""
    result = lg.verify(torch_graph("bf16"), torch_graph("bf16_gelu"), grads=True, steps=2)
    div = result.first_divergence
    assert not result.passed and (div.step, div.phase, div.scope) == (0, "forward", "act")
    assert result.noise_floor["verdict"] == "semantic"
    assert "Normalization placement" not in (div.hint or ""), div.hint


def test_float32_activation_swap_names_no_normalization(torch_graph):
    """The same swap in float32 names the GELU as the candidate's node (the BatchNorm's scale of
    ones and shift of zeros at initialization leave its input as it is, so the values matched the
    norm's inside by coincidence: the pairing once named its scale multiply, and a hint then
    blamed the norm's placement)."""
    result = lg.verify(torch_graph("fp32"), torch_graph("fp32_gelu"), grads=True, steps=1)
    assert not result.passed
    assert "gelu" in result.first_divergence.candidate_node.lower(), result.first_divergence
    assert "Normalization placement" not in (result.first_divergence.hint or "")


def test_bfloat16_attention_is_refused_in_one_line(cli, write_spec, tmp_path):
    """torch's fused CPU attention keeps its intermediates in float32; its exported ops round
    each one: the eager check refuses the graph and says why."""
    spec = write_spec('''
        import torch
        from torch import nn
        import lossgraph as lg

        def spec():
            torch.manual_seed(0)
            m = nn.Sequential(nn.Embedding(20, 16), nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0,
                              batch_first=True), nn.Linear(16, 20))

            def loss(model, tokens):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(tokens)
                return nn.functional.cross_entropy(logits.float().reshape(-1, 20), tokens.reshape(-1))

            return lg.Spec(model=m, loss=loss, inputs={"tokens": lg.Input([2, 5], dtype="int64", high=20)},
                           optimizers={"sgd": torch.optim.SGD(m.parameters(), lr=0.1)})
    ''')
    result = cli("export", f"{spec}:spec", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "bfloat16 (torch.autocast)" in line and "self_attn" in line
    assert not (tmp_path / "out.onnx").exists()


def test_paddle_auto_cast_is_refused_in_one_line(cli, write_spec, tmp_path):
    """Paddle's auto_cast does nothing eagerly on a CPU (it warns) while the program it traces
    casts to bfloat16: the graph could not be checked against eager training."""
    spec = write_spec(PADDLE.format(body='with paddle.amp.auto_cast(dtype="bfloat16"):\n'
                                         '                out = model(x)'), name="amp_paddle_spec.py")
    result = cli("export", f"{spec}:spec", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    assert "paddle.amp.auto_cast" in one_line_error(result)


def _gemm_graph(low: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Cast", ["x"], ["xl"], to=low),
        helper.make_node("Cast", ["w"], ["wl"], to=low),
        helper.make_node("Gemm", ["xl", "wl"], ["yl"], transB=1),
        helper.make_node("Relu", ["yl"], ["rl"]),
        helper.make_node("Cast", ["rl"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])],
        [onnx.numpy_helper.from_array(np.random.RandomState(1).randn(32, 64).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("low", "torch_dtype"), [(TensorProto.BFLOAT16, "bfloat16"), (TensorProto.FLOAT16, "float16")])
def test_emulation_rounds_where_torch_rounds(low, torch_dtype):
    """A bfloat16 Gemm + Relu emulated in float32 equals torch's own bfloat16 CPU kernels within
    one unit of the low type (float32 sums in another order), and the float64 copy of the graph
    leaves the rounding out (it computes the exact product)."""
    import torch

    model = _gemm_graph(low)
    assert emulate_low_precision(model, "test") == {torch_dtype: 4}
    x = np.random.RandomState(0).randn(8, 64).astype(np.float32)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    dtype = getattr(torch, torch_dtype)
    expected = torch.relu(torch.from_numpy(x).to(dtype) @ torch.from_numpy(w).to(dtype).t()).float().numpy()
    unit = np.abs(expected) * (2.0 ** -8 if torch_dtype == "bfloat16" else 2.0 ** -11)
    assert np.all(np.abs(got - expected) <= unit + 1e-30)
    assert np.mean(got == expected) > 0.99
    wide = to_float64(model)
    session = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"])
    exact = np.maximum(x.astype(np.float64) @ w.astype(np.float64).T, 0)
    np.testing.assert_allclose(session.run(None, {"x": x.astype(np.float64)})[0], exact, rtol=1e-12, atol=1e-12)


def test_low_precision_graph_input_is_refused():
    model = _gemm_graph(TensorProto.BFLOAT16)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    with pytest.raises(ExportError, match="graph input 'x' is bfloat16"):
        emulate_low_precision(model, "test")
