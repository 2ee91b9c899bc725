"""The torch exporter: faithful to eager PyTorch, with the metadata later stages need."""

import json

import numpy as np
import pytest
import torch
from conftest import DISCOGAN, LOSSES, SEEDS, assert_loss_examples_agree, eager_and_ort_over_seeds
from losses_torch import SPECS

import lossgraph as lg
from lossgraph.graph import SCOPE_KEY, SOURCE_KEY, STOP_GRADIENT_KEY, LossGraph, node_meta
from lossgraph.inputs import make_inputs
from lossgraph.spec import load_spec


def torch_eager(spec, inputs) -> dict[str, float]:
    """The spec's losses computed by torch eagerly, in the mode ``spec.train`` asks for."""
    spec.model.train(spec.train)
    with torch.no_grad():
        out = spec.loss(spec.model, **{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {k: float(v) for k, v in ({"loss": out} if torch.is_tensor(out) else out).items()}


def test_discogan_ort_equals_torch_eager():
    # measured over seeds 0-19: at most 2.4e-7 (dis_loss ~1.387, 2 ulps)
    _, _, values = eager_and_ort_over_seeds(f"{DISCOGAN}/discogan_torch.py", torch_eager)
    for seed, (eager, ort) in values.items():
        assert list(ort) == ["gen_loss", "dis_loss"]
        for name in ort:
            assert abs(ort[name] - eager[name]) <= 1e-6, (seed, name, ort[name], eager[name])


@pytest.mark.parametrize("name", SPECS)
def test_loss_example_ort_equals_torch_eager(name):
    """Within 1e-6 at every seed checked (see assert_loss_examples_agree)."""
    _, _, values = eager_and_ort_over_seeds(f"{LOSSES}/losses_torch.py:{name}", torch_eager)
    assert_loss_examples_agree(values)


BATCH_NORM = """
import torch
import lossgraph as lg

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
        self.bn = torch.nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))

def spec():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=lambda model, x: model(x).pow(2).mean(),
                   inputs={"x": lg.Input([4, 3])})
"""


def test_eager_reference_sets_the_mode_from_the_spec(write_spec):
    """The eager side of the eager-vs-ORT tests must not depend on export having left the model
    in eval mode: BatchNorm gives another loss in training mode."""
    spec = load_spec(f"{write_spec(BATCH_NORM, 'bn_torch.py')}:spec")
    inputs = make_inputs(spec.inputs, SEEDS[0])
    spec.model.eval()
    with torch.no_grad():
        expected = float(spec.loss(spec.model, **{k: torch.from_numpy(v) for k, v in inputs.items()}))
    spec.model.train()  # as a training-mode run before it would leave the model
    assert torch_eager(spec, inputs) == {"loss": expected}
    assert not spec.model.training
    spec.train = True
    torch_eager(spec, inputs)
    assert spec.model.training


def test_discogan_metadata(exported):
    graph = LossGraph.load(exported(f"{DISCOGAN}/discogan_torch.py"))
    meta = graph.meta
    assert meta.framework == "torch" and meta.versions["torch"].startswith("2.")
    assert meta.losses == ["gen_loss", "dis_loss"]
    assert meta.inputs["A"].shape == (4, 3, 64, 64) and meta.inputs["A"].distribution == "uniform"
    # parameters keep state-dict names, in definition order, with their layer kinds
    names = list(meta.params)
    assert names[0] == "generator_A.main.0.weight"
    conv = meta.params["discriminator_A.conv1.weight"]
    assert conv.layer_type == "Conv2d" and conv.trainable and conv.kind == "parameter"
    bn = meta.params["generator_A.main.3.running_mean"]
    assert bn.kind == "buffer" and not bn.trainable and bn.layer_type == "BatchNorm2d"
    assert {t.name for t in graph.model.graph.initializer} >= set(meta.params)
    # optimizers and schedule travel in the metadata
    dis = meta.optimizers["dis"]
    assert dis.cls == "Adam" and dis.groups[0]["betas"] == [0.5, 0.999]
    assert dis.groups[0]["weight_decay"] == 1e-5 and dis.groups[0]["lr"] == 2e-4
    assert all(p.startswith("discriminator_") for p in dis.params)
    assert meta.schedule == [("dis_loss", "dis"), ("gen_loss", "gen")]
    # eager and ORT values recorded at export
    for name in meta.losses:
        assert abs(meta.eager["losses"][name] - meta.eager["ort"][name]) <= 1e-6


def test_nodes_carry_scope_source_and_torch_metadata(exported):
    graph = LossGraph.load(exported(f"{DISCOGAN}/discogan_torch.py"))
    convs = [n for n in graph.model.graph.node if n.op_type == "Conv"]
    scopes = {node_meta(n, SCOPE_KEY) for n in convs}
    assert "discriminator_A.conv3" in scopes and "generator_B.main.0" in scopes
    assert all(node_meta(n, "pkg.torch.onnx.name_scopes") for n in convs)
    hinge = [n for n in graph.model.graph.node if node_meta(n, SCOPE_KEY) == "feat_criterion"]
    assert hinge, "the criterion modules are scopes"
    source = json.loads(node_meta(hinge[0], SOURCE_KEY))
    assert source["function"] == "get_fm_loss" and source["file"].endswith("discogan_torch.py")
    assert "criterion(l2" in source["code"]


def test_a_spec_under_a_folder_named_lossgraph_keeps_its_source_lines(tmp_path):
    """Users clone into a folder named lossgraph: library code is where the installed package
    really is, not any path containing '/lossgraph/'."""
    folder = tmp_path / "lossgraph" / "examples"
    folder.mkdir(parents=True)
    spec_file = folder / "net.py"
    spec_file.write_text(BATCH_NORM)
    out = tmp_path / "net.onnx"
    lg.export(str(spec_file), out)
    graph = LossGraph.load(out)
    sources = [json.loads(node_meta(n, SOURCE_KEY)) for n in graph.model.graph.node
               if node_meta(n, SOURCE_KEY)]
    assert sources and all(s["file"] == str(spec_file) for s in sources)
    assert any("self.bn(self.fc(x))" in s["code"] for s in sources)


def test_library_files_are_told_by_where_the_package_is():
    import lossgraph.exporters.common as common

    assert common.is_library_file(common.__file__)
    assert common.is_library_file("/opt/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py")
    assert not common.is_library_file("/home/user/lossgraph/examples/model.py")


def test_detach_is_marked_as_stop_gradient(exported):
    graph = LossGraph.load(exported(f"{LOSSES}/losses_torch.py:gan"))
    marked = [n for n in graph.model.graph.node if node_meta(n, STOP_GRADIENT_KEY) == "1"]
    assert len(marked) == 1 and marked[0].op_type == "Identity"


def test_label_smoothing_is_not_dropped(exported):
    # torch.onnx's own translation of cross_entropy ignores label_smoothing; lossgraph's does not.
    graph = LossGraph.load(exported(f"{LOSSES}/losses_torch.py:cross_entropy"))
    eager = graph.meta.eager
    assert eager["losses"]["smoothing_mean"] != pytest.approx(eager["losses"]["mean"], abs=1e-3)
    assert eager["ort"]["smoothing_mean"] == pytest.approx(eager["losses"]["smoothing_mean"], abs=1e-6)


def test_export_leaves_the_model_untouched():
    spec = load_spec(f"{LOSSES}/losses_torch.py:mse")
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    lg.export(spec)
    for key, value in spec.model.state_dict().items():
        assert torch.equal(value, before[key])


def test_export_summary(cli, tmp_path):
    out = tmp_path / "mse.onnx"
    result = cli("export", f"{LOSSES}/losses_torch.py:mse", "-o", out)
    assert result.exit_code == 0, result.stderr
    for text in ("Losses", "mean", "inputs: x float32[2, 4] (uniform)", "parameters: 2 trainable",
                 "Gemm"):
        assert text in result.stdout
    assert out.exists()


def test_mistranslation_is_caught(monkeypatch, tmp_path):
    """If the exported graph disagrees with eager (a mistranslated op), export fails."""
    from lossgraph.exporters import common

    spec = load_spec(f"{LOSSES}/losses_torch.py:mse")
    real = common.record_eager_check

    def skewed(graph, eager, inputs, seed, eager_state=None, eager_taps=None):
        real(graph, {k: v + 1.0 for k, v in eager.items()}, inputs, seed, eager_state, eager_taps)

    monkeypatch.setattr("lossgraph.exporters.common.record_eager_check", skewed)
    with pytest.raises(lg.ExportError, match="mistranslated"):
        lg.export(spec)


def test_seeded_inputs_reach_the_graph():
    spec = load_spec(f"{LOSSES}/losses_torch.py:mse")
    graph = lg.export(spec, seed=5)
    assert graph.meta.eager["seed"] == 5
    other = lg.export(load_spec(f"{LOSSES}/losses_torch.py:mse"), seed=6)
    assert not np.isclose(graph.meta.eager["losses"]["mean"], other.meta.eager["losses"]["mean"])


SPLITS = """
import torch
import lossgraph as lg


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 7)

    def forward(self, x):
        h = self.fc(x)
        a, b = h[:, :6].chunk(2, dim=1)
        c, d, e = torch.split(h, [2, 3, 2], dim=1)
        u = torch.unbind(h, dim=1)
        return a * b + c.sum() * d.mean() + e.sum() + u[3].sum()


def spec():
    torch.manual_seed(0)
    return lg.Spec(model=Net(), loss=lambda model, x: model(x).pow(2).sum(),
                   inputs={"x": lg.Input([3, 4])})
"""


def test_chunk_split_and_unbind_have_gradients(write_spec, tmp_path):
    """torch exports chunk/split/unbind as SplitToSequence + SequenceAt, which have no gradient
    rule; the exporter writes them as one Split, and the gradients are torch's."""
    from lossgraph.verify.pipeline import loss_gradients

    target = str(write_spec(SPLITS))
    out = tmp_path / "splits.onnx"
    lg.export(target, out)
    graph = LossGraph.load(out)
    assert not {n.op_type for n in graph.model.graph.node} & {"SplitToSequence", "SequenceAt"}
    inputs = make_inputs(graph.meta.inputs, 0)
    ours = loss_gradients(graph, "loss", graph.trainable_params(), inputs, graph.param_values(),
                          "cpu", "reference")
    spec = load_spec(target)
    spec.loss(spec.model, x=torch.from_numpy(inputs["x"])).backward()
    for name, param in spec.model.named_parameters():
        np.testing.assert_allclose(ours[name], param.grad.numpy(), rtol=1e-5, atol=1e-5)
