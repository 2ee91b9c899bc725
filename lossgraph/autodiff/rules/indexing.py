"""Gathers and scatters. A gather's gradient scatter-adds into zeros (repeated indices
accumulate); a scatter's gradient gathers. Each uses only ops that have rules here."""

from __future__ import annotations

import numpy as np

from lossgraph.autodiff.registry import grad_rule
from lossgraph.errors import UnsupportedOpError
from lossgraph.graph import NO_GRAD_REWRITE_KEY, PADDING_IDX_KEY, node_meta


def _reduction(ctx) -> str:
    return ctx.attr("reduction", "none")


@grad_rule("Gather", nondiff=(1,))
def gather_grad(ctx, dys):
    data, indices = ctx.inputs
    shape = ctx.shape(data)
    rank = len(shape)
    axis = ctx.attr("axis", 0) % rank
    index_shape = ctx.shape(indices)
    k = len(index_shape)
    count = 1
    for dim in index_shape:
        count *= dim
    rest = [d for i, d in enumerate(shape) if i != axis]
    # dy: data[:axis] + indices + data[axis+1:]  ->  indices + data[:axis] + data[axis+1:]
    perm = list(range(axis, axis + k)) + list(range(axis)) + list(range(axis + k, k + rank - 1))
    updates = ctx.reshape(ctx.transpose(dys[0], perm), [count, *rest])
    idx = ctx.reshape(indices, [count, 1])
    if ctx.elem_type(indices) != 7:  # ScatterND takes int64
        idx = ctx.cast(idx, 7)
    padding = node_meta(ctx.node, PADDING_IDX_KEY)
    if padding is not None and axis == 0:  # an embedding's padding row learns nothing
        skip = ctx.op("Equal", ctx.reshape(idx, [count] + [1] * len(rest)), ctx.const(np.int64(padding)))
        updates = ctx.where(skip, ctx.scalar(0.0, data), updates)
    negative = ctx.op("Less", idx, ctx.const(np.int64(0)))
    idx = ctx.where(negative, ctx.add(idx, ctx.const(np.int64(shape[axis]))), idx)
    zeros = ctx.zeros([shape[axis], *rest], data)
    scattered = ctx.op("ScatterND", zeros, idx, updates, reduction="add")
    back = list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank))
    return [ctx.transpose(scattered, back), None]


@grad_rule("GatherElements", nondiff=(1,))
def gather_elements_grad(ctx, dys):
    data, indices = ctx.inputs
    zeros = ctx.zeros(ctx.shape(data), data)
    axis = ctx.attr("axis", 0)
    return [ctx.op("ScatterElements", zeros, indices, dys[0], axis=axis, reduction="add"), None]


@grad_rule("GatherND", nondiff=(1,))
def gather_nd_grad(ctx, dys):
    data, indices = ctx.inputs
    if ctx.attr("batch_dims", 0):
        raise UnsupportedOpError(
            f"No gradient for GatherND with batch_dims > 0 (node {ctx.node.name!r})."
        )
    zeros = ctx.zeros(ctx.shape(data), data)
    return [ctx.op("ScatterND", zeros, indices, dys[0], reduction="add"), None]


def _scatter_grad(ctx, dys, gather_op: str, **attrs):
    data, indices, updates = ctx.inputs
    reduction = _reduction(ctx)
    if reduction not in ("none", "add"):
        raise UnsupportedOpError(
            f"No gradient for {ctx.node.op_type} with reduction {reduction!r} "
            f"(node {ctx.node.name!r}); 'none' and 'add' are supported."
        )
    (dy,) = dys
    d_data = d_updates = None
    if ctx.wants(0):
        if reduction == "add":
            d_data = dy
        else:  # overwritten positions get no gradient
            ones = ctx.expand(ctx.scalar(1.0, data), ctx.shape(data))
            kept = ctx.op(ctx.node.op_type, ones, indices, ctx.zeros(ctx.shape(updates), data), **attrs)
            d_data = ctx.mul(dy, kept)
    if ctx.wants(2):
        d_updates = ctx.op(gather_op, dy, indices, **attrs)
    return [d_data, None, d_updates]


@grad_rule("ScatterElements", nondiff=(1,))
def scatter_elements_grad(ctx, dys):
    return _scatter_grad(ctx, dys, "GatherElements", axis=ctx.attr("axis", 0))


@grad_rule("ScatterND", nondiff=(1,))
def scatter_nd_grad(ctx, dys):
    if node_meta(ctx.node, NO_GRAD_REWRITE_KEY) is not None:
        return [dys[0], None, None]  # an in-place rewrite under no_grad (NO_GRAD_REWRITE_KEY)
    return _scatter_grad(ctx, dys, "GatherND")


@grad_rule("TopK", nondiff=(1,))
def top_k_grad(ctx, dys):
    x = ctx.inputs[0]
    if dys[0] is None:
        return [None, None]
    zeros = ctx.zeros(ctx.shape(x), x)
    axis = ctx.attr("axis", -1)
    return [
        ctx.op("ScatterElements", zeros, ctx.outputs[1], dys[0], axis=axis, reduction="add"),
        None,
    ]
