"""Forward+backward time: lossgraph's ONNX backward graph on ONNX Runtime vs torch eager.

Both run in this one process, on the same inputs and weights, with the same number of threads,
alternating so that neither gets a warmer machine. Prints the median times and their ratio
(ORT / torch; below 1.0 means ONNX Runtime is faster).

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


def torch_backward(spec, tensors, loss: str) -> None:
    spec.model.zero_grad(set_to_none=True)
    out = spec.loss(spec.model, **tensors)
    out = out if isinstance(out, dict) else {"loss": out}
    out[loss].backward()


def measure(target: str, repeat: int) -> list[tuple[str, float, float]]:
    spec = load_spec(target)
    graph = lg.export(spec)
    spec.model.train(spec.train)
    inputs = make_inputs(spec.inputs, 0)
    params = graph.param_values()
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    rows = []
    for loss in graph.meta.losses:
        result = build_gradients(graph.model, loss, graph.trainable_params(), feeds=inputs)
        outputs = [loss, *[g for g in result.grads.values() if g]]
        runner = OrtRunner(result.model, fed=params)
        feeds = {**inputs, **params}

        ort_step = functools.partial(runner.run, feeds, outputs=outputs)
        torch_step = functools.partial(torch_backward, spec, tensors, loss)
        ort_step()
        torch_step()  # warm up both
        ort_times, torch_times = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            ort_step()
            ort_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            torch_step()
            torch_times.append(time.perf_counter() - start)
        rows.append((loss, statistics.median(ort_times), statistics.median(torch_times)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side (median reported)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"threads: torch {torch.get_num_threads()}, ORT default (cores: {os.cpu_count()})")
    print(f"{'model':10s} {'loss':10s} {'ORT fwd+bwd':>12s} {'torch fwd+bwd':>14s} {'ratio':>7s}")
    ratios = []
    for name in args.models.split(","):
        target, _ = MODELS[name]
        for loss, ort_s, torch_s in measure(target, args.repeat):
            ratios.append(ort_s / torch_s)
            print(f"{name:10s} {loss:10s} {ort_s * 1000:10.1f}ms {torch_s * 1000:12.1f}ms {ort_s / torch_s:7.2f}")
    print(f"geometric mean ratio (ORT / torch): {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()
