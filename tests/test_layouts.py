"""Which 2-D parameters are carried transposed: a framework Linear's weight (any subclass) by its
framework's storage, any other (hand-written linears, output heads) by how its graph reads it."""

import textwrap

import pytest
import torch
from onnx import helper
from test_align import graph, p

import lossgraph as lg
from lossgraph.exporters.common import framework_base
from lossgraph.verify.align import build_param_map, read_layouts


def with_nodes(g, nodes):
    g.model.graph.node.extend(nodes)
    return g


def test_framework_base_finds_the_public_class_a_layer_derives_from():
    import paddle

    class Mine(torch.nn.Linear):
        pass

    class Hand(paddle.nn.Layer):
        pass

    class PaddleMine(paddle.nn.Linear):
        pass

    nn_ = torch.nn
    assert framework_base(nn_.modules.linear.NonDynamicallyQuantizableLinear, nn_, nn_.Module) == "Linear"
    assert framework_base(Mine, nn_, nn_.Module) == "Linear"
    assert framework_base(nn_.Conv2d, nn_, nn_.Module) == "Conv2d"
    assert framework_base(type("Own", (nn_.Module,), {}), nn_, nn_.Module) == ""
    assert framework_base(PaddleMine, paddle.nn, paddle.nn.Layer) == "Linear"
    assert framework_base(Hand, paddle.nn, paddle.nn.Layer) == ""


def test_read_layouts_follow_transposes_casts_and_gemm_trans_b():
    g = with_nodes(graph("torch", [(n, p([3, 3], "Own", "w", "m")) for n in "abcdef"]), [
        helper.make_node("MatMul", ["x", "a"], ["ya"]),  # x @ a
        helper.make_node("Transpose", ["b"], ["bt"], perm=[1, 0]),
        helper.make_node("Cast", ["bt"], ["bc"], to=1),
        helper.make_node("MatMul", ["x", "bc"], ["yb"]),  # x @ b.T
        helper.make_node("Gemm", ["x", "c"], ["yc"], transB=1),  # x @ c.T
        helper.make_node("Transpose", ["d"], ["dt"]),
        helper.make_node("Gemm", ["x", "dt"], ["yd"], transB=1),  # x @ d (two flips)
        helper.make_node("MatMul", ["x", "e"], ["ye1"]),  # read both ways: unknown
        helper.make_node("Gemm", ["x", "e"], ["ye2"], transB=1),
        helper.make_node("MatMul", ["f", "x"], ["yf"]),  # a left operand: unknown
    ])
    assert read_layouts(g) == {"a": "in_out", "b": "out_in", "c": "out_in", "d": "in_out"}


def test_hand_written_and_subclassed_linears_pair_by_use():
    ref = with_nodes(graph("torch", [
        ("sub.weight", p([4, 4], "NonDynamicallyQuantizableLinear", "weight", "sub")),
        ("hand.w", p([4, 4], "Hand", "w", "hand")),
        ("head.weight", p([6, 4], "Linear", "weight", "head")),
        ("emb.weight", p([4, 4], "Embedding", "weight", "emb")),
    ]), [helper.make_node("Transpose", ["hand.w"], ["t"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "t"], ["y"])])
    ref.meta.params["sub.weight"].base_type = "Linear"
    cand = with_nodes(graph("paddle", [
        ("sub.weight", p([4, 4], "Linear", "weight", "sub")),
        ("hand.w", p([4, 4], "Hand", "w", "hand")),
        ("head.weight", p([6, 4], "LMHead", "weight", "head")),
        ("emb.weight", p([4, 4], "Embedding", "weight", "emb")),
    ]), [helper.make_node("MatMul", ["x", "hand.w"], ["y"]),
         helper.make_node("Transpose", ["head.weight"], ["ht"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "ht"], ["z"])])
    transforms = {x.reference: x.transform for x in build_param_map(ref, cand).pairs}
    assert transforms == {"sub.weight": "transpose", "hand.w": "transpose",
                          "head.weight": "identity", "emb.weight": "identity"}


PAIR = {
    "torch": '''
        import torch
        from torch import nn
        import lossgraph as lg

        class Mine(nn.Linear):
            pass

        class Hand(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.w = nn.Parameter(torch.randn(d, d) * 0.3)  # [out, in]

            def forward(self, x):
                return x @ self.w.T

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = Mine(4, 4)
                self.b = nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4)
                self.h = Hand(4)
                self.head = nn.Linear(4, 6, bias=False)

            def forward(self, x):
                return self.head(self.h(torch.tanh(self.b(torch.tanh(self.a(x))))))

        def spec():
            torch.manual_seed(0)
            return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(),
                           inputs={"x": lg.Input([2, 3, 4])})
    ''',
    "paddle": '''
        import paddle
        from paddle import nn
        import lossgraph as lg

        class Hand(nn.Layer):
            def __init__(self, d):
                super().__init__()
                self.w = self.create_parameter([d, d])  # [in, out]

            def forward(self, x):
                return paddle.matmul(x, self.w)

        class Head(nn.Layer):
            """Stored [out, in] as torch's, read as x @ W.T."""

            def __init__(self, d_in, d_out):
                super().__init__()
                self.weight = self.create_parameter([d_out, d_in])

            def forward(self, x):
                return paddle.matmul(x, self.weight, transpose_y=True)

        class Net(nn.Layer):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(4, 4)
                self.b = nn.Linear(4, 4)
                self.h = Hand(4)
                self.head = Head(4, 6)

            def forward(self, x):
                return self.head(self.h(paddle.tanh(self.b(paddle.tanh(self.a(x))))))

        def spec():
            paddle.seed(0)
            return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(),
                           inputs={"x": lg.Input([2, 3, 4])})
    ''',
}


@pytest.fixture(scope="module")
def linears(tmp_path_factory):
    folder = tmp_path_factory.mktemp("linears")
    out = {}
    for side, source in PAIR.items():
        path = folder / f"lin_{side}.py"
        path.write_text(textwrap.dedent(source))
        out[side] = folder / f"{side}.onnx"
        lg.export(f"{path}:spec", out[side])
    return out


def test_subclassed_and_hand_written_linears_verify_with_training(linears):
    result = lg.verify(linears["torch"], linears["paddle"], grads=True, steps=2, tol=1e-6)
    assert result.passed
    transforms = {x.reference: x.transform for x in result.param_map.pairs}
    assert transforms == {"a.weight": "transpose", "a.bias": "identity",
                          "b.weight": "transpose", "b.bias": "identity",
                          "h.w": "transpose", "head.weight": "identity"}
