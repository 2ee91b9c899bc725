"""What node-level localization adds to ``lossgraph verify --steps 5`` on DiscoGAN.

A DiscoGAN port with a planted bug (a Conv kernel used with its spatial axes swapped in
``discriminator_*.conv5``) is verified twice per round in this one process, with and without
localization (``--no-localize``), alternating; the noise floor is off in both so that only
localization differs. Prints the median times and their ratio (target: at most 3x).

    python benchmarks/localize_overhead.py
    python benchmarks/localize_overhead.py --repeat 3 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lossgraph as lg  # noqa: E402

REFERENCE = str(ROOT / "examples/discogan/discogan_torch.py:spec")
CANDIDATE = str(ROOT / "examples/discogan/discogan_paddle_planted.py:kernel_transposed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="rounds (median reported)")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        ref, cand = Path(tmp) / "ref.onnx", Path(tmp) / "cand.onnx"
        lg.export(REFERENCE, ref)
        lg.export(CANDIDATE, cand)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for localize in (False, True):
                start = time.perf_counter()
                result = lg.verify(ref, cand, steps=args.steps, localize=localize, noise_floor=False)
                times[localize].append(time.perf_counter() - start)
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    found = result.first_divergence
    print(f"DiscoGAN, verify --steps {args.steps}, planted conv5 kernel transpose")
    print(f"without localization: {without:7.1f} s")
    print(f"with localization:    {with_:7.1f} s")
    print(f"ratio (with / without): {with_ / without:.2f}  (target <= 3)")
    print(f"found: step {found.step} {found.phase} {found.op_type} in {found.scope!r}")


if __name__ == "__main__":
    main()
