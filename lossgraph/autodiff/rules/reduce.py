"""Reductions. ReduceMax/ReduceMin split the gradient evenly between tied maxima (PyTorch's
amax/amin); ReduceL2 has gradient 0 at a zero norm (PyTorch's norm)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from lossgraph.autodiff.registry import grad_rule, non_differentiable
from lossgraph.graph import TIE_KEY, node_meta

non_differentiable("ArgMax", "ArgMin")


def _reduction(ctx):
    """(axes normalized to non-negative, keepdims shape of the output) of a reduce node."""
    x = ctx.inputs[0]
    rank = ctx.rank(x)
    axes_input = 1 if (ctx.node.op_type == "ReduceSum" and ctx.opset >= 13) or ctx.opset >= 18 else None
    axes = ctx.axes(axes_input) if axes_input is not None else ctx.axes(99)
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return [], ctx.shape(x)
        axes = list(range(rank))
    axes = sorted(a % rank for a in axes)
    kept = tuple(1 if i in axes else d for i, d in enumerate(ctx.shape(x)))
    return axes, kept


def _spread(ctx, dy):
    """dy reshaped to the kept-dims shape and broadcast to the input's shape."""
    axes, kept = _reduction(ctx)
    return ctx.expand(ctx.reshape(dy, kept), ctx.shape(ctx.inputs[0])), axes, kept


def _keep(ctx, value):
    """A reduce output in its kept-dims shape (for broadcasting against the input)."""
    _, kept = _reduction(ctx)
    return ctx.reshape(value, kept)


@grad_rule("ReduceSum", nondiff=(1,))
def reduce_sum_grad(ctx, dys):
    return [_spread(ctx, dys[0])[0]]


@grad_rule("ReduceMean", nondiff=(1,))
def reduce_mean_grad(ctx, dys):
    spread, axes, _ = _spread(ctx, dys[0])
    count = int(np.prod([ctx.shape(ctx.inputs[0])[a] for a in axes])) if axes else 1
    return [ctx.div(spread, ctx.scalar(float(count), ctx.inputs[0]))]


def _extremum_grad(ctx, dys):
    """Tied extrema share the gradient evenly (amax, Paddle's max); where the node is marked
    ``one`` (torch.max(x, dim)), the first tied element along the axis takes it whole."""
    x = ctx.inputs[0]
    spread, axes, _ = _spread(ctx, dys[0])
    tied = ctx.op("CastLike", ctx.op("Equal", x, _keep(ctx, ctx.outputs[0])), x)
    if node_meta(ctx.node, TIE_KEY) == "one" and len(axes) == 1:
        axis = ctx.op("Constant", value=numpy_helper.from_array(np.array(axes[0], np.int64)))
        seen = ctx.op("CumSum", tied, axis)  # 1 at the first tie, 2 at the second, ...
        first = ctx.op("CastLike", ctx.op("Equal", seen, ctx.scalar(1.0, x)), x)
        return [ctx.mul(spread, ctx.mul(tied, first))]
    count = ctx.reduce_sum(tied, axes, keepdims=True)
    return [ctx.div(ctx.mul(spread, tied), count)]


grad_rule("ReduceMax", nondiff=(1,))(_extremum_grad)
grad_rule("ReduceMin", nondiff=(1,))(_extremum_grad)


@grad_rule("CumSum", nondiff=(1,))
def cum_sum_grad(ctx, dys):
    """The same running sum taken the other way along the axis (exclusive stays exclusive)."""
    axis = ctx.inputs[1]
    return [ctx.op("CumSum", dys[0], axis, exclusive=ctx.attr("exclusive", 0),
                   reverse=1 - ctx.attr("reverse", 0)), None]


@grad_rule("ReduceL2", nondiff=(1,))
def reduce_l2_grad(ctx, dys):
    x = ctx.inputs[0]
    spread, _, _ = _spread(ctx, dys[0])
    norm = _keep(ctx, ctx.outputs[0])
    zero = ctx.scalar(0.0, x)
    safe = ctx.where(ctx.op("Equal", norm, zero), ctx.scalar(1.0, x), norm)
    ratio = ctx.where(ctx.op("Equal", norm, zero), zero, ctx.div(x, safe))
    return [ctx.mul(spread, ratio)]


@grad_rule("ReduceL1", nondiff=(1,))
def reduce_l1_grad(ctx, dys):
    spread, _, _ = _spread(ctx, dys[0])
    return [ctx.mul(spread, ctx.op("Sign", ctx.inputs[0]))]


@grad_rule("ReduceSumSquare", nondiff=(1,))
def reduce_sum_square_grad(ctx, dys):
    x = ctx.inputs[0]
    spread, _, _ = _spread(ctx, dys[0])
    return [ctx.mul(spread, ctx.mul(ctx.scalar(2.0, x), x))]


@grad_rule("ReduceLogSumExp", nondiff=(1,))
def reduce_log_sum_exp_grad(ctx, dys):
    x = ctx.inputs[0]
    spread, _, _ = _spread(ctx, dys[0])
    return [ctx.mul(spread, ctx.op("Exp", ctx.sub(x, _keep(ctx, ctx.outputs[0]))))]


@grad_rule("ReduceProd", nondiff=(1,))
def reduce_prod_grad(ctx, dys):
    """y / x where x != 0; elements that are zero get the product of the others (computed with
    the zeros replaced by one), as PyTorch does for a single zero."""
    x = ctx.inputs[0]
    spread, axes, _ = _spread(ctx, dys[0])
    zero = ctx.scalar(0.0, x)
    is_zero = ctx.op("Equal", x, zero)
    ones_for_zeros = ctx.where(is_zero, ctx.scalar(1.0, x), x)
    others = ctx.reduce("ReduceProd", ones_for_zeros, axes, keepdims=True)
    zeros = ctx.reduce_sum(ctx.op("CastLike", is_zero, x), axes, keepdims=True)
    only_one = ctx.op("Equal", zeros, ctx.scalar(1.0, x))
    at_zero = ctx.where(only_one, others, zero)
    elsewhere = ctx.where(ctx.op("Equal", zeros, zero), ctx.div(others, ones_for_zeros), zero)
    return [ctx.mul(spread, ctx.where(is_zero, at_zero, elsewhere))]
