"""Every gradient rule, one ONNX node at a time, against torch autograd and float64 central
finite differences; every registered rule must have a case in ``gradcases.CASES``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from gradcases import CASES, Case
from onnx import TensorProto, helper, numpy_helper

from lossgraph.autodiff import build_gradients
from lossgraph.autodiff.registry import NON_DIFFERENTIABLE, RULES, known_ops, load_rules
from lossgraph.runtime.float64 import to_float64
from lossgraph.runtime.session import OrtRunner

FD_STEP = 1e-6


def draw(case: Case, rng: np.random.Generator) -> list[np.ndarray]:
    values = []
    for arg in case.args:
        if arg.constant:
            values.append(arg.value)
            continue
        x = rng.uniform(arg.low, arg.high, arg.shape)
        if arg.away:
            close = np.abs(x - arg.kink) < arg.away
            x = np.where(close, arg.kink + np.sign(x - arg.kink + 1e-12) * (arg.away + 0.05), x)
        values.append(x)
    return values


def case_model(case: Case, values: list[np.ndarray], rng: np.random.Generator):
    """The node, fed by graph inputs (float args) and initializers (constants), with a loss
    sum_j sum(cast(y_j, float) * w_j) so that every output gradient is non-trivial."""
    inputs, inits, names = [], [], []
    for i, (arg, value) in enumerate(zip(case.args, values)):
        name = f"in{i}"
        names.append(name)
        if arg.constant:
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    outputs = [f"y{j}" for j in range(case.outputs)]
    nodes = [helper.make_node(case.op, names, outputs, name="node", **case.attrs)]
    weights = {}
    terms = []
    for j in case.float_outputs:
        nodes.append(helper.make_node("Cast", [outputs[j]], [f"c{j}"], to=TensorProto.FLOAT))
        weights[j] = f"w{j}"
        nodes.append(helper.make_node("Mul", [f"c{j}", f"w{j}"], [f"m{j}"]))
        nodes.append(helper.make_node("ReduceSum", [f"m{j}"], [f"s{j}"], keepdims=0))
        terms.append(f"s{j}")
    nodes.append(helper.make_node("Sum", terms, ["loss"]))
    graph = helper.make_graph(nodes, case.id, inputs, [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    # the weights' shapes are the outputs' shapes: infer, then add them as initializers
    shapes = onnx.shape_inference.infer_shapes(model).graph.value_info
    out_shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in shapes}
    w_values = {}
    for j, w in weights.items():
        w_values[j] = rng.uniform(0.5, 1.5, out_shapes[f"c{j}"]).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(w_values[j], w))
    return model, w_values


def float_feeds(case: Case, values, dtype) -> dict[str, np.ndarray]:
    return {f"in{i}": v.astype(dtype) for i, (a, v) in enumerate(zip(case.args, values)) if not a.constant}


def torch_reference(case: Case, values, w_values):
    tensors = []
    for arg, value in zip(case.args, values):
        if arg.constant:
            tensors.append(torch.as_tensor(value))
        else:
            tensors.append(torch.tensor(value, dtype=torch.float64, requires_grad=arg.diff))
    out = case.torch_fn(*tensors)
    out = list(out) if isinstance(out, (tuple, list)) else [out]
    loss = sum((out[k if len(out) > 1 else 0].double() * torch.from_numpy(w_values[j]).double()).sum()
               for k, j in enumerate(case.float_outputs))
    loss.backward()
    return float(loss), {f"in{i}": t.grad.numpy() for i, (a, t) in enumerate(zip(case.args, tensors))
                         if not a.constant and a.diff and t.grad is not None}


def finite_differences(model64: onnx.ModelProto, feeds64, wrt: list[str]) -> dict[str, np.ndarray]:
    runner = OrtRunner(model64)
    out = {}
    for name in wrt:
        base = feeds64[name]
        grad = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[index] += FD_STEP
            minus[index] -= FD_STEP
            f_plus = float(runner.run({**feeds64, name: plus})["loss"])
            f_minus = float(runner.run({**feeds64, name: minus})["loss"])
            grad[index] = (f_plus - f_minus) / (2 * FD_STEP)
        out[name] = grad
    return out


def close(got: np.ndarray, want: np.ndarray, rtol: float) -> bool:
    scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    return bool(np.all(np.abs(got - want) <= rtol * scale))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case):
    rng = np.random.default_rng(abs(hash(case.id)) % 2**32)
    values = draw(case, rng)
    model, w_values = case_model(case, values, rng)
    wrt = [f"in{i}" for i, a in enumerate(case.args) if not a.constant and a.diff]
    feeds32 = float_feeds(case, values, np.float32)
    result = build_gradients(model, "loss", wrt, feeds=feeds32)
    got32 = OrtRunner(result.model).run(feeds32)
    # 1. torch autograd (float64, on the float32-rounded inputs)
    rounded = [v.astype(np.float32).astype(np.float64) if not a.constant else v for a, v in zip(case.args, values)]
    torch_loss, torch_grads = torch_reference(case, rounded, w_values)
    assert abs(float(got32["loss"]) - torch_loss) <= 1e-4 * max(1.0, abs(torch_loss)), "forward differs"
    for name in wrt:
        grad_name = result.grads[name]
        ours = got32[grad_name] if grad_name else np.zeros_like(feeds32[name])
        assert close(ours, torch_grads.get(name, np.zeros_like(ours)), 2e-4), (name, ours, torch_grads.get(name))
    # 2. float64 finite differences of the forward, and our gradient graph in float64
    feeds64 = {k: v.astype(np.float64) for k, v in feeds32.items()}
    fd = finite_differences(to_float64(model), feeds64, wrt)
    got64 = OrtRunner(to_float64(result.model)).run(feeds64)
    for name in wrt:
        grad_name = result.grads[name]
        ours = got64[grad_name] if grad_name else np.zeros_like(feeds64[name])
        assert close(ours, fd[name], 1e-6), (name, ours, fd[name])
        assert close(torch_grads.get(name, np.zeros_like(ours)), fd[name], 1e-6), (name, "torch vs fd")


def test_every_rule_has_a_case():
    load_rules()
    covered = {case.op for case in CASES}
    assert set(RULES) - covered == set(), "rules without a case"


def test_comparisons_and_index_ops_are_declared_non_differentiable():
    load_rules()
    for op in ("Equal", "Greater", "Less", "Not", "ArgMax", "Shape", "NonZero", "OneHot"):
        assert op in NON_DIFFERENTIABLE


def test_unknown_op_names_the_op_and_the_rules():
    node = helper.make_node("LpNormalization", ["x"], ["y"], name="mystery")
    reduce = helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)
    graph = helper.make_graph([node, reduce], "g", [helper.make_tensor_value_info("x", 1, [3])],
                              [helper.make_tensor_value_info("loss", 1, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from lossgraph.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="No gradient rule for op .LpNormalization.*Rules exist for: Abs, Acos"):
        build_gradients(model, "loss", ["x"])


def test_rules_emit_only_differentiable_ops():
    """Every op a rule writes has a rule itself (or is declared non-differentiable), so any
    backward graph can be differentiated again: checked over every case of the table."""
    known = known_ops()
    emitted: dict[str, set[str]] = {}
    for case in CASES:
        rng = np.random.default_rng(0)
        values = draw(case, rng)
        model, _ = case_model(case, values, rng)
        wrt = [f"in{i}" for i, a in enumerate(case.args) if not a.constant and a.diff]
        result = build_gradients(model, "loss", wrt, feeds=float_feeds(case, values, np.float32))
        for node in result.model.graph.node:
            if node.op_type not in known:
                emitted.setdefault(node.op_type, set()).add(case.id)
    assert not emitted, f"ops written by rules without a rule of their own: {emitted}"


@pytest.mark.parametrize(
    "w_shape, attrs",
    [((4, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": 2}),  # grouped: unfold
     ((3, 4, 6, 6), {"strides": [2, 2], "pads": [2, 2, 2, 2]})],  # 36 taps: unfold, no one-hot Conv
    ids=["grouped-3x3-stride2", "6x6-stride2"],
)
def test_second_order_through_strided_weight_gradients(w_shape, attrs):
    """d/dx of a function of dW, where dW's windows are cut from SpaceToDepth blocks: against
    torch's double backward."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 10)).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=attrs["strides"], padding=attrs["pads"][0],
                                    groups=attrs.get("group", 1))
    r = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    q = rng.standard_normal(w_shape).astype(np.float32)
    (gw,) = torch.autograd.grad((ty * torch.from_numpy(r).double()).sum(), tw, create_graph=True)
    (gx,) = torch.autograd.grad((gw * torch.from_numpy(q).double()).sum(), tx)

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs),
             helper.make_node("Mul", ["y", "r"], ["yr"]),
             helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in (("x", x), ("w", w))]
    inits = [numpy_helper.from_array(r, "r"), numpy_helper.from_array(q, "q")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    first = build_gradients(model, "loss", ["w"])
    assert "SpaceToDepth" in {n.op_type for n in first.model.graph.node}
    outer = first.model
    outer.graph.node.extend([helper.make_node("Mul", [first.grads["w"], "q"], ["gq"]),
                             helper.make_node("ReduceSum", ["gq"], ["loss2"], keepdims=0)])
    del outer.graph.output[:]
    outer.graph.output.append(helper.make_tensor_value_info("loss2", TensorProto.FLOAT, []))
    second = build_gradients(onnx.shape_inference.infer_shapes(outer), "loss2", ["x"])
    got = OrtRunner(second.model).run({"x": x, "w": w}, [second.grads["x"]])[second.grads["x"]]
    assert close(got, gx.numpy(), 1e-5)
