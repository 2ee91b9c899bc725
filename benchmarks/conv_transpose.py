"""ConvTranspose with a fed weight on ONNX Runtime's CPU kernel vs the Gemm + Col2Im rewrite of
lossgraph.runtime.conv_transpose, for the ConvTransposes of DiscoGAN and ResNet-18's training
steps (DiscoGAN's decoder; the dX of strided Convs in both models).

Each shape runs in two one-node sessions, the node as it is and rewritten, in turn, each run
after a short idle gap (see step_time.GAP_S), over ``--repeat`` rounds. Prints each side's median
time, the median of the per-round ratios (ConvTranspose / rewrite: above 1.0 the rewrite is
faster) and whether lossgraph rewrites that shape. Both outputs are checked to agree.

    python benchmarks/conv_transpose.py
    python benchmarks/conv_transpose.py --repeat 60
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_time import paired_ratio, timed_rounds  # noqa: E402

from lossgraph.runtime.conv_transpose import lower_conv_transposes  # noqa: E402

#: name: (x shape, w shape [Ci, Co, kh, kw], strides, pads, output_padding)
SHAPES = {
    "discogan decoder 512->256, 4x4": ([4, 512, 4, 4], [512, 256, 4, 4], [2, 2], [1, 1, 1, 1], [0, 0]),
    "discogan decoder 256->128, 8x8": ([4, 256, 8, 8], [256, 128, 4, 4], [2, 2], [1, 1, 1, 1], [0, 0]),
    "discogan decoder 128->64, 16x16": ([4, 128, 16, 16], [128, 64, 4, 4], [2, 2], [1, 1, 1, 1], [0, 0]),
    "discogan decoder 64->3, 32x32": ([4, 64, 32, 32], [64, 3, 4, 4], [2, 2], [1, 1, 1, 1], [0, 0]),
    "resnet18 dX layer4.0.conv1 3x3/2": ([8, 512, 7, 7], [512, 256, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
    "resnet18 dX layer4.0.downsample 1x1/2": ([8, 512, 7, 7], [512, 256, 1, 1], [2, 2], [0, 0, 0, 0], [1, 1]),
    "resnet18 dX layer3.0.conv1 3x3/2": ([8, 256, 14, 14], [256, 128, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
    "resnet18 dX layer2.0.conv1 3x3/2": ([8, 128, 28, 28], [128, 64, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
}


def conv_transpose_model(x_shape, w_shape, strides, pads, output_padding) -> onnx.ModelProto:
    node = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], name="convT", strides=strides, pads=pads,
        output_padding=output_padding, kernel_shape=w_shape[2:],
    )
    graph = helper.make_graph(
        [node], "convT",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, w_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds (medians reported)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    print(f"{'ConvTranspose (fed weight)':40s} {'ORT':>8s} {'rewrite':>8s} {'ORT/rewrite':>11s}  rewritten")
    for name, (x_shape, w_shape, strides, pads, output_padding) in SHAPES.items():
        model = conv_transpose_model(x_shape, w_shape, strides, pads, output_padding)
        rewritten, _ = lower_conv_transposes(model, every=True)
        feeds = {"x": rng.standard_normal(x_shape, dtype=np.float32),
                 "w": rng.standard_normal(w_shape, dtype=np.float32)}
        plain, lowered = session(model), session(rewritten)
        reference, value = plain.run(None, feeds)[0], lowered.run(None, feeds)[0]
        if not np.allclose(value, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max())):
            raise SystemExit(f"{name}: the rewrite disagrees by {float(np.abs(value - reference).max()):.3g}")
        times = timed_rounds(
            {"ort": functools.partial(plain.run, None, feeds), "rewrite": functools.partial(lowered.run, None, feeds)},
            args.repeat, gap=0.02,
        )
        picked = lower_conv_transposes(model)[1] == 1
        print(f"{name:40s} {statistics.median(times['ort']) * 1e3:6.2f}ms "
              f"{statistics.median(times['rewrite']) * 1e3:6.2f}ms "
              f"{paired_ratio(times['ort'], times['rewrite']):11.2f}  {'yes' if picked else 'no'}")


if __name__ == "__main__":
    main()
