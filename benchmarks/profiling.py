"""ONNX Runtime's per-node kernel times, for the benchmarks that compare graphs node by node."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def kernel_times(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], repeat: int
) -> tuple[list[list[tuple[str, str, float]]], list[np.ndarray]]:
    """Run ``model`` (its graph inputs taken from ``feeds``) once to warm up and ``repeat`` times
    more under ONNX Runtime's profiler, optimized as lossgraph runs it. Returns, per run (the
    warm-up first), every node kernel's (node name, op, seconds); and the last run's outputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {i.name: feeds[i.name] for i in session.get_inputs()}
        for _ in range(repeat + 1):
            values = session.run(list(outputs), feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    runs: list[list[tuple[str, str, float]]] = [[] for _ in starts]
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            run = sum(start <= event["ts"] for start in starts) - 1
            node = event["name"][: -len("_kernel_time")]
            runs[run].append((node, event["args"]["op_name"], event["dur"] * 1e-6))
    return runs, values
