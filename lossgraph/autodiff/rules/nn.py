"""Matrix products, convolutions, pooling, normalization, softmax and dropout.

Convolution weight gradients contract the output gradient with the K kernel windows of the
input (K = kernel size) in one GEMM; the windows are written by a grouped one-hot Conv over the
batch stacked along the first spatial axis, or cut by Slices (any group, stride, dilation and
padding). Large strided kernels correlate x with dy in one Conv instead. Every formulation is
built only from ops that are themselves differentiable.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from lossgraph.autodiff.registry import grad_rule
from lossgraph.errors import UnsupportedOpError
from lossgraph.runtime.resize import resize_matrices

# --- matrix products -----------------------------------------------------------------------


def _swap_last(ctx, x: str, rank: int) -> str:
    return ctx.transpose(x, list(range(rank - 2)) + [rank - 1, rank - 2])


@grad_rule("MatMul")
def matmul_grad(ctx, dys):
    a, b = ctx.inputs
    a_shape, b_shape = list(ctx.shape(a)), list(ctx.shape(b))
    a2_shape = a_shape if len(a_shape) >= 2 else [1, *a_shape]
    b2_shape = b_shape if len(b_shape) >= 2 else [*b_shape, 1]
    batch = list(np.broadcast_shapes(tuple(a2_shape[:-2]), tuple(b2_shape[:-2])))
    rank = len(batch) + 2
    dy = ctx.reshape(dys[0], batch + [a2_shape[-2], b2_shape[-1]])
    a2 = a if len(a_shape) >= 2 else ctx.reshape(a, a2_shape)
    b2 = b if len(b_shape) >= 2 else ctx.reshape(b, b2_shape)
    da = db = None
    if ctx.wants(0):
        full = ctx.op("MatMul", dy, _swap_last(ctx, b2, len(b2_shape)))
        da = ctx.reshape(ctx.unbroadcast(full, batch + a2_shape[-2:], a2_shape), a_shape)
    if ctx.wants(1):
        full = ctx.op("MatMul", _swap_last(ctx, a2, len(a2_shape)), dy)
        db = ctx.reshape(ctx.unbroadcast(full, batch + b2_shape[-2:], b2_shape), b_shape)
    del rank
    return [da, db]


@grad_rule("Einsum")
def einsum_grad(ctx, dys):
    """The gradient of operand i is an Einsum of dy with the other operands, written to i's
    subscripts; letters only operand i has (summed away in the forward) are broadcast back.
    Ellipses become letters of their own (operands whose ellipsis dims differ in size, and
    repeated letters within one operand -- diagonals -- are refused by name)."""
    terms, out = _einsum_terms(ctx)
    grads = []
    for i, term in enumerate(terms):
        if not ctx.wants(i):
            grads.append(None)
            continue
        if len(set(term)) != len(term):
            raise UnsupportedOpError(
                f"Einsum node {ctx.node.name!r} ({ctx.attr('equation')!r}): operand {i} repeats "
                f"a subscript (a diagonal); lossgraph differentiates Einsums without one."
            )
        others = [t for j, t in enumerate(terms) if j != i]
        available = set(out) | set("".join(others))
        kept = "".join(c for c in term if c in available)
        operands = [ctx.inputs[j] for j in range(len(terms)) if j != i]
        grad = ctx.op("Einsum", dys[0], *operands, equation=",".join([out, *others]) + "->" + kept)
        if kept != term:
            missing = [k for k, c in enumerate(term) if c not in available]
            grad = ctx.op("Unsqueeze", grad, ctx.ints(missing))
            grad = ctx.expand(grad, list(ctx.shape(ctx.inputs[i])))
        grads.append(grad)
    return grads


def _einsum_terms(ctx) -> tuple[list[str], str]:
    """The operands' subscripts and the output's, explicit, ellipses spelled out as letters
    (the implicit output: every letter used once, in alphabetical order, after the ellipsis)."""
    equation = ctx.attr("equation").replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    shapes = [ctx.shape(x) for x in ctx.inputs]
    dots = [len(shape) - (len(t) - 3) if "..." in t else 0 for t, shape in zip(terms, shapes)]
    width = max(dots, default=0)
    letters = "".join(free[:width])
    sizes: dict[str, int] = {}
    for t, shape, n in zip(terms, shapes, dots):
        if "..." not in t:
            continue
        start = t.index("...")
        for letter, size in zip(letters[width - n:], shape[start:start + n]):
            if sizes.setdefault(letter, size) != size:
                raise UnsupportedOpError(
                    f"Einsum node {ctx.node.name!r} ({equation!r}) broadcasts its ellipsis "
                    f"dimensions; lossgraph differentiates Einsums whose operands agree there."
                )
    terms = [t.replace("...", letters[width - n:]) for t, n in zip(terms, dots)]
    for t, shape in zip(terms, shapes):
        for letter, size in zip(t, shape):
            if sizes.setdefault(letter, size) != size:
                raise UnsupportedOpError(
                    f"Einsum node {ctx.node.name!r} ({equation!r}) broadcasts subscript "
                    f"{letter!r} (sizes {sizes[letter]} and {size}); lossgraph differentiates "
                    f"Einsums whose operands agree on every subscript."
                )
    if arrow:
        out = out.replace("...", letters)
    else:
        once = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in letters)
        out = letters + "".join(once)
    return terms, out


@grad_rule("Gemm")
def gemm_grad(ctx, dys):
    (dy,) = dys
    a, b = ctx.inputs[:2]
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    da = db = dc = None
    if ctx.wants(0):
        if trans_a:  # dA = (dy B'^T)^T = B' dy^T
            da = ctx.op("Gemm", b, dy, alpha=alpha, transA=trans_b, transB=1)
        else:
            da = ctx.op("Gemm", dy, b, alpha=alpha, transB=1 - trans_b)
    if ctx.wants(1):
        if trans_b:  # dB = (A'^T dy)^T = dy^T A'
            db = ctx.op("Gemm", dy, a, alpha=alpha, transA=1, transB=trans_a)
        else:
            db = ctx.op("Gemm", a, dy, alpha=alpha, transA=1 - trans_a)
    c = ctx.input(2)
    if c is not None and ctx.wants(2):
        scaled = dy if beta == 1.0 else ctx.mul(dy, ctx.scalar(beta, dy_like(ctx)))
        dc = ctx.unbroadcast(scaled, ctx.shape(ctx.outputs[0]), ctx.shape(c))
    return [da, db, dc]


def dy_like(ctx) -> str:
    return ctx.outputs[0]


# --- convolution geometry ---------------------------------------------------------------


def _auto_pad(ctx) -> str:
    return ctx.attr("auto_pad", "NOTSET")


def _conv_geometry(ctx, spatial_in, kernel):
    """(strides, dilations, pads_begin, pads_end) of a Conv/pool with auto_pad resolved."""
    n = len(spatial_in)
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    mode = _auto_pad(ctx)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial_in, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else large)
            end.append(large if mode == "SAME_UPPER" else small)
        return strides, dilations, begin, end
    if mode == "VALID":
        return strides, dilations, [0] * n, [0] * n
    pads = list(ctx.attr("pads") or [0] * (2 * n))
    return strides, dilations, pads[:n], pads[n:]


def unfold(
    ctx, x: str, x_shape, kernel, strides, dilations, begin, end, out_spatial, axis: int = 2
) -> str:
    """The K = prod(kernel) strided windows of ``x`` (shape ``x_shape``, padded by begin/end)
    stacked at ``axis``: ``[N, C, K, *out_spatial]`` by default, kernel offsets in row-major
    order. The windows are concatenated along ``axis`` as they are and reshaped once: the
    memory layout is that of stacking them."""
    n = len(kernel)
    if n == 2 and strides[0] == strides[1] > 1:
        slices = _strided_windows_2d(ctx, x, x_shape, kernel, strides[0], dilations, begin, end, out_spatial)
    else:
        if any(begin) or any(end):
            pads = [0, 0, *begin, 0, 0, *end]
            x = ctx.op("Pad", x, ctx.ints(pads), mode="constant")
        axes = list(range(2, 2 + n))
        slices = []
        for offset in itertools.product(*[range(k) for k in kernel]):
            starts = [o * d for o, d in zip(offset, dilations)]
            ends = [st + s * (o_sz - 1) + 1 for st, s, o_sz in zip(starts, strides, out_spatial)]
            slices.append(
                ctx.op("Slice", x, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), ctx.ints(strides))
            )
    stacked = slices[0] if len(slices) == 1 else ctx.op("Concat", *slices, axis=axis)
    shape = [*x_shape[:2], *out_spatial]
    shape.insert(axis, len(slices))
    return ctx.reshape(stacked, shape)


def _strided_windows_2d(ctx, x, x_shape, kernel, stride, dilations, begin, end, out_spatial):
    """The windows of a 2-D convolution with stride s > 1 in both axes, cut with unit steps
    from SpaceToDepth(x): padded to a multiple of s, x's channel block b*s + c (b, c the row
    and column phase) holds the pixels at (s*i + b, s*j + c). ONNX Runtime copies a slice with
    steps element by element; measured 1.5-2.6x faster (benchmarks/conv_weight_grad.py)."""
    channels = x_shape[1]
    padded = [-(-(size + b + e) // stride) * stride for size, b, e in zip(x_shape[2:], begin, end)]
    tail = [p - size - b for p, size, b in zip(padded, x_shape[2:], begin)]
    if any(begin) or any(tail):
        x = ctx.op("Pad", x, ctx.ints([0, 0, *begin, 0, 0, *tail]), mode="constant")
    blocks = ctx.op("SpaceToDepth", x, blocksize=stride)
    slices = []
    for offset in itertools.product(*[range(k) for k in kernel]):
        reach = [o * d for o, d in zip(offset, dilations)]
        phase = (reach[0] % stride) * stride + reach[1] % stride
        starts = [phase * channels, *(r // stride for r in reach)]
        ends = [(phase + 1) * channels, *(r // stride + o for r, o in zip(reach, out_spatial))]
        slices.append(ctx.op("Slice", blocks, ctx.ints(starts), ctx.ints(ends), ctx.ints([1, 2, 3])))
    return slices


def _weight_grad(ctx, cols: str, dy: str, n_batch, group, c_in, k_total, c_out, length, w_shape):
    """sum_n dy[n] @ cols[n]^T per group: ``[N,g,Og,L] @ [N,g,L,Cg*K] -> [O, Cg, *kernel]``
    (for a ConvTranspose: x in place of dy, the windows of dy as ``cols``)."""
    cols = ctx.reshape(cols, [n_batch, group, (c_in // group) * k_total, length])
    dy = ctx.reshape(dy, [n_batch, group, c_out // group, length])
    product = ctx.op("MatMul", dy, ctx.transpose(cols, [0, 1, 3, 2]))
    return ctx.reshape(ctx.reduce_sum(product, [0], keepdims=False), w_shape)


def _input_grad_by_conv(ctx, dy, w, w_shape, kernel, dilations, begin, end, group) -> str:
    """dX of a unit-stride Conv as a Conv of dy with the flipped kernel, in/out channels
    exchanged per group (measured faster than ConvTranspose on ONNX Runtime's CPU kernels).

    The flip is a MatMul of the flattened taps with the exchange matrix: exact for finite
    weights (one product by 1, the rest by 0) and 3x faster than a Slice with negative steps,
    which ONNX Runtime copies element by element (a 512x512x3x3 kernel: 2.9 vs 8.0 ms)."""
    o, cg = w_shape[0], w_shape[1]
    og = o // group
    taps = math.prod(kernel)
    grouped = ctx.reshape(w, [group, og, cg, taps])
    swapped = ctx.transpose(grouped, [0, 2, 1, 3])
    if taps > 1:
        exchange = np.eye(taps, dtype=ctx.np_dtype(w))[::-1].copy()
        swapped = ctx.op("MatMul", swapped, ctx.const(exchange))
    weight = ctx.reshape(swapped, [group * cg, og, *kernel])
    pads = [d * (k - 1) - b for d, k, b in zip(dilations, kernel, begin)]
    pads += [d * (k - 1) - e for d, k, e in zip(dilations, kernel, end)]
    return ctx.op("Conv", dy, weight, dilations=dilations, pads=pads, group=group, kernel_shape=kernel)


#: Strided group-1 kernels with at least this many taps (7x7) get dW as one correlation Conv;
#: smaller ones as a GEMM over their windows. ONNX Runtime runs that correlation as one GEMM
#: per input channel whose output width is the tap count, so few taps waste the GEMM: measured
#: (benchmarks/conv_weight_grad.py, 2-D, stride 2) the GEMM is 5-11x faster for 1x1, 1.5-6x for
#: 3x3, 1.3-3.5x for 4x4 and 2-5x for 5x5; at 7x7 the two tie or the Conv is up to 1.2x faster.
CORRELATION_MIN_TAPS = 49


def conv_weight_grad(ctx, x, dy, x_shape, y_shape, w_shape, group, geometry) -> str:
    """dW of a Conv. The formulation is chosen by shape, from measurements on ONNX Runtime's
    CPU kernels (benchmarks/conv_weight_grad.py): unit strides and small strided kernels use
    one large GEMM over the kernel windows of x; larger strided group-1 kernels correlate x^T
    with dy^T in one Conv; grouped ones unfold and MatMul per group."""
    kernel, strides, dilations, begin, end = geometry
    unit = all(s == 1 for s in strides)
    if group == 1 and (unit or math.prod(kernel) < CORRELATION_MIN_TAPS):
        return _weight_grad_by_gemm(ctx, dy, y_shape, x, x_shape, geometry, w_shape)
    if group == 1:
        return _weight_grad_by_conv(ctx, x, dy, kernel, strides, dilations, begin, end)
    cols = unfold(ctx, x, x_shape, kernel, strides, dilations, begin, end, y_shape[2:])
    return _weight_grad(
        ctx, cols, dy, x_shape[0], group, x_shape[1], math.prod(kernel), y_shape[1],
        math.prod(y_shape[2:]), w_shape,
    )


#: The one-hot Conv that writes the windows multiplies each tap by a K x K matrix, so its cost
#: grows as K^2: measured (benchmarks/conv_weight_grad.py) it beats the Slices of unfold for 3x3,
#: ties at 4x4 and 5x5 and loses at 7x7.
EXPANSION_MAX_TAPS = 25


def _weight_grad_by_gemm(ctx, rows, rows_shape, source, source_shape, geometry, w_shape) -> str:
    """A weight gradient as one GEMM: ``rows`` [N, R, *P] against the windows of ``source``
    [N, S, ...] read at the positions P, summed over the batch and the positions:
    rows^T [R, N*P] @ windows(source^T) [S*K, N*P]^T -> [R, S*K] -> ``w_shape``. For a Conv the
    rows are dy and the windows x's; for a ConvTranspose the rows are x and the windows dy's.

    The windows are written by one grouped Conv (:func:`_expanded_windows`) where the geometry
    allows and the kernel has at most EXPANSION_MAX_TAPS taps, else cut by :func:`unfold`; a 1x1
    kernel with unit strides and no padding reads the source as it is."""
    kernel, strides, dilations, begin, end = geometry
    rank = len(rows_shape)
    swap = [1, 0, *range(2, rank)]
    r, s, taps = rows_shape[1], source_shape[1], math.prod(kernel)
    rows = ctx.transpose(rows, swap)
    positions = [rows_shape[0], *rows_shape[2:]]  # the GEMM's inner dimension, N x P
    if taps == 1 and all(st == 1 for st in strides) and not any(begin + end):
        windows = ctx.transpose(source, swap)
    elif (expanded := _expanded_windows(ctx, source, source_shape, rows_shape, geometry)) is not None:
        windows, grid_pads = expanded
        if any(grid_pads):
            rows = ctx.op("Pad", rows, ctx.ints(grid_pads), mode="constant")
            positions[1] += grid_pads[rank + 2]
    else:
        windows = unfold(
            ctx, ctx.transpose(source, swap), [s, rows_shape[0], *source_shape[2:]], kernel,
            strides, dilations, begin, end, rows_shape[2:], axis=1,
        )
    rows = ctx.reshape(rows, [r, -1])
    windows = ctx.reshape(windows, [s * taps, -1])
    return ctx.gemm_nt(rows, windows, r, s * taps, math.prod(positions), w_shape)


def _expanded_windows(ctx, source, source_shape, rows_shape, geometry):
    """The K windows of ``source`` [N, S, H, ...] at the output positions [N, R, P_h, ...] as
    ``[1, S*K, N*period, ...]`` (channel s*K + k: tap k of channel s), written by one Conv; and
    the pads that bring the rows^T [R, N, P_h, ...] to that grid. None where it does not fit
    or the kernel has more than EXPANSION_MAX_TAPS taps.

    The batch is stacked along the first spatial axis, each image followed by z zero rows
    (z >= both pads: the bottom padding of one image and the top padding of the next), z such
    that images start on stride boundaries (period = (H + z) / stride output rows each); a Conv
    with group S and one-hot kernels then copies tap k of every window to its own channel.
    Output rows that straddle two images meet the zero rows of the padded rows^T, so they add
    exact zeros. Measured 1.1-1.6x faster than the Slices and Concat of :func:`unfold` on
    ResNet-18's 3x3 convolutions (benchmarks/conv_weight_grad.py); the GEMM grows by about
    (H + z) / H."""
    kernel, strides, dilations, begin, end = geometry
    n_spatial, rank = len(kernel), 2 + len(kernel)
    n, s = source_shape[0], source_shape[1]
    height, out_height = source_shape[2], rows_shape[2]
    stride, b, e = strides[0], begin[0], end[0]
    reach = dilations[0] * (kernel[0] - 1)
    z = max(b, e, b + e - reach - 1 + stride)  # so that out_height <= period
    z += -(height + z) % stride
    period = (height + z) // stride
    others = [
        (size + bb + ee - d * (k - 1) - 1) // st + 1
        for size, bb, ee, d, k, st in zip(
            source_shape[3:], begin[1:], end[1:], dilations[1:], kernel[1:], strides[1:]
        )
    ]
    taps = math.prod(kernel)
    if taps > EXPANSION_MAX_TAPS or b > reach or out_height > period or others != list(rows_shape[3:]):
        return None
    below = [0] * (2 * rank)
    below[rank + 2] = z
    stacked = ctx.op("Pad", ctx.transpose(source, [1, 0, *range(2, rank)]), ctx.ints(below), mode="constant")
    stacked = ctx.reshape(stacked, [1, s, n * (height + z), *source_shape[3:]])
    one_hot = np.eye(taps, dtype=ctx.np_dtype(ctx.inputs[1])).reshape(taps, 1, *kernel)
    bottom = max(0, reach + 1 - stride - b)  # so that the Conv yields exactly N * period rows
    windows = ctx.op(
        "Conv", stacked, ctx.const(np.tile(one_hot, (s, 1, *[1] * n_spatial))), group=s,
        strides=strides, dilations=dilations, pads=[b, *begin[1:], bottom, *end[1:]],
        kernel_shape=kernel,
    )
    grid_pads = [0] * (2 * rank)
    grid_pads[rank + 2] = period - out_height
    return windows, grid_pads


def _weight_grad_by_conv(ctx, x, dy, kernel, strides, dilations, begin, end) -> str:
    """dW for group 1 as one Conv: correlate x^T [C, N, ...] with dy^T [O, N, ...] (batch as
    channels), strides and dilations exchanged, then crop to the kernel and swap back."""
    rank = 2 + len(kernel)
    swap = [1, 0, *range(2, rank)]
    corr = ctx.op(
        "Conv", ctx.transpose(x, swap), ctx.transpose(dy, swap), strides=dilations,
        dilations=strides, pads=begin + end,
    )
    cropped = ctx.op(
        "Slice", corr, ctx.ints([0] * len(kernel)), ctx.ints(kernel), ctx.ints(range(2, rank))
    )
    return ctx.transpose(cropped, swap)


def _bias_grad(ctx, dy: str, rank: int) -> str:
    return ctx.reduce_sum(dy, [0, *range(2, rank)], keepdims=False)


@grad_rule("Conv")
def conv_grad(ctx, dys):
    (dy,) = dys
    x, w = ctx.inputs[:2]
    x_shape, w_shape, y_shape = ctx.shape(x), ctx.shape(w), ctx.shape(ctx.outputs[0])
    kernel = list(w_shape[2:])
    group = ctx.attr("group", 1)
    strides, dilations, begin, end = _conv_geometry(ctx, x_shape[2:], kernel)
    dx = dw = db = None
    reach = [d * (k - 1) for d, k in zip(dilations, kernel)]
    if ctx.wants(0) and all(st == 1 for st in strides) and all(p <= r for p, r in zip(begin + end, reach + reach)):
        dx = _input_grad_by_conv(ctx, dy, w, w_shape, kernel, dilations, begin, end, group)
    elif ctx.wants(0):
        output_padding = [
            size + b + e - ((k - 1) * d + 1) - s * (o - 1)
            for size, b, e, k, d, s, o in zip(x_shape[2:], begin, end, kernel, dilations, strides, y_shape[2:])
        ]
        dx = ctx.op(
            "ConvTranspose", dy, w, strides=strides, dilations=dilations, pads=begin + end,
            group=group, kernel_shape=kernel, output_padding=output_padding,
        )
    if ctx.wants(1):
        geometry = (kernel, strides, dilations, begin, end)
        dw = conv_weight_grad(ctx, x, dy, x_shape, y_shape, w_shape, group, geometry)
    if ctx.input(2) is not None and ctx.wants(2):
        db = _bias_grad(ctx, dy, len(y_shape))
    return [dx, dw, db]


def _conv_transpose_geometry(ctx, in_spatial, kernel):
    """(strides, dilations, pads_begin, pads_end, output_padding) of a ConvTranspose."""
    n = len(in_spatial)
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    output_padding = list(ctx.attr("output_padding") or [0] * n)
    output_shape = ctx.attr("output_shape")
    mode = _auto_pad(ctx)
    if output_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
        out = list(output_shape)[-n:] if output_shape else [s * i for s, i in zip(strides, in_spatial)]
        begin, end = [], []
        for size, k, s, d, op, o in zip(in_spatial, kernel, strides, dilations, output_padding, out):
            total = s * (size - 1) + op + (k - 1) * d + 1 - o
            small, large = total // 2, total - total // 2
            if mode == "SAME_LOWER":
                begin.append(large)
                end.append(small)
            else:
                begin.append(small)
                end.append(large)
        return strides, dilations, begin, end, output_padding
    pads = list(ctx.attr("pads") or [0] * (2 * n))
    return strides, dilations, pads[:n], pads[n:], output_padding


def _conv_transpose_weight_grad_by_conv(ctx, x, dy, kernel, strides, dilations, begin, end):
    """dW of a group-1 ConvTranspose as one Conv: correlate dy^T [Cout, N, ...] with
    x^T [Cin, N, ...] (strides and dilations exchanged), crop, and swap to [Cin, Cout, ...]."""
    rank = 2 + len(kernel)
    swap = [1, 0, *range(2, rank)]
    corr = ctx.op(
        "Conv", ctx.transpose(dy, swap), ctx.transpose(x, swap), strides=dilations,
        dilations=strides, pads=begin + end,
    )
    cropped = ctx.op(
        "Slice", corr, ctx.ints([0] * len(kernel)), ctx.ints(kernel), ctx.ints(range(2, rank))
    )
    return ctx.transpose(cropped, swap)


@grad_rule("ConvTranspose")
def conv_transpose_grad(ctx, dys):
    """ConvTranspose is the adjoint of Conv with the same geometry: dX = Conv(dY, W); dW
    contracts X with the windows of dY."""
    (dy,) = dys
    x, w = ctx.inputs[:2]
    x_shape, w_shape, y_shape = ctx.shape(x), ctx.shape(w), ctx.shape(ctx.outputs[0])
    kernel = list(w_shape[2:])
    group = ctx.attr("group", 1)
    strides, dilations, begin, end, _ = _conv_transpose_geometry(ctx, x_shape[2:], kernel)
    geometry = (kernel, strides, dilations, begin, end)
    dx = dw = db = None
    if ctx.wants(0):
        dx = ctx.op(
            "Conv", dy, w, strides=strides, dilations=dilations, pads=begin + end, group=group,
            kernel_shape=kernel,
        )
        # Conv over the (possibly output-padded) dy covers exactly x's extent
    if ctx.wants(1) and group == 1 and math.prod(kernel) < CORRELATION_MIN_TAPS:
        dw = _weight_grad_by_gemm(ctx, x, x_shape, dy, y_shape, geometry, w_shape)
    elif ctx.wants(1) and group == 1:
        dw = _conv_transpose_weight_grad_by_conv(ctx, x, dy, kernel, strides, dilations, begin, end)
    elif ctx.wants(1):
        # windows of dy, as a Conv with this geometry would read them, one per input position
        # (the grouped Conv's contraction with the roles of x and dy exchanged)
        cols = unfold(ctx, dy, y_shape, kernel, strides, dilations, begin, end, x_shape[2:])
        dw = _weight_grad(
            ctx, cols, x, x_shape[0], group, y_shape[1], math.prod(kernel), x_shape[1],
            math.prod(x_shape[2:]), w_shape,
        )
    if ctx.input(2) is not None and ctx.wants(2):
        db = _bias_grad(ctx, dy, len(y_shape))
    return [dx, dw, db]


# --- pooling --------------------------------------------------------------------------------


@grad_rule("MaxPool")
def max_pool_grad(ctx, dys):
    """Scatter each output's gradient to the position MaxPool's indices name (the first
    maximum in the window, as PyTorch). The forward node is given an indices output."""
    x = ctx.inputs[0]
    if dys[0] is None:
        return [None]
    if ctx.attr("storage_order", 0):
        raise UnsupportedOpError(f"No gradient for column-major MaxPool (node {ctx.node.name!r}).")
    indices = ctx.ensure_output(1, 7, ctx.shape(ctx.outputs[0]))  # int64
    shape = ctx.shape(x)
    flat = ctx.op(
        "ScatterElements",
        ctx.zeros([math.prod(shape)], x),
        ctx.reshape(indices, [-1]),
        ctx.reshape(dys[0], [-1]),
        axis=0,
        reduction="add",
    )
    return [ctx.reshape(flat, shape)]


def _window_counts(in_spatial, kernel, strides, dilations, begin, end, out_spatial, include_pad):
    """How many elements each AveragePool window averages (static, from the geometry)."""
    counts = np.ones(out_spatial, dtype=np.float64)
    for axis, (size, k, s, d, b, e, o) in enumerate(
        zip(in_spatial, kernel, strides, dilations, begin, end, out_spatial)
    ):
        low, high = (-b, size + e) if include_pad else (0, size)
        per = np.array(
            [sum(low <= i * s - b + j * d < high for j in range(k)) for i in range(o)], np.float64
        )
        shape = [1] * len(out_spatial)
        shape[axis] = o
        counts = counts * per.reshape(shape)
    return counts


@grad_rule("AveragePool")
def average_pool_grad(ctx, dys):
    """Each output's gradient, divided by its window's count, spread over the window by a
    depthwise ConvTranspose with a kernel of ones."""
    x = ctx.inputs[0]
    x_shape, y_shape = ctx.shape(x), ctx.shape(ctx.outputs[0])
    kernel = list(ctx.attr("kernel_shape"))
    strides, dilations, begin, end = _conv_geometry(ctx, x_shape[2:], kernel)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    counts = _window_counts(x_shape[2:], kernel, strides, dilations, begin, end, y_shape[2:], include_pad)
    scaled = ctx.div(dys[0], ctx.const(counts.astype(ctx.np_dtype(x))))
    # windows may run past the end padding (ceil_mode): pad the transpose's end accordingly
    end_eff = [
        (o - 1) * s + (k - 1) * d + 1 - size - b
        for o, s, k, d, size, b in zip(y_shape[2:], strides, kernel, dilations, x_shape[2:], begin)
    ]
    # or stop short of it (floor mode leaves a tail no window reads): an output padding instead
    tail = [max(0, -e) for e in end_eff]
    end_eff = [max(0, e) for e in end_eff]
    channels = x_shape[1]
    ones = ctx.const(np.ones([channels, 1, *kernel], dtype=ctx.np_dtype(x)))
    extra = {"output_padding": tail} if any(tail) else {}
    dx = ctx.op(
        "ConvTranspose", scaled, ones, strides=strides, dilations=dilations, pads=begin + end_eff,
        group=channels, kernel_shape=kernel, **extra,
    )
    return [dx]


@grad_rule("GlobalAveragePool")
def global_average_pool_grad(ctx, dys):
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    spread = ctx.expand(dys[0], shape)
    return [ctx.div(spread, ctx.scalar(float(math.prod(shape[2:])), x))]


@grad_rule("GlobalMaxPool")
def global_max_pool_grad(ctx, dys):
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    tied = ctx.op("CastLike", ctx.op("Equal", x, ctx.outputs[0]), x)
    count = ctx.reduce_sum(tied, list(range(2, len(shape))), keepdims=True)
    return [ctx.div(ctx.mul(ctx.expand(dys[0], shape), tied), count)]


# --- normalization ----------------------------------------------------------------------


def _normalized_grad(ctx, x, dxhat, xhat, invstd, axes, count):
    """d/dx of x -> xhat = (x - mean(x)) * invstd over ``axes`` (batch statistics)."""
    m = ctx.scalar(float(count), x)
    sum_dxhat = ctx.reduce_sum(dxhat, axes, keepdims=True)
    sum_dxhat_xhat = ctx.reduce_sum(ctx.mul(dxhat, xhat), axes, keepdims=True)
    inner = ctx.sub(ctx.sub(ctx.mul(m, dxhat), sum_dxhat), ctx.mul(xhat, sum_dxhat_xhat))
    return ctx.mul(ctx.div(invstd, m), inner)


def _channel_shape(rank: int, channels: int) -> list[int]:
    return [1, channels] + [1] * (rank - 2)


@grad_rule("BatchNormalization")
def batch_norm_grad(ctx, dys):
    x, scale, bias, mean, var = ctx.inputs[:5]
    shape = ctx.shape(x)
    rank, channels = len(shape), shape[1]
    axes = [0, *range(2, rank)]
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), x)
    dy = dys[0]
    if dy is None:
        return [None] * 5
    cshape = _channel_shape(rank, channels)
    scale_b = ctx.reshape(scale, cshape)
    if ctx.attr("training_mode", 0):
        count = math.prod(shape) // channels
        batch_mean = ctx.reduce("ReduceMean", x, axes, keepdims=True)
        centered = ctx.sub(x, batch_mean)
        batch_var = ctx.reduce("ReduceMean", ctx.mul(centered, centered), axes, keepdims=True)
        invstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.add(batch_var, eps)))
        xhat = ctx.mul(centered, invstd)
        dx = _normalized_grad(ctx, x, ctx.mul(dy, scale_b), xhat, invstd, axes, count) if ctx.wants(0) else None
        dscale = ctx.reduce_sum(ctx.mul(dy, xhat), axes) if ctx.wants(1) else None
        dbias = ctx.reduce_sum(dy, axes) if ctx.wants(2) else None
        return [dx, dscale, dbias, None, None]
    invstd_c = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.add(var, eps)))
    invstd = ctx.reshape(invstd_c, cshape)
    centered = ctx.sub(x, ctx.reshape(mean, cshape))
    dx = ctx.mul(dy, ctx.mul(scale_b, invstd)) if ctx.wants(0) else None
    dscale = ctx.mul(ctx.reduce_sum(ctx.mul(dy, centered), axes), invstd_c) if ctx.wants(1) else None
    dbias = ctx.reduce_sum(dy, axes) if ctx.wants(2) else None
    dmean = dvar = None
    if ctx.wants(3):
        dmean = ctx.neg(ctx.mul(ctx.reduce_sum(dy, axes), ctx.mul(scale, invstd_c)))
    if ctx.wants(4):
        cubed = ctx.mul(invstd_c, ctx.mul(invstd_c, invstd_c))
        coeff = ctx.mul(ctx.mul(scale, cubed), ctx.scalar(-0.5, x))
        dvar = ctx.mul(ctx.reduce_sum(ctx.mul(dy, centered), axes), coeff)
    return [dx, dscale, dbias, dmean, dvar]


@grad_rule("LayerNormalization")
def layer_norm_grad(ctx, dys):
    x, scale = ctx.inputs[:2]
    shape = ctx.shape(x)
    rank = len(shape)
    axis = ctx.attr("axis", -1) % rank
    axes = list(range(axis, rank))
    lead = list(range(axis))
    dy = dys[0]
    if dy is None:
        raise UnsupportedOpError(
            f"Gradient through LayerNormalization's Mean/InvStdDev outputs is not supported "
            f"(node {ctx.node.name!r})."
        )
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), x)
    mean = ctx.reduce("ReduceMean", x, axes, keepdims=True)
    centered = ctx.sub(x, mean)
    var = ctx.reduce("ReduceMean", ctx.mul(centered, centered), axes, keepdims=True)
    invstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.add(var, eps)))
    xhat = ctx.mul(centered, invstd)
    dx = None
    if ctx.wants(0):
        count = math.prod(shape[axis:])
        dx = _normalized_grad(ctx, x, ctx.mul(dy, scale), xhat, invstd, axes, count)
    dscale = ctx.unbroadcast(ctx.mul(dy, xhat), shape, ctx.shape(scale)) if ctx.wants(1) else None
    dbias = None
    if ctx.input(2) is not None and ctx.wants(2):
        dbias = ctx.unbroadcast(dy, shape, ctx.shape(ctx.inputs[2]))
    del lead
    return [dx, dscale, dbias]


@grad_rule("InstanceNormalization")
def instance_norm_grad(ctx, dys):
    x, scale, _ = ctx.inputs
    shape = ctx.shape(x)
    rank = len(shape)
    axes = list(range(2, rank))
    cshape = _channel_shape(rank, shape[1])
    dy = dys[0]
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), x)
    mean = ctx.reduce("ReduceMean", x, axes, keepdims=True)
    centered = ctx.sub(x, mean)
    var = ctx.reduce("ReduceMean", ctx.mul(centered, centered), axes, keepdims=True)
    invstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.add(var, eps)))
    xhat = ctx.mul(centered, invstd)
    dx = None
    if ctx.wants(0):
        dxhat = ctx.mul(dy, ctx.reshape(scale, cshape))
        dx = _normalized_grad(ctx, x, dxhat, xhat, invstd, axes, math.prod(shape[2:]))
    dscale = ctx.reduce_sum(ctx.mul(dy, xhat), [0, *axes]) if ctx.wants(1) else None
    dbias = ctx.reduce_sum(dy, [0, *axes]) if ctx.wants(2) else None
    return [dx, dscale, dbias]


# --- softmax ---------------------------------------------------------------------------------


def _softmax_axis(ctx) -> int:
    return ctx.attr("axis", -1) % ctx.rank(ctx.inputs[0])


@grad_rule("Softmax")
def softmax_grad(ctx, dys):
    y = ctx.outputs[0]
    axis = _softmax_axis(ctx)
    dot = ctx.reduce_sum(ctx.mul(dys[0], y), [axis], keepdims=True)
    return [ctx.mul(y, ctx.sub(dys[0], dot))]


def log_softmax_backward(ctx, grad: str, log_probs: str, axis: int) -> str:
    """d/dx of log_softmax(x) applied to ``grad``: grad - softmax * sum(grad)."""
    total = ctx.reduce_sum(grad, [axis], keepdims=True)
    return ctx.sub(grad, ctx.mul(ctx.op("Exp", log_probs), total))


@grad_rule("LogSoftmax")
def log_softmax_grad(ctx, dys):
    return [log_softmax_backward(ctx, dys[0], ctx.outputs[0], _softmax_axis(ctx))]


# --- dropout ---------------------------------------------------------------------------------


@grad_rule("Dropout", nondiff=(1, 2))
def dropout_grad(ctx, dys):
    """Inference: identity. Training: the mask the forward pass drew, scaled by 1/(1 - ratio)."""
    training = ctx.const_value(ctx.input(2))
    if training is None and ctx.input(2) is not None:
        raise UnsupportedOpError(
            f"Dropout node {ctx.node.name!r} has a computed training_mode; lossgraph needs it "
            f"constant."
        )
    if training is None or not bool(np.asarray(training)):
        return [dys[0], None, None]
    ratio_value = ctx.const_value(ctx.input(1))
    ratio = 0.5 if ratio_value is None else float(np.asarray(ratio_value))
    mask = ctx.op("CastLike", ctx.ensure_output(1, 9, ctx.shape(ctx.inputs[0])), ctx.inputs[0])
    scale = ctx.scalar(1.0 / (1.0 - ratio) if ratio < 1.0 else 0.0, ctx.inputs[0])
    return [ctx.mul(ctx.mul(dys[0], mask), scale), None, None]


# --- resizing ----------------------------------------------------------------------------------


@grad_rule("Resize", nondiff=(1, 2, 3))
def resize_grad(ctx, dys):
    """Resize is linear in X and separable: along each resized axis y = M x, M [out, in] the
    axis's interpolation matrix (any mode, coordinate transformation, nearest rounding, cubic
    coefficient, antialias or crop), read off ONNX's reference Resize applied to the identity;
    the gradient is M^T dy, axis by axis (a MatMul with a constant)."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    if ctx.opset < 11:
        raise UnsupportedOpError(
            f"Resize node {ctx.node.name!r}: opset {ctx.opset}'s Resize (scales as its second "
            f"input) is not differentiated; export with opset 11 or newer."
        )
    in_shape, out_shape = ctx.shape(x), ctx.shape(y)
    rank = len(in_shape)
    roi, scales, sizes = (ctx.const_value(ctx.input(i)) for i in (1, 2, 3))
    if any(ctx.input(i) and value is None for i, value in ((1, roi), (2, scales), (3, sizes))):
        raise UnsupportedOpError(
            f"Resize node {ctx.node.name!r} takes computed scales, sizes or roi; lossgraph "
            f"differentiates only constant ones."
        )
    grad = dys[0]
    for axis, matrix in resize_matrices(ctx.node, ctx.opset, in_shape, out_shape, roi, scales, sizes):
        constant = ctx.const(matrix.astype(ctx.np_dtype(x)))
        perm = [a for a in range(rank) if a != axis] + [axis]
        moved = grad if axis == rank - 1 else ctx.transpose(grad, perm)
        moved = ctx.op("MatMul", moved, constant)
        grad = moved if axis == rank - 1 else ctx.transpose(moved, list(np.argsort(perm)))
    return [grad, None, None, None]

