"""Gradient clipping as ONNX graphs, in each framework's own formula.

An optimizer's clipping is a list of stages (``OptimizerInfo.clip``), applied in order to its
gradients after the backward pass and before its update, as the frameworks do: the user's loop
calls a clip function before ``optimizer.step()``; a Paddle optimizer's ``grad_clip`` runs first
thing inside ``step()``, before its regularizers. Each stage is a dict:

==========================  ===========================================================================
``kind``                    what the stage computes
==========================  ===========================================================================
``global_norm``             torch ``clip_grad_norm_`` / Paddle ``clip_grad_norm_``: per-tensor
                            p-norms, their p-norm ``total``, ``coef = max_norm / (total + 1e-6)``
                            clamped at 1, every gradient times ``coef`` (torch divides as
                            ``reciprocal(total + 1e-6) * max_norm``)
``paddle_global_norm``      Paddle ``ClipGradByGlobalNorm``: squared L2 norms summed, square root,
                            ``coef = clip_norm / max(total, clip_norm)``, no epsilon
                            (``auto_skip_clip``: only when ``total > clip_norm``)
``paddle_norm``             Paddle ``ClipGradByNorm``: each gradient on its own, scaled by
                            ``clip_norm / norm`` where its L2 norm exceeds ``clip_norm``
``value``                   torch ``clip_grad_value_`` / Paddle ``clip_grad_value_`` and
                            ``ClipGradByValue``: every element clamped to ``[min, max]``
==========================  ===========================================================================

``norm_type`` is stored as a string (``"2.0"``, ``"inf"``: JSON has no infinity).
``params`` lists the parameters a stage clips (Paddle's ``need_clip=False`` ones and those of
another parameter group are left out; for a global norm they do not count either). A gradient
that is None (torch: the loss does not reach the parameter) counts as zeros and stays None.
Thresholds and the epsilon are float32 in both frameworks' programs, and so they are here (the
float64 re-run rounds them to float32 first, like the optimizers' hyper-parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lossgraph.errors import VerificationError
from lossgraph.optim.graph import DTYPES, UpdateGraph
from lossgraph.runtime.session import OrtRunner

KINDS = ("global_norm", "paddle_global_norm", "paddle_norm", "value")
#: torch's and Paddle's clip_grad_norm_ add this to the total norm before dividing
NORM_EPSILON = 1e-6


def describe_clip(stage: Mapping[str, Any], api: bool = True, epsilon: bool = True) -> str:
    """One stage in words: ``global 2-norm <= 1 (torch.nn.utils.clip_grad_norm_, +1e-6 in the
    divisor)``; without ``api`` and ``epsilon``, what it computes up to the epsilon."""
    kind = stage.get("kind")
    if kind == "value":
        text = f"each element clamped to [{stage['min']:g}, {stage['max']:g}]"
    elif kind == "paddle_norm":
        text = f"each gradient's own L2 norm <= {stage['max_norm']:g}"
    else:
        order = float(stage.get("norm_type", 2.0))
        text = f"global {'inf' if order == float('inf') else f'{order:g}'}-norm <= {stage['max_norm']:g}"
    notes = [stage["api"]] if api and stage.get("api") else []
    if epsilon and kind in ("global_norm", "paddle_global_norm"):
        notes.append("+1e-6 in the divisor" if kind == "global_norm" else "no epsilon")
    return f"{text} ({', '.join(notes)})" if notes else text


class GradientClip:
    """One optimizer's clip stages as one ONNX graph on one ORT session.

    ``apply(grads)`` returns the clipped gradients (None stays None) and what each stage
    measured: ``{"stage <k>": {"total_norm": ..., "coef": ...}}`` (per-tensor and value stages:
    the smallest coefficient, the number of clamped elements)."""

    def __init__(
        self,
        stages: Sequence[Mapping[str, Any]],
        shapes: Mapping[str, Sequence[int]],
        dtype: str = "float32",
        device: str = "cpu",
        hyper_float32: bool = False,
    ) -> None:
        self.stages = [dict(s) for s in stages]
        self.dtype = dtype
        self.np_dtype = DTYPES[dtype][0]
        self.params = list(dict.fromkeys(p for s in self.stages for p in s["params"] if p in shapes))
        self.shapes = {p: list(shapes[p]) for p in self.params}
        graph = UpdateGraph(dtype, "float32" if hyper_float32 or dtype == "float32" else None)
        current = {p: graph.input(f"{p}:grad", self.shapes[p]) for p in self.params}
        self.measures: list[str] = []
        for index, stage in enumerate(self.stages):
            if stage.get("kind") not in KINDS:
                raise VerificationError(f"Unknown gradient clipping {stage.get('kind')!r}; lossgraph knows {', '.join(KINDS)}.")
            members = [p for p in stage["params"] if p in current]
            if members:
                current.update(_build_stage(graph, stage, members, current, f"clip{index}"))
                self.measures.append(f"clip{index}/measure")
                graph.output(f"clip{index}:measure", f"clip{index}/measure", [], f"clip{index}/output")
            else:
                self.measures.append("")
        for p in self.params:
            graph.output(f"{p}:grad:clipped", current[p], self.shapes[p], f"{p}/clip/output")
        self.model = graph.model("gradient_clip")
        # without ONNX Runtime's arena: a clipping reads every gradient,
        # and an arena keeps its peak for the session's life (the update: DiscoGAN, 5 steps, 3.2 -> 2.4 GB)
        self._runner = OrtRunner(self.model, device=device, arena=False) if self.params else None

    def apply(
        self, grads: Mapping[str, np.ndarray | None]
    ) -> tuple[dict[str, np.ndarray | None], dict[str, float]]:
        if self._runner is None:
            return dict(grads), {}
        feeds = {
            f"{p}:grad": (np.zeros(self.shapes[p], self.np_dtype) if grads.get(p) is None
                          else np.asarray(grads[p], self.np_dtype))
            for p in self.params
        }
        out = self._runner.run(feeds)
        clipped = dict(grads)
        for p in self.params:
            if grads.get(p) is not None:
                clipped[p] = out[f"{p}:grad:clipped"]
        measured = {
            describe_clip(stage): float(out[f"clip{k}:measure"])
            for k, stage in enumerate(self.stages) if self.measures[k]
        }
        return clipped, measured


def _build_stage(
    graph: UpdateGraph, stage: Mapping[str, Any], members: list[str], current: Mapping[str, str],
    label: str,
) -> dict[str, str]:
    """The nodes of one stage; returns the clipped gradient of each member. Its ``measure``
    output is the coefficient the gradients were multiplied by (the smallest one of a per-tensor
    stage), or for a value stage the number of elements clamped."""
    kind = stage["kind"]

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        return graph.node(op, inputs, f"{label}/{name}", **attrs)

    if kind == "value":
        low, high = graph.const(stage["min"]), graph.const(stage["max"])
        out, changed = {}, []
        for p in members:
            # torch: clamp_min then clamp_max; Paddle's clip kernel: the same two comparisons
            out[p] = node("Min", [node("Max", [current[p], low], f"{p}/clamp_min"), high], f"{p}/clamp_max")
            differs = node("Cast", [node("Not", [node("Equal", [out[p], current[p]], f"{p}/same")], f"{p}/differs")],
                           f"{p}/count", to=graph.onnx_type)
            changed.append(node("ReduceSum", [differs], f"{p}/clamped", keepdims=0))
        _measure(graph, node, changed, "Sum", label)
        return out
    if kind == "paddle_norm":
        limit = graph.const(stage["max_norm"])
        out, coefs = {}, []
        for p in members:
            norm = node("Sqrt", [node("ReduceSumSquare", [current[p]], f"{p}/squared_norm", keepdims=0)], f"{p}/norm")
            scale = node("Div", [limit, norm], f"{p}/scale")
            within = node("LessOrEqual", [norm, limit], f"{p}/within")
            coef = node("Where", [within, graph.const(1.0), scale], f"{p}/coef")
            coefs.append(coef)
            out[p] = node("Mul", [current[p], coef], f"{p}/clipped")
        _measure(graph, node, coefs, "Min", label)
        return out
    total = _total_norm(graph, node, stage, members, current)
    limit = graph.const(stage["max_norm"])
    if kind == "global_norm":
        shifted = node("Add", [total, graph.const(stage.get("eps", NORM_EPSILON))], "total_norm/eps")
        if stage.get("framework") == "torch":  # python float / tensor: reciprocal, then times
            ratio = node("Mul", [node("Reciprocal", [shifted], "reciprocal"), limit], "ratio")
        else:
            ratio = node("Div", [limit, shifted], "ratio")
        coef = node("Min", [ratio, graph.const(1.0)], "coef")
    elif stage.get("auto_skip_clip"):
        over = node("Greater", [total, limit], "over")
        coef = node("Where", [over, node("Div", [limit, total], "ratio"), graph.const(1.0)], "coef")
    else:
        coef = node("Div", [limit, node("Max", [total, limit], "max_norm")], "coef")
    graph.nodes.append(_identity(coef, f"{label}/measure"))
    return {p: node("Mul", [current[p], coef], f"{p}/clipped") for p in members}


def _total_norm(graph: UpdateGraph, node: Any, stage: Mapping[str, Any], members: list[str],
                current: Mapping[str, str]) -> str:
    """The global norm of a stage's gradients, reduced the framework's way."""
    if stage["kind"] == "paddle_global_norm":  # squared_l2_norm per tensor, stacked, summed
        squares = [node("ReduceSumSquare", [current[p]], f"{p}/squared_norm", keepdims=1) for p in members]
        flat = [node("Reshape", [s, graph.const_ints([1])], f"{p}/squared_norm_1") for s, p in zip(squares, members)]
        stacked = node("Concat", flat, "squared_norms", axis=0) if len(flat) > 1 else flat[0]
        return node("Sqrt", [node("ReduceSum", [stacked], "sum_squares", keepdims=0)], "total_norm")
    order = float(stage.get("norm_type", 2.0))
    norms = [_norm(graph, node, current[p], order, f"{p}/norm") for p in members]
    flat = [node("Reshape", [n, graph.const_ints([1])], f"{p}/norm_1") for n, p in zip(norms, members)]
    stacked = node("Concat", flat, "norms", axis=0) if len(flat) > 1 else flat[0]
    return _norm(graph, node, stacked, order, "total_norm")


def _norm(graph: UpdateGraph, node: Any, value: str, order: float, name: str) -> str:
    """The p-norm of all of ``value`` (``torch.linalg.vector_norm(value, order)``), a scalar."""
    if order == 2.0:
        return node("ReduceL2", [value], name, keepdims=0)
    if order == 1.0:
        return node("ReduceL1", [value], name, keepdims=0)
    if order == float("inf"):
        return node("ReduceMax", [node("Abs", [value], f"{name}/abs")], name, keepdims=0)
    if order == 0.0:
        nonzero = node("Cast", [node("Not", [node("Equal", [value, graph.const(0.0)], f"{name}/zero")],
                                     f"{name}/nonzero")], f"{name}/count", to=graph.onnx_type)
        return node("ReduceSum", [nonzero], name, keepdims=0)
    powered = node("Pow", [node("Abs", [value], f"{name}/abs"), graph.const(order)], f"{name}/pow")
    summed = node("ReduceSum", [powered], f"{name}/sum", keepdims=0)
    return node("Pow", [summed, graph.const(1.0 / order)], name)


def _measure(graph: UpdateGraph, node: Any, values: list[str], how: str, label: str) -> None:
    """One scalar summarizing a stage: the ``how`` (Min, Sum) of ``values``."""
    flat = [node("Reshape", [v, graph.const_ints([1])], f"measure/{k}") for k, v in enumerate(values)]
    joined = node("Concat", flat, "measure/all", axis=0) if len(flat) > 1 else flat[0]
    reduce = {"Min": "ReduceMin", "Sum": "ReduceSum"}[how]
    graph.nodes.append(_identity(node(reduce, [joined], "measure/reduced", keepdims=0), f"{label}/measure"))


def _identity(source: str, target: str) -> Any:
    from onnx import helper

    return helper.make_node("Identity", [source], [target], name=target)
