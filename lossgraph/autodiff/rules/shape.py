"""Ops that move or reshape data without arithmetic."""

from __future__ import annotations

import numpy as np

from lossgraph.autodiff.registry import grad_rule, non_differentiable

non_differentiable(
    "Shape", "Size", "ConstantOfShape", "Range", "NonZero", "OneHot", "EyeLike", "RandomUniform",
    "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Bernoulli", "Multinomial",
    "Constant",
)


def _back_to_input_shape(ctx, dys):
    x = ctx.inputs[0]
    return [ctx.reshape(dys[0], ctx.shape(x))] + [None] * (len(ctx.inputs) - 1)


for _op in ("Reshape", "Squeeze", "Unsqueeze"):
    grad_rule(_op, nondiff=(1,))(_back_to_input_shape)
grad_rule("Flatten")(_back_to_input_shape)


@grad_rule("Transpose")
def transpose_grad(ctx, dys):
    x = ctx.inputs[0]
    perm = ctx.attr("perm") or list(range(ctx.rank(x)))[::-1]
    return [ctx.transpose(dys[0], np.argsort(perm).tolist())]


@grad_rule("SpaceToDepth")
def space_to_depth_grad(ctx, dys):
    # DepthToSpace in DCR mode is SpaceToDepth's exact inverse (ONNX defines them as a pair)
    return [ctx.op("DepthToSpace", dys[0], blocksize=ctx.attr("blocksize"), mode="DCR")]


