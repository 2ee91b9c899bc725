"""The export's eager check explains itself (issue 19.7): where eager and ONNX Runtime part,
by module output, and known kernel quirks by name; the legacy ``paddle.nn.BatchNorm`` (with
``act``) exports in training mode."""

import json

import pytest

from lossgraph.exporters.eager_check import tap_label

TRACED_DIFFERENTLY = {
    "torch": """
        import torch
        import lossgraph as lg

        class Odd(torch.nn.Module):
            # stands for a mistranslated op: the traced graph computes something else
            def forward(self, x):
                return x * 2.0 if torch.onnx.is_in_onnx_export() else x

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.fc1 = torch.nn.Linear(4, 8)
                self.odd = Odd()
                self.fc2 = torch.nn.Linear(8, 3)

            def forward(self, x):
                return self.fc2(self.odd(torch.relu(self.fc1(x))))

        def spec():
            return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(),
                           inputs={"x": lg.Input([2, 4])})
    """,
    "paddle": """
        import paddle
        import lossgraph as lg

        class Odd(paddle.nn.Layer):
            # stands for a mistranslated op: the traced graph computes something else
            def forward(self, x):
                if paddle.in_dynamic_mode():
                    return x
                return x * 2.0

        class Net(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                paddle.seed(0)
                self.fc1 = paddle.nn.Linear(4, 8)
                self.odd = Odd()
                self.fc2 = paddle.nn.Linear(8, 3)

            def forward(self, x):
                return self.fc2(self.odd(paddle.nn.functional.relu(self.fc1(x))))

        def spec():
            return lg.Spec(model=Net(), loss=lambda m, x: (m(x) ** 2).mean(),
                           inputs={"x": lg.Input([2, 4])})
    """,
}


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_failed_check_names_the_first_module_output_that_parts(cli, write_spec, tmp_path, framework):
    path = write_spec(TRACED_DIFFERENTLY[framework])
    result = cli("export", f"{path}:spec", "-o", tmp_path / "g.onnx")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert "mistranslated" in line
    assert "first part at the output of `odd`" in line
    assert "the 1 module output(s) computed before it agree" in line  # fc1
    assert "quirk" not in line
    assert not (tmp_path / "g.onnx").exists()


SOFTMAX = """
    import paddle
    import lossgraph as lg

    class Net(paddle.nn.Layer):
        def __init__(self, scale):
            super().__init__()
            paddle.seed(0)
            self.body = paddle.nn.Linear(8, 16)
            self.head = paddle.nn.Linear(16, 10)
            self.head.weight.set_value(self.head.weight * scale)

        def forward(self, x):
            return self.head(paddle.tanh(self.body(x)))

    def spec(scale={scale}):
        return lg.Spec(model=Net(scale), loss=lambda m, x, y: paddle.nn.functional.cross_entropy(m(x), y),
                       inputs={{"x": lg.Input([4, 8]), "y": lg.Input([4], dtype="int64", high=10)}})
"""


def test_paddle_softmax_clip_is_named(cli, write_spec, tmp_path):
    """Paddle's CPU softmax clips x - max at -64: scores that spread wider give a faithful
    graph another loss than eager; the message names the quirk, not a mistranslation."""
    wide = write_spec(SOFTMAX.format(scale=60.0), "wide.py")
    result = cli("export", f"{wide}:spec", "-o", tmp_path / "wide.onnx")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "a known Paddle kernel quirk, not a mistranslation" in line
    assert "clip x - max(x) at -64" in line
    assert "all 2 module outputs agree, so they part after the last module, in the loss" in line
    narrow = write_spec(SOFTMAX.format(scale=1.0), "narrow.py")
    assert cli("export", f"{narrow}:spec", "-o", tmp_path / "narrow.onnx").exit_code == 0


def test_tap_labels():
    assert tap_label("layer1.0.conv1#0") == "`layer1.0.conv1`"
    assert tap_label("block#2.1") == "`block` (call 2, output 1)"


LEGACY_BN = {
    "torch": """
        import torch
        import lossgraph as lg

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.conv = torch.nn.Conv2d(3, 4, 3)
                self.bn = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.ReLU())
                self.fc = torch.nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(self.bn(self.conv(x)).mean(dim=[2, 3]))

        def spec():
            model = Net()
            return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), train=True,
                           inputs={"x": lg.Input([4, 3, 6, 6])},
                           optimizers={"sgd": torch.optim.SGD(model.parameters(), lr=0.1)})
    """,
    "paddle": """
        import paddle
        import lossgraph as lg

        class Net(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                paddle.seed(0)
                self.conv = paddle.nn.Conv2D(3, 4, 3)
                self.bn = paddle.nn.BatchNorm(4, act="relu", momentum=0.9)  # the fluid-era layer
                self.fc = paddle.nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(self.bn(self.conv(x)).mean(axis=[2, 3]))

        def spec():
            model = Net()
            return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), train=True,
                           inputs={"x": lg.Input([4, 3, 6, 6])},
                           optimizers={"sgd": paddle.optimizer.SGD(0.1, parameters=model.parameters())})
    """,
}


def test_legacy_paddle_batch_norm_with_act_trains_like_torch(cli, write_spec, tmp_path):
    for framework, source in LEGACY_BN.items():
        path = write_spec(source, f"bn_{framework}.py")
        result = cli("export", f"{path}:spec", "-o", tmp_path / f"{framework}.onnx")
        assert result.exit_code == 0, result.output
    report = tmp_path / "report.json"
    result = cli("verify", tmp_path / "torch.onnx", tmp_path / "paddle.onnx", "--grads", "--steps", "3",
                 "--tol", "1e-6", "--native", "--json", report)
    assert result.exit_code == 0, result.stdout
    assert json.loads(report.read_text())["passed"]
