"""Forward+backward time: lossgraph's ONNX backward graph on ONNX Runtime vs torch eager.

Both run in this one process, on the same inputs and weights, with the same number of threads,
one run of each in turn per round, each after a short idle gap (``GAP_S``). Prints, per model
and loss, the median forward and forward+backward times of each side and the median of the
per-round ratios (ORT / torch; below 1.0 means ONNX Runtime is faster). The forward ratio says
how much of the gap the forward kernels already explain. ORT runs as lossgraph runs it (Convs
on the NCHWc kernels, see lossgraph/runtime/nchwc.py); the last column is the same backward
graph on the plain im2col kernels, measured in the same rounds.

    python benchmarks/step_time.py                 # DiscoGAN (both losses, batch 4), ResNet-18 (batch 8)
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
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lossgraph as lg  # noqa: E402
from lossgraph.autodiff import build_gradients  # noqa: E402
from lossgraph.inputs import make_inputs  # noqa: E402
from lossgraph.runtime.session import OrtRunner  # noqa: E402
from lossgraph.spec import load_spec  # noqa: E402

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


def backward_step(graph, loss: str, inputs) -> tuple[onnx.ModelProto, list[str]]:
    """The graph with the backward subgraph of ``loss`` appended, and the outputs of one
    training step: the loss and its gradient for every trainable parameter."""
    result = build_gradients(graph.model, loss, graph.trainable_params(), feeds=inputs)
    return result.model, [loss, *[g for g in result.grads.values() if g]]


#: Seconds of idle before each timed step. Both runtimes' worker threads spin for a while after
#: a parallel section (ONNX Runtime's intra-op pool, torch's OpenMP), so a step timed right after
#: the other side's run shares the machine with them: measured here, torch's ResNet-18 step took
#: 4-7% longer right after an ONNX Runtime run than after idle or after a run of its own, and
#: without the gap this benchmark read DiscoGAN 0.97-1.05 where it is 1.11-1.19.
GAP_S = 0.1


def timed_rounds(
    steps: dict[str, Callable[[], object]], repeat: int, gap: float = GAP_S
) -> dict[str, list[float]]:
    """Seconds of each step over ``repeat`` rounds, each round running every step once in turn
    (after one warm-up round), each step after ``gap`` seconds of idle."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeat + 1):
        for name, step in steps.items():
            time.sleep(gap)
            start = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(ort: list[float], torch_: list[float]) -> float:
    """The median of the per-round ratios: runs next to each other share the machine's state
    (on a shared host, slow phases last seconds), so their ratio is steadier than the ratio of
    the medians."""
    return statistics.median(a / b for a, b in zip(ort, torch_))


def measure(target: str, repeat: int) -> list[tuple[str, dict[str, list[float]]]]:
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
        model, outputs = backward_step(graph, loss, inputs)
        backward = OrtRunner(model, fed=params)
        plain = OrtRunner(model, fed=params, nchwc=False)
        steps = {
            "ort_fwd": functools.partial(forward.run, feeds, outputs=[loss]),
            "torch_fwd": functools.partial(torch_forward, spec, tensors, loss),
            "ort": functools.partial(backward.run, feeds, outputs=outputs),
            "torch": functools.partial(torch_backward, spec, tensors, loss),
            "ort_plain": functools.partial(plain.run, feeds, outputs=outputs),
        }
        rows.append((loss, timed_rounds(steps, repeat)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (medians reported)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"threads: torch {torch.get_num_threads()}, ORT default (cores: {os.cpu_count()})")
    print(f"{'model':10s} {'loss':10s} {'ORT fwd':>9s} {'torch fwd':>9s} {'ratio':>6s} "
          f"{'ORT fwd+bwd':>11s} {'torch fwd+bwd':>13s} {'ratio':>6s} {'plain ORT':>10s} {'ratio':>6s}")
    ratios = []
    for name in args.models.split(","):
        target, _ = MODELS[name]
        for loss, t in measure(target, args.repeat):
            med = {k: statistics.median(v) for k, v in t.items()}
            fwd, both = paired_ratio(t["ort_fwd"], t["torch_fwd"]), paired_ratio(t["ort"], t["torch"])
            plain = paired_ratio(t["ort_plain"], t["torch"])
            ratios.append(both)
            print(f"{name:10s} {loss:10s} {med['ort_fwd'] * 1e3:7.1f}ms {med['torch_fwd'] * 1e3:7.1f}ms "
                  f"{fwd:6.2f} {med['ort'] * 1e3:9.1f}ms {med['torch'] * 1e3:11.1f}ms {both:6.2f} "
                  f"{med['ort_plain'] * 1e3:8.1f}ms {plain:6.2f}")
    print(f"geometric mean fwd+bwd ratio (ORT / torch): {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()