@grad_rule("DepthToSpace")
def depth_to_space_grad(ctx, dys):
    block = ctx.attr("blocksize")
    if ctx.attr("mode", "DCR") == "DCR":
        return [ctx.op("SpaceToDepth", dys[0], blocksize=block)]
    # CRD: y[n, c, h*b + i, w*b + j] = x[n, (c*b + i)*b + j, h, w]
    n, channels, height, width = ctx.shape(ctx.inputs[0])
    blocks = ctx.reshape(dys[0], [n, channels // (block * block), height, block, width, block])
    return [ctx.reshape(ctx.transpose(blocks, [0, 1, 3, 5, 2, 4]), [n, channels, height, width])]


@grad_rule("Expand", nondiff=(1,), broadcasting=True)
def expand_grad(ctx, dys):
    return [dys[0], None]


@grad_rule("Concat")
def concat_grad(ctx, dys):
    y = ctx.outputs[0]
    axis = ctx.attr("axis") % ctx.rank(y)
    sizes = [ctx.shape(x)[axis] for x in ctx.inputs]
    if len(ctx.inputs) == 1:
        return [dys[0]]
    parts = ctx.op("Split", dys[0], ctx.ints(sizes), outputs=len(sizes), axis=axis)
    return [part if ctx.wants(i) else None for i, part in enumerate(parts)]


@grad_rule("Split", nondiff=(1,))
def split_grad(ctx, dys):
    x = ctx.inputs[0]
    axis = ctx.attr("axis", 0) % ctx.rank(x)
    # an output nobody used has a zero gradient, and Concat needs it materialized
    parts = [
        dy if dy is not None else ctx.zeros(ctx.shape(out), x)
        for dy, out in zip(dys, ctx.outputs)
    ]
    return [ctx.op("Concat", *parts, axis=axis), None]


def _slice_params(ctx):
    """(starts, ends, axes, steps) of a Slice node, all normalized against the input shape."""
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    values = [ctx.const_value(ctx.input(i)) for i in range(1, 5)]
    for index, value in enumerate(values[:2]):
        if value is None:
            raise_computed(ctx, ("starts", "ends")[index])
    starts, ends = (np.asarray(v, np.int64).reshape(-1) for v in values[:2])
    axes = (
        np.asarray(values[2], np.int64).reshape(-1)
        if values[2] is not None
        else np.arange(len(starts))
    )
    steps = (
        np.asarray(values[3], np.int64).reshape(-1) if values[3] is not None else np.ones_like(starts)
    )
    axes = [int(a) % len(shape) for a in axes]
    return starts.tolist(), ends.tolist(), axes, steps.tolist()


def raise_computed(ctx, what: str) -> None:
    from lossgraph.errors import UnsupportedOpError

    raise UnsupportedOpError(
        f"{ctx.node.op_type} node {ctx.node.name!r} takes computed {what}; lossgraph "
        f"differentiates it only for constant {what}."
    )


@grad_rule("Slice", nondiff=(1, 2, 3, 4))
def slice_grad(ctx, dys):
    """Unit steps: pad the gradient back with zeros. Other steps: scatter into zeros through
    the index map of the slice (computed once, statically)."""
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    starts, ends, axes, steps = _slice_params(ctx)
    selections = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        selections[axis] = slice(start, end, step)
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)[tuple(selections)]
    if all(step == 1 for step in steps):
        before = [0] * len(shape)
        after = [0] * len(shape)
        for axis, sel in enumerate(selections):
            begin, stop, _ = sel.indices(shape[axis])
            before[axis] = begin
            after[axis] = shape[axis] - max(stop, begin)
        return [ctx.op("Pad", dys[0], ctx.ints(before + after), mode="constant")] + [None] * 4
    return [scatter_to(ctx, dys[0], index, shape, x)] + [None] * 4


def scatter_to(ctx, dy, index: np.ndarray, shape, like: str) -> str:
    """Sum ``dy`` (whose element ``k`` came from flat input position ``index[k]``) into zeros of
    ``shape``: the gradient of any op that only moves data."""
    size = int(np.prod(shape))
    flat_dy = ctx.reshape(dy, [-1])
    zeros = ctx.zeros([size], like)
    scattered = ctx.op(
        "ScatterElements", zeros, ctx.const(index.reshape(-1)), flat_dy, axis=0, reduction="add"
    )
    return ctx.reshape(scattered, shape)


@grad_rule("Trilu", nondiff=(1,))
def trilu_grad(ctx, dys):
    """triu/tril keeps a triangle: the gradient is the same triangle of dy."""
    upper = int(ctx.attr("upper", 1))
    return [ctx.op("Trilu", dys[0], ctx.input(1), upper=upper), None]


@grad_rule("Tile", nondiff=(1,))
def tile_grad(ctx, dys):
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    repeats = ctx.const_value(ctx.inputs[1])
    if repeats is None:
        raise_computed(ctx, "repeats")
    interleaved = []
    for repeat, dim in zip(np.asarray(repeats).reshape(-1).tolist(), shape):
        interleaved += [int(repeat), dim]
    grouped = ctx.reshape(dys[0], interleaved)
    summed = ctx.reduce_sum(grouped, list(range(0, 2 * len(shape), 2)), keepdims=False)
    return [ctx.reshape(summed, shape), None]


@grad_rule("Pad", nondiff=(1, 2, 3))
def pad_grad(ctx, dys):
    """Constant padding: slice the gradient back out. Reflect/edge: scatter through the index
    map of the padding (padded positions that copy an input element send it their gradient)."""
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    rank = len(shape)
    pads = ctx.const_value(ctx.input(1))
    if pads is None:
        raise_computed(ctx, "pads")
    pads = np.asarray(pads, np.int64).reshape(-1).tolist()
    axes_value = ctx.const_value(ctx.input(3))
    axes = (
        [int(a) % rank for a in np.asarray(axes_value).reshape(-1)]
        if axes_value is not None
        else list(range(rank))
    )
    before = [0] * rank
    after = [0] * rank
    for k, axis in enumerate(axes):
        before[axis] = pads[k]
        after[axis] = pads[k + len(axes)]
    mode = ctx.attr("mode", "constant")
    if mode == "constant" and min(before + after) >= 0:
        ends = [before[i] + shape[i] for i in range(rank)]
        dx = ctx.op("Slice", dys[0], ctx.ints(before), ctx.ints(ends), ctx.ints(range(rank)))
        return [dx, None, None, None]
    # index map: pad (np.pad spells the modes as ONNX does) the positions 1..n, 0 = constant
    index = np.arange(1, int(np.prod(shape)) + 1, dtype=np.int64).reshape(shape)
    grow = [(max(b, 0), max(a, 0)) for b, a in zip(before, after)]
    index = np.pad(index, grow, mode=mode) if mode != "constant" else np.pad(index, grow)
    crop = tuple(
        slice(max(-b, 0), index.shape[i] - max(-a, 0)) for i, (b, a) in enumerate(zip(before, after))
    )
    index = index[crop]
    kept = index > 0
    dy_kept = ctx.where(ctx.const(kept.reshape(-1)), ctx.reshape(dys[0], [-1]), ctx.scalar(0.0, x))
    return [scatter_to(ctx, dy_kept, np.where(kept, index - 1, 0), shape, x), None, None, None]
