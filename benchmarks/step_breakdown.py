"""Where a forward+backward step spends its time: ONNX Runtime's profiler against torch's, per
forward op, side by side in one run.

Each row is one kind of forward op (Conv, MaxPool, BatchNormalization, ...): the time its forward
nodes take and the time the backward nodes built from it take, on each side. lossgraph's
backward nodes are named after the forward node they come from (``<node>/grad/<i>``; and
``/nchwc/`` for the reorders of lossgraph.runtime.nchwc, ``/col2im/`` for the nodes of
lossgraph.runtime.conv_transpose), so ONNX Runtime's per-node kernel times add up by origin; the
ONNX Runtime backward columns also say which kernels that time went to. torch's rows are its
profiler's top-level forward ops and the autograd functions of the backward pass (each with
everything it calls). Both profilers add overhead (ONNX Runtime's about 20-30% here), so compare
shares and the rows with each other, not the totals with ``step_time.py``'s.

    python benchmarks/step_breakdown.py                      # ResNet-18, batch 8
    python benchmarks/step_breakdown.py --model discogan --loss dis_loss
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from profiling import kernel_times  # noqa: E402
from step_time import MODELS, backward_step, torch_backward  # noqa: E402

import lossgraph as lg  # noqa: E402
from lossgraph.graph import weights_as_inputs  # noqa: E402
from lossgraph.inputs import make_inputs  # noqa: E402
from lossgraph.runtime.session import lower_for_cpu, reshapes_as_views  # noqa: E402
from lossgraph.spec import load_spec  # noqa: E402

#: torch's top-level forward ops and autograd functions, by the row (ONNX op) they export to
#: (one row for Conv and ConvTranspose: torch has one autograd function for both)
TORCH_OPS = {
    "Conv, ConvTranspose": ("aten::conv2d", "aten::conv_transpose2d", "aten::convolution", "ConvolutionBackward0"),
    "BatchNormalization": ("aten::batch_norm", "NativeBatchNormBackward0", "CudnnBatchNormBackward0"),
    "InstanceNormalization": ("aten::instance_norm",),
    "Relu": ("aten::relu", "aten::relu_", "ReluBackward0", "ThresholdBackward0"),
    "LeakyRelu": ("aten::leaky_relu", "aten::leaky_relu_", "LeakyReluBackward0", "LeakyReluBackward1"),
    "MaxPool": ("aten::max_pool2d", "MaxPool2DWithIndicesBackward0"),
    "GlobalAveragePool": ("aten::adaptive_avg_pool2d", "MeanBackward1", "AdaptiveAvgPool2DBackward0"),
    "Add": ("aten::add", "aten::add_", "AddBackward0"),
    "Gemm": ("aten::linear", "AddmmBackward0"),
    "Sigmoid": ("aten::sigmoid", "SigmoidBackward0"),
    "Tanh": ("aten::tanh", "TanhBackward0"),
}
ROWS = {"Conv": "Conv, ConvTranspose", "ConvTranspose": "Conv, ConvTranspose"}
TORCH_TO_ONNX = {name: op for op, names in TORCH_OPS.items() for name in names}
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def ort_breakdown(model, outputs, feeds, repeat: int):
    """{row: {"fwd": ms, "bwd": ms, "kernels": Counter}} per run, from ONNX Runtime's profiler
    over the session lossgraph runs (ConvTranspose rewrite, NCHWc lowering and reshaped outputs
    as views included); the warm-up run is left out."""
    row_of = {n.name: ROWS.get(n.op_type, n.op_type) for n in model.graph.node if "/grad/" not in n.name}
    prepared, _, _ = lower_for_cpu(weights_as_inputs(model, feeds))
    prepared, views = reshapes_as_views(prepared)
    fetched = list(dict.fromkeys(views[o][0] if o in views else o for o in outputs))
    runs, _ = kernel_times(prepared, feeds, fetched, repeat)
    table: dict[str, dict] = collections.defaultdict(
        lambda: {"fwd": 0.0, "bwd": 0.0, "kernels": collections.Counter()}
    )
    for name, kernel, seconds in (event for run in runs[1:] for event in run):
        row = table[row_of.get(name.split("/grad/")[0].split("/nchwc/")[0].split("/col2im/")[0], "(other)")]
        ms = seconds * 1e3 / repeat
        if "/grad/" in name:
            row["bwd"] += ms
            row["kernels"][kernel] += ms
        else:
            row["fwd"] += ms
    return table


def torch_breakdown(spec, tensors, loss: str, repeat: int):
    """{forward op type: {"fwd": ms, "bwd": ms}} per step, from torch's profiler."""
    torch_backward(spec, tensors, loss)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            torch_backward(spec, tensors, loss)
    table: dict[str, dict] = collections.defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0})
    for event in prof.events():
        name = event.name
        if name.startswith(BACKWARD_PREFIX):
            function = name[len(BACKWARD_PREFIX):]
            table[TORCH_TO_ONNX.get(function, f"(other) {function}")]["bwd"] += event.cpu_time_total
        elif event.cpu_parent is None and name.startswith("aten::"):
            table[TORCH_TO_ONNX.get(name, f"(other) {name}")]["fwd"] += event.cpu_time_total
    for row in table.values():
        row["fwd"] /= repeat * 1e3
        row["bwd"] /= repeat * 1e3
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--loss", help="which named loss to differentiate (default: the first)")
    parser.add_argument("--repeat", type=int, default=5, help="profiled steps per side")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    spec = load_spec(MODELS[args.model][0])
    graph = lg.export(spec)
    spec.model.train(spec.train)
    loss = args.loss or graph.meta.losses[0]
    if loss not in graph.meta.losses:
        parser.error(f"--loss must be one of {', '.join(graph.meta.losses)}")
    inputs = make_inputs(spec.inputs, 0)
    model, outputs = backward_step(graph, loss, inputs)
    ours = ort_breakdown(model, outputs, {**inputs, **graph.param_values()}, args.repeat)
    theirs = torch_breakdown(spec, {k: torch.from_numpy(v) for k, v in inputs.items()}, loss, args.repeat)
    print(f"{args.model}, {loss}: ms per step under each side's profiler ({args.repeat} steps)")
    print(f"{'forward op':26s} {'ORT fwd':>8s} {'torch fwd':>9s} {'ORT bwd':>8s} {'torch bwd':>9s}  ORT backward kernels")
    keys = sorted(set(ours) | set(theirs), key=lambda k: -(ours[k]["fwd"] + ours[k]["bwd"] + theirs[k]["fwd"] + theirs[k]["bwd"]))
    totals = [0.0] * 4
    for key in keys:
        row = [ours[key]["fwd"], theirs[key]["fwd"], ours[key]["bwd"], theirs[key]["bwd"]]
        if max(row) < 0.05:
            continue
        totals = [t + v for t, v in zip(totals, row)]
        kernels = ", ".join(f"{k} {ms:.1f}" for k, ms in ours[key]["kernels"].most_common(4) if ms >= 0.05)
        print(f"{key[:26]:26s} {row[0]:8.1f} {row[1]:9.1f} {row[2]:8.1f} {row[3]:9.1f}  {kernels}")
    print(f"{'total':26s} {totals[0]:8.1f} {totals[1]:9.1f} {totals[2]:8.1f} {totals[3]:9.1f}")


if __name__ == "__main__":
    main()
