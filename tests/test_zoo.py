"""The vision zoo (examples/zoo): torchvision-architecture ports against ``paddle.vision.models``,
code lossgraph was not written with. Every correct pair passes ``verify --grads --steps 3
--tol 1e-6`` in eval and training mode (float32 noise allowed: the float64 re-run must call
every diff above the tolerance noise); every planted porting bug is found at its module.

Each export and verify runs in its own process (vgg11 alone peaks at 17.7 GB), so the memory
of one model is back before the next. Slow: about half an hour on two cores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES

ZOO = EXAMPLES / "zoo"
MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "shufflenet_v2_x0_5",
          "squeezenet1_1", "vgg11", "inception_v3"]
#: (torch spec, paddle planted spec, the scope the first divergence must be reported in, phase)
PLANTED = [
    ("resnet18", "resnet18_planted", "layer3.0.bn1", "forward"),
    ("mobilenet_v2", "mobilenet_v2_planted", "features.3", "forward"),
    ("mobilenet_v3_small", "mobilenet_v3_small_planted", "features.4.block.2", "forward"),
    ("mobilenet_v3_small_train", "mobilenet_v3_small_train_planted", "features.9.block.1.1", "update"),
    ("densenet121", "densenet121_planted", "features.denseblock2.denselayer5.relu2", "forward"),
    ("shufflenet_v2_x0_5", "shufflenet_v2_x0_5_planted", "stage3.1", "forward"),
    ("squeezenet1_1", "squeezenet1_1_planted", "features.0", "forward"),
    ("squeezenet1_1_train", "squeezenet1_1_train_planted", "classifier.0", "forward"),
    ("vgg11", "vgg11_planted", "features.9", "forward"),
    ("inception_v3", "inception_v3_planted", "Mixed_6b", "forward"),
]
ARGS = ["--grads", "--steps", "3", "--tol", "1e-6"]
#: vgg11's float64 re-run of a diverging pair needs more than 24 GB (issue 24): its planted
#: bug (at step 0, forward) is checked without the noise floor and over one step: three steps
#: peak at 18.7 GB, one at 12.8 GB, and the slow suite's own process holds several more (the
#: OOM killer ended the three-step run there twice on this 24 GB machine)
WITHOUT_FLOOR = {"vgg11_planted"}

pytestmark = pytest.mark.slow


def _lossgraph(*args: str) -> subprocess.CompletedProcess:
    command = shutil.which("lossgraph") or str(Path(sys.executable).with_name("lossgraph"))
    return subprocess.run([command, *map(str, args)], capture_output=True, text=True, cwd=ZOO)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Export ``FILE.py:NAME`` of examples/zoo once; returns the .onnx path."""
    folder = tmp_path_factory.mktemp("zoo")
    done: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in done:
            out = folder / (target.replace(".py:", "__") + ".onnx")
            result = _lossgraph("export", target, "-o", out)
            assert result.returncode == 0, result.stderr
            done[target] = out
        return done[target]

    return get


def _verify(zoo, tmp_path, torch_spec: str, paddle_spec: str, *extra: str, args=ARGS):
    report = tmp_path / "report.json"
    result = _lossgraph("verify", zoo(f"zoo_torch.py:{torch_spec}"), zoo(paddle_spec), *args,
                        "--json", report, *extra)
    assert result.returncode in (0, 1), result.stderr
    return result, json.loads(report.read_text())


@pytest.mark.parametrize("mode", ["", "_train"], ids=["eval", "train"])
@pytest.mark.parametrize("model", MODELS)
def test_correct_port_passes(zoo, tmp_path, model, mode):
    result, report = _verify(zoo, tmp_path, model + mode, f"zoo_paddle.py:{model}{mode}")
    assert result.returncode == 0, result.stdout
    assert report["passed"]
    floor = report.get("noise_floor") or {}  # a first divergence, if any, is float32 noise
    assert all(item["verdict"] == "noise" for item in floor.get("items", []))


@pytest.mark.parametrize("torch_spec, planted, scope, phase", PLANTED, ids=[p[1] for p in PLANTED])
def test_planted_bug_is_found_at_its_module(zoo, tmp_path, torch_spec, planted, scope, phase):
    extra = ["--no-noise-floor"] if planted in WITHOUT_FLOOR else []
    args = ["--grads", "--steps", "1", "--tol", "1e-6"] if planted in WITHOUT_FLOOR else ARGS
    result, report = _verify(zoo, tmp_path, torch_spec, f"zoo_paddle_planted.py:{planted}", *extra, args=args)
    assert result.returncode == 1, result.stdout
    found = report["first_divergence"]
    assert found["phase"] == phase, found
    assert found["scope"].startswith(scope), found
    assert 0 < found["max_abs_diff"], found


@pytest.mark.parametrize("model", MODELS)
def test_every_op_can_be_differentiated(zoo, model):
    """The op audit (``test_op_audit.py``) over the zoo's graphs, both sides, both modes."""
    from lossgraph.autodiff.registry import known_ops
    from lossgraph.graph import LossGraph

    for mode in ("", "_train"):
        for target in (f"zoo_torch.py:{model}{mode}", f"zoo_paddle.py:{model}{mode}"):
            ops = {n.op_type for n in LossGraph.load(zoo(target)).model.graph.node}
            assert not ops - known_ops(), target
