"""Gradient clipping in the training loop and in Paddle's optimizers: torch's
``clip_grad_norm_``/``clip_grad_value_`` (``Spec.clip``), Paddle's ``ClipGradByGlobalNorm``,
``ClipGradByNorm``, ``ClipGradByValue`` (read from the optimizer, ``need_clip`` and parameter
groups included) and ``paddle.nn.utils.clip_grad_norm_``. Ground truth is each framework's own
eager training (``--native``); the gradients are large enough that every clip engages."""

import pytest
from conftest import variant_exporter

import lossgraph as lg
from lossgraph.cli import native_runner
from lossgraph.errors import SpecError
from lossgraph.graph import LossGraph

TORCH = '''
    import torch
    import lossgraph as lg

    def spec():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        loss = lambda m, x, y: ((m(x) - 5 * y) ** 2).mean()
        opt = {optimizer}
        return lg.Spec(model=model, loss=loss, inputs={{"x": lg.Input([6, 4]), "y": lg.Input([6, 2])}},
                       optimizers={{"opt": opt}}, clip={clip})
'''

PADDLE = '''
    import paddle
    import lossgraph as lg

    def spec():
        paddle.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Linear(4, 8{bias_attr}), paddle.nn.Tanh(),
                                     paddle.nn.Linear(8, 2))
        loss = lambda m, x, y: ((m(x) - 5 * y) ** 2).mean()
        params = {params}
        opt = {optimizer}
        return lg.Spec(model=model, loss=loss, inputs={{"x": lg.Input([6, 4]), "y": lg.Input([6, 2])}},
                       optimizers={{"opt": opt}}, clip={clip})
'''

TORCH_SGD = "torch.optim.SGD(model.parameters(), lr=0.05)"
TORCH_ADAM = "torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)"
PADDLE_SGD = "paddle.optimizer.SGD(learning_rate=0.05, parameters=params, grad_clip={grad_clip})"
PADDLE_ADAM = ("paddle.optimizer.AdamW(learning_rate=0.01, parameters=params, weight_decay=0.1, "
               "grad_clip={grad_clip})")

#: name -> (framework, fields of the template)
VARIANTS = {
    "torch_norm": ("torch", {"optimizer": TORCH_SGD, "clip": "lg.ClipGradNorm(1.0)"}),
    "torch_norm_half": ("torch", {"optimizer": TORCH_SGD, "clip": "lg.ClipGradNorm(0.5)"}),
    "torch_norm_inf": ("torch", {"optimizer": TORCH_SGD, "clip": "lg.ClipGradNorm(0.3, norm_type=float('inf'))"}),
    "torch_norm_1": ("torch", {"optimizer": TORCH_SGD, "clip": "lg.ClipGradNorm(1.0, norm_type=1)"}),
    "torch_value": ("torch", {"optimizer": TORCH_SGD, "clip": "lg.ClipGradValue(0.1)"}),
    "torch_none": ("torch", {"optimizer": TORCH_SGD, "clip": "None"}),
    "torch_adamw_norm": ("torch", {"optimizer": TORCH_ADAM, "clip": "{'opt': lg.ClipGradNorm(1.0)}"}),
    "paddle_global": ("paddle", {"grad_clip": "paddle.nn.ClipGradByGlobalNorm(1.0)"}),
    "paddle_global_skip": ("paddle", {"grad_clip": "paddle.nn.ClipGradByGlobalNorm(1.0, auto_skip_clip=True)"}),
    "paddle_per_tensor": ("paddle", {"grad_clip": "paddle.nn.ClipGradByNorm(1.0)"}),
    "paddle_value": ("paddle", {"grad_clip": "paddle.nn.ClipGradByValue(0.1)"}),
    "paddle_loop_norm": ("paddle", {"grad_clip": "None", "clip": "lg.ClipGradNorm(1.0)"}),
    "paddle_adamw_global": ("paddle", {"optimizer": PADDLE_ADAM, "grad_clip": "paddle.nn.ClipGradByGlobalNorm(1.0)"}),
    # the first layer's bias is left out of the norm and of the clipping
    "paddle_need_clip": ("paddle", {"grad_clip": "paddle.nn.ClipGradByGlobalNorm(1.0)",
                                    "bias_attr": ", bias_attr=paddle.ParamAttr(need_clip=False)"}),
    # two parameter groups, each clipped by its own global norm
    "paddle_groups": ("paddle", {"grad_clip": "paddle.nn.ClipGradByGlobalNorm(1.0)",
                                 "params": "[{'params': model[0].parameters()}, {'params': model[2].parameters()}]"}),
}


def _source(variant: str) -> str:
    framework, fields = VARIANTS[variant]
    if framework == "torch":
        return TORCH.format(**fields)
    fields = {"bias_attr": "", "params": "model.parameters()", "clip": "None", "optimizer": PADDLE_SGD,
              **fields}
    fields["optimizer"] = fields["optimizer"].format(grad_clip=fields.pop("grad_clip"))
    return PADDLE.format(**fields)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return variant_exporter(tmp_path_factory, "clipping", _source)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "torch_none"])
def test_clipped_training_is_the_framework_s_own(graph, variant):
    """Every clip, exported and trained on ONNX Runtime, against the framework's eager loop."""
    path = graph(variant)
    stages = LossGraph.load(path).meta.optimizers["opt"].clip
    assert stages and stages[0]["params"]
    result = lg.verify(path, path, grads=True, steps=3, native=True, native_runner=native_runner())
    assert not result.native_failures, result.native_failures


