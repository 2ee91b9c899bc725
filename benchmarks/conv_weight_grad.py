"""dW of a Conv or ConvTranspose on ONNX Runtime: one GEMM over the kernel windows vs one
correlation Conv.

lossgraph's Conv and ConvTranspose rules pick between the two by the kernel's tap count
(``lossgraph.autodiff.rules.nn.CORRELATION_MIN_TAPS``). This measures both forms for the
convolutions of ResNet-18 and DiscoGAN (and a few others), each in a one-node graph whose loss
is ``sum(conv(x, w) * r)``: the time of the backward graph minus the time of the forward graph,
each the minimum of ``--repeat`` runs in a block (so that no other session's threads compete).
Both forms are checked to give the same dW. Prints the times, their ratio and the form the rule
picks.

    python benchmarks/conv_weight_grad.py
    python benchmarks/conv_weight_grad.py --repeat 20
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lossgraph.autodiff import build_gradients  # noqa: E402
from lossgraph.autodiff.rules import nn  # noqa: E402
from lossgraph.verify.runtime import OrtRunner  # noqa: E402

#: name: (x shape, w shape, strides, pads); "transposed" in the name: a ConvTranspose
SHAPES = {
    "resnet18 conv1 7x7/2": ([8, 3, 224, 224], [64, 3, 7, 7], [2, 2], [3, 3, 3, 3]),
    "resnet18 layer2.0.conv1 3x3/2": ([8, 64, 56, 56], [128, 64, 3, 3], [2, 2], [1, 1, 1, 1]),
    "resnet18 layer3.0.conv1 3x3/2": ([8, 128, 28, 28], [256, 128, 3, 3], [2, 2], [1, 1, 1, 1]),
    "resnet18 layer4.0.conv1 3x3/2": ([8, 256, 14, 14], [512, 256, 3, 3], [2, 2], [1, 1, 1, 1]),
    "resnet18 layer2.0.downsample 1x1/2": ([8, 64, 56, 56], [128, 64, 1, 1], [2, 2], [0, 0, 0, 0]),
    "resnet18 layer4.0.downsample 1x1/2": ([8, 256, 14, 14], [512, 256, 1, 1], [2, 2], [0, 0, 0, 0]),
    "discogan conv1 4x4/2": ([4, 3, 64, 64], [64, 3, 4, 4], [2, 2], [1, 1, 1, 1]),
    "discogan conv2 4x4/2": ([4, 64, 32, 32], [128, 64, 4, 4], [2, 2], [1, 1, 1, 1]),
    "discogan conv3 4x4/2": ([4, 128, 16, 16], [256, 128, 4, 4], [2, 2], [1, 1, 1, 1]),
    "5x5/2": ([8, 32, 56, 56], [64, 32, 5, 5], [2, 2], [2, 2, 2, 2]),
    "discogan transposed 4x4/2 256->128": ([4, 256, 8, 8], [256, 128, 4, 4], [2, 2], [1, 1, 1, 1]),
    "discogan transposed 4x4/2 128->64": ([4, 128, 16, 16], [128, 64, 4, 4], [2, 2], [1, 1, 1, 1]),
    "discogan transposed 4x4/2 64->3": ([4, 64, 32, 32], [64, 3, 4, 4], [2, 2], [1, 1, 1, 1]),
    "3x3/2 on 3 channels": ([8, 3, 224, 224], [32, 3, 3, 3], [2, 2], [1, 1, 1, 1]),
    "7x7/2 on 16 channels": ([8, 16, 112, 112], [64, 16, 7, 7], [2, 2], [3, 3, 3, 3]),
}


def conv_model(op, x_shape, w_shape, strides, pads) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(op, ["x", "w"], ["y"], strides=strides, pads=pads, name="conv"),
        helper.make_node("Mul", ["y", "r"], ["yr"], name="mul"),
        helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0, name="sum"),
    ]
    w = rng.standard_normal(w_shape).astype(np.float32)
    n = len(strides)
    if op == "Conv":
        out_channels = w_shape[0]
        y_spatial = [
            (size + pads[i] + pads[i + n] - k) // s + 1
            for i, (size, k, s) in enumerate(zip(x_shape[2:], w_shape[2:], strides))
        ]
    else:
        out_channels = w_shape[1]
        y_spatial = [
            (size - 1) * s - pads[i] - pads[i + n] + k
            for i, (size, k, s) in enumerate(zip(x_shape[2:], w_shape[2:], strides))
        ]
    y_shape = [x_shape[0], out_channels, *y_spatial]
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, y_shape)],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        initializer=[onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {
        "x": rng.standard_normal(x_shape).astype(np.float32),
        "r": rng.standard_normal(y_shape).astype(np.float32),
    }
    return model, feeds


def best_time(runner: OrtRunner, feeds, outputs, repeat: int) -> tuple[float, dict]:
    values = runner.run(feeds, outputs=outputs)  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        runner.run(feeds, outputs=outputs)
        times.append(time.perf_counter() - start)
    return min(times), values


def weight_grad_graph(model, feeds, min_taps: int):
    saved = nn.CORRELATION_MIN_TAPS
    nn.CORRELATION_MIN_TAPS = min_taps
    try:
        result = build_gradients(model, "loss", ["w"], feeds=feeds)
    finally:
        nn.CORRELATION_MIN_TAPS = saved
    return OrtRunner(result.model), result.grads["w"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=8, help="timed runs per graph (minimum reported)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{'convolution':40s} {'forward':>8s} {'dW GEMM':>8s} {'dW Conv':>8s} {'Conv/GEMM':>9s}  rule picks")
    for name, (x_shape, w_shape, strides, pads) in SHAPES.items():
        op = "ConvTranspose" if "transposed" in name else "Conv"
        model, feeds = conv_model(op, x_shape, w_shape, strides, pads)
        forward, _ = best_time(OrtRunner(model), feeds, ["loss"], args.repeat)
        grads = {}
        for form, min_taps in (("GEMM", 10**9), ("Conv", 1)):
            runner, output = weight_grad_graph(model, feeds, min_taps)
            seconds, values = best_time(runner, feeds, [output], args.repeat)
            grads[form] = (seconds - forward, values[output])
            del runner
        gemm, conv = grads["GEMM"][0], grads["Conv"][0]
        a, b = grads["GEMM"][1], grads["Conv"][1]
        if not np.allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(a).max())):
            raise SystemExit(f"{name}: the two forms disagree by {float(np.abs(a - b).max()):.3g}")
        taps = int(np.prod(w_shape[2:]))
        picks = "Conv" if taps >= nn.CORRELATION_MIN_TAPS else "GEMM"
        print(f"{name:40s} {forward * 1e3:6.1f}ms {gemm * 1e3:6.1f}ms {conv * 1e3:6.1f}ms "
              f"{conv / gemm:9.2f}  {picks}")


if __name__ == "__main__":
    main()
