"""Time to a verdict on small pairs: wall time of the three-command path (``export`` both, then
``verify``), of ``lossgraph check`` cold (``--no-cache``), after an edit of the port only (one side
re-exported), and with both graphs cached -- and, when PaDiff is importable, of PaDiff's
``auto_diff`` on the same models, inputs, loss and optimizer, side by side. Every run is a fresh
process (imports included, as a user pays them).

    python benchmarks/time_to_verdict.py                       # three pairs, --grads --steps 2
    python benchmarks/time_to_verdict.py --padiff-path DIR     # PaDiff installed with --target DIR
    python benchmarks/time_to_verdict.py --repeat 3            # the best of three runs each

The pairs (an MLP, a CNN with BatchNorm in training mode, a GRU classifier) are written here,
not taken from the repository's examples; each model maps its input ``x`` to an output whose
mean square is the loss (what PaDiff's ``loss_fn`` takes), trained with SGD.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PAIRS = {
    "mlp": (
        """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

            def forward(self, x):
                return self.fc2(torch.tanh(self.fc1(x)))
        """,
        """
        class Net(nn.Layer):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

            def forward(self, x):
                return self.fc2(paddle.tanh(self.fc1(x)))
        """,
        [8, 16],
    ),
    "cnn": (
        """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
                self.fc = nn.Linear(8 * 4 * 4, 5)

            def forward(self, x):
                h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
                return self.fc(h.flatten(1))
        """,
        """
        class Net(nn.Layer):
            def __init__(self):
                super().__init__()
                self.conv, self.bn = nn.Conv2D(3, 8, 3, padding=1), nn.BatchNorm2D(8)
                self.fc = nn.Linear(8 * 4 * 4, 5)

            def forward(self, x):
                h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
                return self.fc(h.flatten(1))
        """,
        [4, 3, 8, 8],
    ),
    "gru": (
        """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn, self.head = nn.GRU(6, 12, batch_first=True), nn.Linear(12, 3)

            def forward(self, x):
                out, _ = self.rnn(x)
                return self.head(out[:, -1])
        """,
        """
        class Net(nn.Layer):
            def __init__(self):
                super().__init__()
                self.rnn, self.head = nn.GRU(6, 12), nn.Linear(12, 3)

            def forward(self, x):
                out, _ = self.rnn(x)
                return self.head(out[:, -1])
        """,
        [4, 5, 6],
    ),
}

TORCH_HEAD = """
import torch
import torch.nn.functional as F
from torch import nn

import lossgraph as lg
"""
PADDLE_HEAD = """
import paddle
import paddle.nn.functional as F
from paddle import nn

import lossgraph as lg
"""
TORCH_SPEC = """

def spec():
    torch.manual_seed(0)
    model = Net()
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input({shape})}},
                   train=True, optimizers={{"sgd": torch.optim.SGD(model.parameters(), lr=0.1)}})
"""
PADDLE_SPEC = """

def spec():
    paddle.seed(0)
    model = Net()
    return lg.Spec(model=model, loss=lambda m, x: (m(x) ** 2).mean(), inputs={{"x": lg.Input({shape})}},
                   train=True, optimizers={{"sgd": paddle.optimizer.SGD(0.1, parameters=model.parameters())}})
"""
#: PaDiff on the same pair: the specs' models (PaDiff initializes both alike itself,
#: ``auto_weights``), the specs' input, mean-square loss and SGD, STEPS steps.
PADIFF = """
import sys, time
start = time.perf_counter()
import paddle, torch
from padiff import auto_diff
from lossgraph.inputs import make_inputs
from lossgraph.spec import load_spec
ref, cand = load_spec(sys.argv[1]), load_spec(sys.argv[2])
x = make_inputs(ref.inputs, 0)["x"]
try:
    ok = auto_diff(cand.model, ref.model, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}),
                   auto_weights=True, options={"atol": 1e-6},
                   loss_fn=(lambda out: (out ** 2).mean(), lambda out: (out ** 2).mean()),
                   optimizer=(cand.optimizers["sgd"], ref.optimizers["sgd"]), steps=int(sys.argv[3]))
    said = "PASSED" if ok else "DIVERGED"