def test_stages_record_what_paddle_clips(graph):
    meta = LossGraph.load(graph("paddle_need_clip")).meta
    (stage,) = meta.optimizers["opt"].clip
    assert stage["kind"] == "paddle_global_norm" and "0.bias" not in stage["params"]
    assert len(stage["params"]) == 3
    groups = LossGraph.load(graph("paddle_groups")).meta.optimizers["opt"].clip
    assert [len(s["params"]) for s in groups] == [2, 2]


@pytest.mark.parametrize(("reference", "candidate"), [
    ("torch_norm", "paddle_global"),  # torch's 1e-6 in the divisor is far below the tolerance
    ("torch_norm", "paddle_loop_norm"),
    ("torch_value", "paddle_value"),
    ("torch_adamw_norm", "paddle_adamw_global"),
])
def test_a_correct_port_of_clipping_passes(graph, reference, candidate):
    result = lg.verify(graph(reference), graph(candidate), grads=True, steps=5)
    assert result.passed, result.first_divergence


@pytest.mark.parametrize(("reference", "candidate", "said"), [
    ("torch_norm", "torch_norm_half", "global 2-norm <= 1 (torch.nn.utils.clip_grad_norm_, +1e-6 in the divisor) vs global 2-norm <= 0.5"),
    ("torch_norm", "paddle_per_tensor", "each gradient's own L2 norm <= 1"),
    ("torch_value", "paddle_global", "each element clamped to [-0.1, 0.1]"),
    ("torch_none", "paddle_global", "the reference does not clip"),
    ("torch_norm", "paddle_value", "global 2-norm <= 1"),
])
def test_a_clipping_mistake_is_found_at_the_update_with_its_setting(graph, reference, candidate, said):
    result = lg.verify(graph(reference), graph(candidate), grads=True, steps=3)
    assert not result.passed
    divergence = result.first_divergence
    assert (divergence.step, divergence.phase) == (0, "update"), divergence
    assert "Gradient clipping differs" in (divergence.hint or ""), divergence.hint
    assert said in divergence.hint, divergence.hint


@pytest.mark.parametrize(("clip", "said"), [
    ("lg.ClipGradNorm(-1.0)", "max_norm must be a positive number"),
    ("lg.ClipGradNorm(1.0, norm_type='two')", "norm_type must be a number"),
    ("lg.ClipGradValue(0)", "clip_value must be a positive number"),
    ("{'gen': lg.ClipGradNorm(1.0)}", "Spec.clip names optimizer 'gen'"),
    ("{'opt': 1.0}", "Spec.clip['opt'] must be a lossgraph.ClipGradNorm"),
    ("1.0", "Spec.clip must be a lossgraph.ClipGradNorm"),
])
def test_a_bad_clip_is_one_line(write_spec, tmp_path, clip, said):
    path = write_spec(TORCH.format(optimizer=TORCH_SGD, clip=clip), "bad_clip.py")
    with pytest.raises(SpecError) as info:
        lg.export(f"{path}:spec", tmp_path / "out.onnx")
    assert said in str(info.value) and "\n" not in str(info.value)


def test_a_paddle_clip_lossgraph_cannot_reproduce_is_one_line(write_spec, tmp_path):
    path = write_spec('''
        import paddle
        import lossgraph as lg

        class Mine(paddle.nn.clip.ClipGradBase):
            pass

        def spec():
            model = paddle.nn.Linear(4, 2)
            opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters(), grad_clip=Mine())
            return lg.Spec(model=model, loss=lambda m, x: m(x).mean(), inputs={"x": lg.Input([3, 4])},
                           optimizers={"opt": opt})
    ''', "own_clip.py")
    with pytest.raises(SpecError) as info:
        lg.export(f"{path}:spec", tmp_path / "out.onnx")
    assert "clips gradients with Mine" in str(info.value) and "\n" not in str(info.value)


TINY = '''
    import {fw}
    import lossgraph as lg

    def spec():
        {fw}.{seed}(0)
        model = {fw}.nn.Linear(4, 2)
        opt = {sgd}
        return lg.Spec(model=model, loss=lambda m, x: 1e-4 * m(x).mean(), inputs={{"x": lg.Input([6, 4])}},
                       optimizers={{"opt": opt}}, clip={clip})
'''


def test_torch_s_epsilon_is_named_only_where_it_matters(write_spec, tmp_path):
    """At a global norm near 1e-4 torch's 1e-6 in the divisor moves the clip coefficient by
    about 1%: under a tight tolerance that parts the ports, and the hint names the epsilon."""
    graphs = []
    for fw, seed, sgd, clip in (
        ("torch", "manual_seed", "torch.optim.SGD(model.parameters(), lr=1.0)", "lg.ClipGradNorm(1e-5)"),
        ("paddle", "seed", "paddle.optimizer.SGD(learning_rate=1.0, parameters=model.parameters(), "
                           "grad_clip=paddle.nn.ClipGradByGlobalNorm(1e-5))", "None"),
    ):
        path = write_spec(TINY.format(fw=fw, seed=seed, sgd=sgd, clip=clip), f"tiny_{fw}.py")
        graphs.append(tmp_path / f"tiny_{fw}.onnx")
        lg.export(f"{path}:spec", graphs[-1])
    result = lg.verify(*graphs, grads=True, steps=2, tol=1e-12)
    divergence = result.first_divergence
    assert not result.passed and (divergence.step, divergence.phase) == (0, "update"), divergence
    assert "+1e-6 in the divisor) vs global 2-norm <= 1e-05 (paddle.nn.ClipGradByGlobalNorm, no epsilon)" in (
        divergence.hint or ""), divergence.hint
    assert lg.verify(*graphs, grads=True, steps=2).passed  # at the default tolerance it is nothing
