"""Forward+backward time: lossgraph's ONNX backward graph on ONNX Runtime vs torch eager.

Both run in this one process, on the same inputs and weights, with the same number of threads,
in alternating blocks of runs (a block keeps the other side's idle worker threads from
competing with the one being timed). Prints, per model and loss, the median forward time and
the median forward+backward time of each side and their ratios (ORT / torch; below 1.0 means
ONNX Runtime is faster). The forward ratio says how much of the gap the kernels that both
sides share already explain.

    python benchmarks/step_time.py                 # DiscoGAN (both losses) and ResNet-18, batch 8
    python benchmarks/step_time.py --repeat 10 --models discogan
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lossgraph as lg  # noqa: E402
from lossgraph.autodiff import build_gradients  # noqa: E402
from lossgraph.spec import load_spec  # noqa: E402
from lossgraph.verify.inputs import make_inputs  # noqa: E402
from lossgraph.verify.runtime import OrtRunner  # noqa: E402

MODELS = {
    "discogan": (str(ROOT / "examples/discogan/discogan_torch.py:spec"), None),
    "resnet18": (str(ROOT / "examples/resnet/resnet_torch.py:resnet18"), None),
}


def torch_forward(spec, tensors, loss: str) -> None:
    with torch.no_grad():
        spec.loss(spec.model, **tensors)


def torch_backward(spec, tensors, loss: str) -> None:
    spec.model.zero_grad(set_to_none=True)
    out = spec.loss(spec.model, **tensors)
    out = out if isinstance(out, dict) else {"loss": out}
    out[loss].backward()


def timed_blocks(steps: dict[str, Callable[[], object]], repeat: int, rounds: int = 2) -> dict[str, float]:
    """Median seconds of each step, run in blocks of ``repeat`` (after one warm-up run per
    block), the blocks alternating over ``rounds`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            step()
            for _ in range(repeat):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(target: str, repeat: int) -> list[tuple[str, dict[str, float]]]:
    spec = load_spec(target)
    graph = lg.export(spec)
    spec.model.train(spec.train)
    inputs = make_inputs(spec.inputs, 0)
    params = graph.param_values()
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    feeds = {**inputs, **params}
    forward = OrtRunner(graph.model, fed=params)
    rows = []
    for loss in graph.meta.losses:
        result = build_gradients(graph.model, loss, graph.trainable_params(), feeds=inputs)
        outputs = [loss, *[g for g in result.grads.values() if g]]
        backward = OrtRunner(result.model, fed=params)
        steps = {
            "ort_fwd": functools.partial(forward.run, feeds, outputs=[loss]),
            "torch_fwd": functools.partial(torch_forward, spec, tensors, loss),
            "ort": functools.partial(backward.run, feeds, outputs=outputs),
            "torch": functools.partial(torch_backward, spec, tensors, loss),
        }
        rows.append((loss, timed_blocks(steps, repeat)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per block (two blocks per side; median reported)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"threads: torch {torch.get_num_threads()}, ORT default (cores: {os.cpu_count()})")
    print(f"{'model':10s} {'loss':10s} {'ORT fwd':>9s} {'torch fwd':>9s} {'ratio':>6s} "
          f"{'ORT fwd+bwd':>11s} {'torch fwd+bwd':>13s} {'ratio':>6s}")
    ratios = []
    for name in args.models.split(","):
        target, _ = MODELS[name]
        for loss, t in measure(target, args.repeat):
            ratios.append(t["ort"] / t["torch"])
            print(f"{name:10s} {loss:10s} {t['ort_fwd'] * 1e3:7.1f}ms {t['torch_fwd'] * 1e3:7.1f}ms "
                  f"{t['ort_fwd'] / t['torch_fwd']:6.2f} {t['ort'] * 1e3:9.1f}ms "
                  f"{t['torch'] * 1e3:11.1f}ms {t['ort'] / t['torch']:6.2f}")
    print(f"geometric mean fwd+bwd ratio (ORT / torch): {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()
