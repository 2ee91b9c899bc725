"""``lossgraph check``: both specs exported side by side and verified in one command, and the
cache of exported graphs -- reused only while every file an export read is unchanged (the spec,
the model kept in a package of its own, a data file), re-exported for the side that changed.

The command runs as a user runs it, in a process of its own (a module edited between runs must
be read afresh, as it is by a new process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lossgraph.exporters import cache

TORCH_MODEL = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))
"""
PADDLE_MODEL = """
    import paddle
    from paddle import nn


    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(paddle.nn.functional.{act}(self.fc1(x)))
"""
TORCH_SPEC = """
    from pathlib import Path

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchnet.model import Net

    import lossgraph as lg


    def spec():
        torch.manual_seed(0)
        model = Net()
        scale = np.load(Path(__file__).with_name("scale.npy"))
        with torch.no_grad():
            model.fc2.weight.mul_(float(scale))
        return lg.Spec(model=model, loss=lambda m, x, y: F.cross_entropy(m(x), y),
                       inputs={"x": lg.Input([6, 4]), "y": lg.Input([6], dtype="int64", high=3)},
                       optimizers={"sgd": torch.optim.SGD(model.parameters(), lr=0.1)})
"""
PADDLE_SPEC = """
    import paddle
    import paddle.nn.functional as F
    from paddlenet.model import Net

    import lossgraph as lg


    def spec():
        paddle.seed(0)
        model = Net()
        return lg.Spec(model=model, loss=lambda m, x, y: F.cross_entropy(m(x), y),
                       inputs={"x": lg.Input([6, 4]), "y": lg.Input([6], dtype="int64", high=3)},
                       optimizers={"sgd": paddle.optimizer.SGD(0.1, parameters=model.parameters())})
"""


def _write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: the torch model and its port in packages of their own, the specs
    importing them, and a data file the reference's spec reads."""
    _write(tmp_path / "torchnet" / "__init__.py", "")
    _write(tmp_path / "torchnet" / "model.py", TORCH_MODEL)
    _write(tmp_path / "paddlenet" / "__init__.py", "")
    _write(tmp_path / "paddlenet" / "model.py", PADDLE_MODEL.replace("{act}", "relu"))
    _write(tmp_path / "ref.py", TORCH_SPEC)
    _write(tmp_path / "port.py", PADDLE_SPEC)
    np.save(tmp_path / "scale.npy", np.float32(1.0))
    (tmp_path / "cache").mkdir()
    return tmp_path


def _check(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LOSSGRAPH_CACHE_DIR=str(project / "cache"), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "lossgraph.cli", "check", "ref.py", "port.py", "--steps", "2", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )


def _how(result: subprocess.CompletedProcess) -> list[str]:
    """For each side: "exported" or "cached"."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("lossgraph check: ")]
    return ["cached" if "from the cache" in line else "exported" for line in lines]


def test_check_reuses_unchanged_graphs_and_reexports_the_side_that_changed(project: Path) -> None:
    first = _check(project, "--keep", str(project))
    assert first.returncode == 0, first.stdout + first.stderr
    assert _how(first) == ["exported", "exported"]
    assert "PASSED" in first.stdout and "Traceback" not in first.stderr
    assert (project / "reference.onnx").is_file() and (project / "candidate.onnx").is_file()

    again = _check(project)
    assert again.returncode == 0 and _how(again) == ["cached", "cached"]

    # the port's model, in its own package, edited: only that side is exported again
    _write(project / "paddlenet" / "model.py", PADDLE_MODEL.replace("{act}", "gelu"))
    edited = _check(project)
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert _how(edited) == ["cached", "exported"]
    assert "DIVERGED" in edited.stdout

    # a data file the reference's spec reads, changed: the reference's graph is another one
    np.save(project / "scale.npy", np.float32(2.0))
    data = _check(project)
    assert _how(data) == ["exported", "cached"]

    fresh = _check(project, "--no-cache")
    assert _how(fresh) == ["exported", "exported"]
    assert fresh.returncode == 1


def test_check_reports_a_failing_export_in_one_line(project: Path) -> None:
    _write(project / "port.py", PADDLE_SPEC.replace("model = Net()", "model = Net(); raise ValueError('no port yet')"))
    result = _check(project)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no port yet" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert len(list((project / "cache").iterdir())) <= 1  # the reference's graph at most


def test_check_refuses_bad_arguments_before_exporting(project: Path) -> None:
    missing = _check(project, "--keep", str(project / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    env = dict(os.environ, LOSSGRAPH_CACHE_DIR=str(project / "cache"))
    absent = subprocess.run([sys.executable, "-m", "lossgraph.cli", "check", "ref.py", "absent.py"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert absent.returncode == 2
    assert absent.stderr.strip() == "Error: Spec file absent.py does not exist."


def test_cache_is_pruned_to_its_size_oldest_first(tmp_path: Path, monkeypatch) -> None:
    for i, age in enumerate((100, 200, 300)):  # entry0 the oldest, but in use
        entry = tmp_path / f"entry{i}"
        entry.mkdir()
        (entry / cache.GRAPH_FILE).write_bytes(b"x" * 600_000)
        os.utime(entry, (1e9 + age, 1e9 + age))
    monkeypatch.setenv(cache.CACHE_MB_ENV, "1.2")
    cache._prune(tmp_path, keep={tmp_path / "entry0"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry0", "entry2"]


def test_cache_key_changes_with_what_the_export_depends_on(tmp_path: Path, monkeypatch) -> None:
    spec = tmp_path / "s.py"
    spec.write_text("")
    base = cache._key(f"{spec}:spec", 0)
    assert cache._key(f"{spec}:other", 0) != base
    assert cache._key(f"{spec}:spec", 1) != base
    monkeypatch.chdir(tmp_path)
    assert cache._key(f"{spec}:spec", 0) != base  # graphs name source lines relative to the cwd


@pytest.mark.slow
def test_framework_noise_stays_off_stderr(tmp_path: Path) -> None:
    """Paddle's "When training, we now always track global mean and variance" (every BatchNorm
    forward in training mode: --native trains the model eagerly) and its ccache warning concern
    no lossgraph user."""
    bugs = Path(__file__).resolve().parents[1] / "examples" / "bugs"
    env = dict(os.environ, LOSSGRAPH_CACHE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "lossgraph.cli", "check", f"{bugs / 'bugs_torch.py'}:bn_classifier",
         f"{bugs / 'bugs_paddle.py'}:bn_classifier", "--steps", "1", "--native"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def test_assert_same_training_passes_a_port_and_explains_a_divergence(project: Path, monkeypatch) -> None:
    """``lossgraph.testing.assert_same_training`` on spec paths (exported as by check, cached) and
    on a Spec object built in the test."""
    from lossgraph.spec import load_spec
    from lossgraph.testing import assert_same_training

    monkeypatch.setenv("LOSSGRAPH_CACHE_DIR", str(project / "cache"))
    monkeypatch.chdir(project)
    result = assert_same_training("ref.py", "port.py", steps=2)
    assert result.passed and len(result.steps) == 2

    _write(project / "paddlenet" / "model.py", PADDLE_MODEL.replace("{act}", "gelu"))
    reference = load_spec(str(project / "ref.py"))  # a Spec object, exported in this process
    with pytest.raises(AssertionError) as caught:
        assert_same_training(reference, "port.py", steps=2)
    message = str(caught.value)
    assert message.startswith("lossgraph: diverged") and "First divergence (step 0, forward pass)" in message
    assert "fc1" in message or "gelu" in message.lower(), message
    assert caught.value.report["passed"] is False and caught.value.report["first_divergence"]


@pytest.mark.slow
def test_the_pytest_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "testing" / "test_port.py"
    env = dict(os.environ, LOSSGRAPH_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example),
                             "-o", "addopts="], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
