"""Localization at scale: a ResNet-50 pair (two copies, the candidate striding in conv1 instead
of conv2 in layer3.0, examples/resnet/resnet_torch.py:resnet50_planted) verified and localized on
this machine. Prints where the divergence was found,
the wall time of each phase and the peak resident memory of the process.

    python benchmarks/localize_resnet50.py             # batch 2, 128 x 128
    python benchmarks/localize_resnet50.py --size 224
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples/resnet")]

import resnet_torch  # noqa: E402

import lossgraph as lg  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        start = time.perf_counter()
        for name in ("resnet50", "resnet50_planted"):
            spec = getattr(resnet_torch, name)(args.batch, args.size)
            paths[name] = Path(tmp) / f"{name}.onnx"
            graph = lg.export(spec, paths[name])
        export_s = time.perf_counter() - start
        nodes = len(graph.model.graph.node)
        timings = {}
        for localize in (False, True):
            start = time.perf_counter()
            result = lg.verify(paths["resnet50"], paths["resnet50_planted"], localize=localize,
                               noise_floor=False)
            timings[localize] = time.perf_counter() - start
    found = result.first_divergence
    print(f"ResNet-50, batch {args.batch}, {args.size}x{args.size}: {nodes} nodes per graph")
    print(f"export (both):            {export_s:7.1f} s")
    print(f"verify without localize:  {timings[False]:7.1f} s")
    print(f"verify with localize:     {timings[True]:7.1f} s  ({timings[True] / timings[False]:.2f}x)")
    print(f"peak resident memory:     {peak_mib():7.0f} MiB")
    if found is None:
        print("found: no divergence")
    else:
        print(f"found: step {found.step} {found.phase} {found.op_type} in {found.scope!r} "
              f"(localized={found.localized}); likely cause: {found.hint}")


if __name__ == "__main__":
    main()
