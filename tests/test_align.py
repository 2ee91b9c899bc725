"""Parameter correspondence across frameworks: renames, transposition by kind, structure."""

import pytest
from onnx import helper

from lossgraph.errors import VerificationError
from lossgraph.graph import GraphMeta, LossGraph, ParamInfo
from lossgraph.spec import Input
from lossgraph.verify.align import build_param_map, canonical_name


def graph(framework, params):
    meta = GraphMeta(framework=framework, losses=["loss"], inputs={"x": Input([1])},
                     params={name: info for name, info in params})
    return LossGraph(helper.make_model(helper.make_graph([], "g", [], [])), meta, path=framework)


def p(shape, layer, attribute, module, trainable=True, kind="parameter"):
    return ParamInfo(shape=list(shape), dtype="float32", trainable=trainable, kind=kind,
                     module=module, layer_type=layer, attribute=attribute)


def test_batchnorm_statistics_are_renamed():
    torch_bn = p([4], "BatchNorm2d", "running_mean", "bn", False, "buffer")
    paddle_bn = p([4], "BatchNorm2D", "_mean", "bn", False, "buffer")
    assert canonical_name("bn.running_mean", torch_bn) == canonical_name("bn._mean", paddle_bn)
    ref = graph("torch", [("bn.weight", p([4], "BatchNorm2d", "weight", "bn")),
                          ("bn.running_mean", torch_bn),
                          ("bn.running_var", p([4], "BatchNorm2d", "running_var", "bn", False, "buffer"))])
    cand = graph("paddle", [("bn.weight", p([4], "BatchNorm2D", "weight", "bn")),
                            ("bn._mean", paddle_bn),
                            ("bn._variance", p([4], "BatchNorm2D", "_variance", "bn", False, "buffer"))])
    pairs = {x.reference: x.candidate for x in build_param_map(ref, cand).pairs}
    assert pairs == {"bn.weight": "bn.weight", "bn.running_mean": "bn._mean",
                     "bn.running_var": "bn._variance"}


def test_linear_weights_are_transposed_by_kind_even_when_square():
    ref = graph("torch", [("fc.weight", p([4, 4], "Linear", "weight", "fc")),
                          ("fc.bias", p([4], "Linear", "bias", "fc")),
                          ("emb.weight", p([4, 4], "Embedding", "weight", "emb"))])
    cand = graph("paddle", [("fc.weight", p([4, 4], "Linear", "weight", "fc")),
                            ("fc.bias", p([4], "Linear", "bias", "fc")),
                            ("emb.weight", p([4, 4], "Embedding", "weight", "emb"))])
    transforms = {x.reference: x.transform for x in build_param_map(ref, cand).pairs}
    assert transforms == {"fc.weight": "transpose", "fc.bias": "identity", "emb.weight": "identity"}
    same = build_param_map(ref, graph("torch", list(ref.meta.params.items())))
    assert {x.transform for x in same.pairs} == {"identity"}


def test_renamed_modules_pair_by_structure_in_order():
    ref = graph("torch", [("encoder.0.weight", p([8, 3], "Linear", "weight", "encoder.0")),
                          ("encoder.1.weight", p([2, 8], "Linear", "weight", "encoder.1")),
                          ("head.weight", p([5, 3, 3, 3], "Conv2d", "weight", "head"))])
    cand = graph("paddle", [("enc_a.weight", p([3, 8], "Linear", "weight", "enc_a")),
                            ("enc_b.weight", p([8, 2], "Linear", "weight", "enc_b")),
                            ("conv.weight", p([5, 3, 3, 3], "Conv2D", "weight", "conv"))])
    pmap = build_param_map(ref, cand)
    pairs = {x.reference: (x.candidate, x.transform, x.how) for x in pmap.pairs}
    assert pairs == {"encoder.0.weight": ("enc_a.weight", "transpose", "structure"),
                     "encoder.1.weight": ("enc_b.weight", "transpose", "structure"),
                     "head.weight": ("conv.weight", "identity", "structure")}


def test_ambiguous_parameters_are_an_error_listing_them():
    ref = graph("torch", [("a.weight", p([3, 3], "Linear", "weight", "a")),
                          ("b.weight", p([3, 3], "Linear", "weight", "b")),
                          ("c.weight", p([4, 3], "Linear", "weight", "c"))])
    cand = graph("paddle", [("x.weight", p([3, 3], "Linear", "weight", "x")),
                            ("c.weight", p([3, 4], "Linear", "weight", "c"))])
    with pytest.raises(VerificationError) as info:
        build_param_map(ref, cand)
    assert "unmapped in reference (2 of 3): a.weight, b.weight" in str(info.value)
    assert "unmapped in candidate (1 of 2): x.weight" in str(info.value)
    assert "unpaired Linear layers: 2 (a, b) in the reference, 1 (x) in the candidate" in str(info.value)


def test_many_unpaired_parameters_are_summarized_in_a_short_line():
    head = ("head.weight", p([8, 8], "Linear", "weight", "head"))
    ref = graph("torch", [head] + [(f"blocks.{i}.{a}", p([8], "LayerNorm", a, f"blocks.{i}"))
                                   for i in range(200) for a in ("weight", "bias")])
    cand = graph("paddle", [head] + [(f"layers.{i}.{a}", p([8], "LayerNorm", a, f"layers.{i}"))
                                     for i in range(150) for a in ("weight", "bias")])
    with pytest.raises(VerificationError) as info:
        build_param_map(ref, cand)
    line = str(info.value)
    assert len(line) < 600
    assert "unmapped in reference (400 of 401): blocks.0.weight, blocks.0.bias, blocks.1.weight, " \
           "blocks.1.bias and 396 more" in line
    assert "unmapped in candidate (300 of 301)" in line
    assert "LayerNorm layers: 200 (blocks.0, blocks.1, blocks.2, blocks.3 and 196 more) in the " \
           "reference, 150 (layers.0" in line


def test_unpaired_buffers_are_not_a_usage_error():
    ref = graph("torch", [("fc.weight", p([4, 3], "Linear", "weight", "fc")),
                          ("criterion.pos_weight", p([4], "BCEWithLogitsLoss", "pos_weight", "criterion",
                                                     False, "buffer"))])
    cand = graph("paddle", [("fc.weight", p([3, 4], "Linear", "weight", "fc"))])
    pmap = build_param_map(ref, cand)
    assert pmap.unmapped_reference == ["criterion.pos_weight"]
    assert [x.reference for x in pmap.pairs] == ["fc.weight"]
    # a trainable parameter without counterpart still is
    extra = graph("paddle", [("fc.weight", p([3, 4], "Linear", "weight", "fc")),
                             ("scale", p([1], "", "", "", True))])
    with pytest.raises(VerificationError, match=r"unmapped in candidate \(1 of 2\): scale"):
        build_param_map(ref, extra)


def test_name_map_overrides_and_infers_transposition():
    ref = graph("torch", [("fc.weight", p([3, 3], "Linear", "weight", "fc")),
                          ("other.weight", p([3, 3], "Linear", "weight", "other"))])
    cand = graph("paddle", [("fc.weight", p([3, 3], "Linear", "weight", "fc")),
                            ("other.weight", p([3, 3], "Linear", "weight", "other"))])
    crossed = {"fc.weight": {"name": "other.weight"}, "other.weight": {"name": "fc.weight",
                                                                         "transpose": False}}
    pairs = {x.reference: (x.candidate, x.transform, x.how)
             for x in build_param_map(ref, cand, crossed).pairs}
    assert pairs == {"fc.weight": ("other.weight", "transpose", "map"),
                     "other.weight": ("fc.weight", "identity", "map")}
