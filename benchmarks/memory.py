"""Peak memory of ``lossgraph verify``: DiscoGAN (torch against its Paddle port) with
``--grads --steps N`` for several N, and ResNet-50 (torch against itself) with ``--grads``, each
verify in a fresh process (its peak RSS, ``ru_maxrss``), printed against a lower bound: both
float32 graphs' weights and gradients, plus the activations one forward pass of each computes
(every float value of the graph, from shape inference: what a backward pass may keep).

    python benchmarks/memory.py                                   # DiscoGAN N = 1, 5, 20; ResNet-50 b2 128
    python benchmarks/memory.py --steps 2 40 --resnet-batch 10 --resnet-size 224
    python benchmarks/memory.py --no-noise-floor                   # the float32 run alone
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lossgraph as lg  # noqa: E402
from lossgraph.graph import LossGraph  # noqa: E402
from lossgraph.runtime.session import infer_types  # noqa: E402

VERIFY = textwrap.dedent("""
    import resource, sys, time
    import lossgraph as lg
    start = time.perf_counter()
    result = lg.verify(sys.argv[1], sys.argv[2], grads=True, steps=int(sys.argv[3]),
                       noise_floor=sys.argv[4] == "1")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start,
          "PASSED" if result.passed else "DIVERGED")
""")


def lower_bound(path: Path) -> int:
    """Bytes: the graph's float32 weights twice (values and gradients) and every float value its
    forward pass computes."""
    graph = LossGraph.load(path)
    weights = sum(int(np.prod(info.shape)) * 4 for info in graph.meta.params.values())
    types = infer_types(graph.model)
    produced = {o for node in graph.model.graph.node for o in node.output}
    activations = sum(
        int(np.prod(t.shape)) * (8 if t.elem_type == 11 else 4)
        for name, t in types.items()
        if name in produced and t.is_float and t.shape is not None and all(d is not None for d in t.shape)
    )
    return 2 * weights + activations


def measure(ref: Path, cand: Path, steps: int, floor: bool) -> tuple[int, float, str]:
    run = subprocess.run([sys.executable, "-c", VERIFY, str(ref), str(cand), str(steps), "1" if floor else "0"],
                         capture_output=True, text=True, check=True)
    rss_kb, seconds, verdict = run.stdout.split()[-3:]
    return int(rss_kb) * 1024, float(seconds), verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--resnet-batch", type=int, default=2)
    parser.add_argument("--resnet-size", type=int, default=128)
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--no-noise-floor", action="store_true")
    args = parser.parse_args()
    floor = not args.no_noise_floor
    gib = 1024 ** 3
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        lg.export(f"{ROOT}/examples/discogan/discogan_torch.py", out / "dg_torch.onnx")
        lg.export(f"{ROOT}/examples/discogan/discogan_paddle.py", out / "dg_paddle.onnx")
        bound = lower_bound(out / "dg_torch.onnx") + lower_bound(out / "dg_paddle.onnx")
        print(f"noise floor: {'on' if floor else 'off'}; lower bound = both graphs' weights and gradients "
              f"+ one forward pass's float values")
        print(f"{'run':44s} {'time s':>8s} {'peak GiB':>9s} {'bound GiB':>10s} {'ratio':>6s}  verdict")
        for steps in args.steps:
            rss, seconds, verdict = measure(out / "dg_torch.onnx", out / "dg_paddle.onnx", steps, floor)
            print(f"{f'DiscoGAN verify --grads --steps {steps}':44s} {seconds:8.1f} {rss / gib:9.2f} "
                  f"{bound / gib:10.2f} {rss / bound:6.1f}  {verdict}")
        if not args.no_resnet:
            b, size = args.resnet_batch, args.resnet_size
            sys.path.insert(0, str(ROOT / "examples" / "resnet"))
            import resnet_torch

            started = time.perf_counter()
            lg.export(resnet_torch.resnet50(b, size), out / "r50.onnx")
            exported = time.perf_counter() - started
            bound = 2 * lower_bound(out / "r50.onnx")
            rss, seconds, verdict = measure(out / "r50.onnx", out / "r50.onnx", 0, floor)
            print(f"{f'ResNet-50 b{b} {size}x{size} verify --grads':44s} {seconds:8.1f} {rss / gib:9.2f} "
                  f"{bound / gib:10.2f} {rss / bound:6.1f}  {verdict} (export {exported:.0f} s)")


if __name__ == "__main__":
    main()