except Exception as exc:
    said = "ERROR:" + type(exc).__name__
print("PADIFF", said, time.perf_counter() - start)
"""


def write_pair(folder: Path, name: str) -> tuple[Path, Path]:
    torch_model, paddle_model, shape = PAIRS[name]
    ref, cand = folder / f"{name}_torch.py", folder / f"{name}_paddle.py"
    ref.write_text(TORCH_HEAD + textwrap.dedent(torch_model) + TORCH_SPEC.format(shape=shape))
    cand.write_text(PADDLE_HEAD + textwrap.dedent(paddle_model) + PADDLE_SPEC.format(shape=shape))
    return ref, cand


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    said = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PADIFF ")]
    return seconds, said[0] if said else "PASSED" if proc.returncode == 0 else "DIVERGED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs")
    parser.add_argument("--padiff-path", help="a folder to put on PYTHONPATH for PaDiff")
    args = parser.parse_args()
    options = ["--grads", "--steps", str(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = dict(os.environ, LOSSGRAPH_CACHE_DIR=str(work / "cache"), GLOG_minloglevel="2")
        padiff_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [args.padiff_path, env.get("PYTHONPATH")])))
        has_padiff = subprocess.run([sys.executable, "-c", "import padiff"], env=padiff_env,
                                    capture_output=True).returncode == 0
        header = f"{'pair':6} {'export+export+verify':>21} {'check cold':>11} {'check 1 side':>13} {'check cached':>13}"
        print(f"machine: {os.cpu_count()} cores; verify options {' '.join(options)}; best of {args.repeat}")
        print(header + (f" {'PaDiff':>9}" if has_padiff else "   (PaDiff not importable)"))
        for name in args.pairs:
            ref, cand = write_pair(work, name)
            rows: dict[str, list[float]] = {}
            verdicts: dict[str, set[str]] = {}
            for _ in range(args.repeat):
                for key, (seconds, verdict) in measure(ref, cand, options, work, env,
                                                       padiff_env if has_padiff else None).items():
                    rows.setdefault(key, []).append(seconds)
                    verdicts.setdefault("PaDiff" if key == "padiff" else "lossgraph", set()).add(verdict)
            best = {key: min(values) for key, values in rows.items()}
            line = (f"{name:6} {best['three']:>20.1f}s {best['cold']:>10.1f}s {best['one']:>12.1f}s "
                    f"{best['cached']:>12.1f}s")
            if has_padiff:
                line += f" {best['padiff']:>8.1f}s"
            said = "; ".join(f"{tool} {'/'.join(sorted(v))}" for tool, v in verdicts.items())
            print(f"{line}   {said}", flush=True)


def measure(ref: Path, cand: Path, options: list[str], work: Path, env: dict[str, str],
            padiff_env: dict[str, str] | None) -> dict[str, tuple[float, str]]:
    """One run of each path on one pair: {path: (seconds, verdict)}."""
    lossgraph = [sys.executable, "-m", "lossgraph.cli"]
    out = {}
    start = time.perf_counter()
    for path in (ref, cand):
        subprocess.run([*lossgraph, "export", str(path), "-o", str(path.with_suffix(".onnx"))],
                       cwd=work, env=env, capture_output=True, check=True)
    _, verdict = timed([*lossgraph, "verify", str(ref.with_suffix(".onnx")), str(cand.with_suffix(".onnx")),
                        *options], work, env)
    out["three"] = (time.perf_counter() - start, verdict)
    check = [*lossgraph, "check", str(ref), str(cand), *options]
    out["cold"] = timed([*check, "--no-cache"], work, env)
    timed(check, work, env)  # fills the cache
    cand.write_text(cand.read_text() + "\n# edited\n")
    out["one"] = timed(check, work, env)
    out["cached"] = timed(check, work, env)
    if padiff_env is not None:
        out["padiff"] = timed([sys.executable, "-c", PADIFF, f"{ref}:spec", f"{cand}:spec", options[-1]],
                              work, padiff_env)
    return out

if __name__ == "__main__":
    main()
