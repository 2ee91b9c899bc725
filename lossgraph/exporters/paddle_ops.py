"""Paddle functions that paddle2onnx 2.1.0 cannot convert, re-expressed in convertible ops.

While a model is traced for export, :func:`convertible_ops` swaps these in for Paddle's own
(``paddle.nn.functional.softplus``, ``celu``, ``pixel_unshuffle``, ``channel_shuffle``, ``masked_fill``,
``amax``/``amin``, ``to_tensor`` of booleans, ``nll_loss`` and ``label_smooth``, which the layers
``nn.Softplus``, ``nn.NLLLoss`` and ``F.cross_entropy(label_smoothing=...)`` call too; the
While loop of ``nn.RNN``/``BiRNN`` of cells; ``interpolate``'s and ``nn.Upsample``'s
``scale_factor``, as the sizes it gives; a constant ``pad``, whose value paddle2onnx reads
from uninitialized memory). Each follows the Paddle kernel's formula, so the
eager check at export confirms the exported graph computes what Paddle computes.
"""

from __future__ import annotations

from typing import Any


def softplus(x: Any, beta: float = 1, threshold: float = 20, name: Any = None) -> Any:
    """Paddle's softplus kernel: x where beta*x > threshold, else log1p(exp(beta*x)) / beta.

    paddle2onnx converts softplus only for beta == 1 and threshold == 20 as floats, and rejects
    the defaults as Paddle passes them. The exp is taken of min(beta*x, threshold) so the branch
    that is not selected never overflows (its gradient would be NaN)."""
    import paddle

    scaled = x * beta
    capped = paddle.minimum(scaled, paddle.full_like(scaled, threshold))
    soft = paddle.log1p(paddle.exp(capped)) / beta
    return paddle.where(scaled > threshold, x, soft)


def nll_loss(
    input: Any,
    label: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    name: Any = None,
) -> Any:
    """Paddle's nll_loss: -weight[label] * input[label] over the class axis 1; targets equal to
    ignore_index count zero; ``mean`` divides by the summed weight of the counted targets."""
    import paddle

    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"nll_loss reduction must be mean, sum or none, got {reduction!r}")
    kept = label != ignore_index
    safe = paddle.where(kept, label, paddle.zeros_like(label))
    picked = paddle.take_along_axis(input, safe.unsqueeze(1), axis=1).squeeze(1)
    mask = kept.astype(input.dtype)
    target_weight = mask if weight is None else paddle.gather(weight, safe.flatten()).reshape(
        safe.shape
    ) * mask
    losses = -picked * target_weight
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / target_weight.sum()


def label_smooth(label: Any, prior_dist: Any = None, epsilon: float = 0.1, name: Any = None) -> Any:
    """Paddle's label_smooth: (1 - epsilon) * label + epsilon * prior (uniform 1/C by default).

    paddle2onnx has no converter for ``label_smooth``, which ``F.cross_entropy`` uses for
    ``label_smoothing > 0``."""
    if prior_dist is None:
        return label * (1.0 - epsilon) + epsilon / label.shape[-1]
    return label * (1.0 - epsilon) + prior_dist * epsilon


def celu(x: Any, alpha: float = 1.0, name: Any = None) -> Any:
    """Paddle's celu, which paddle2onnx has no converter for: alpha * elu(x / alpha) (x above 0,
    alpha (exp(x / alpha) - 1) at and below)."""
    import paddle

    return paddle.nn.functional.elu(x / alpha, 1.0) * alpha


def _sized(function_name: str) -> Any:
    """``paddle.nn.functional.<function_name>`` (interpolate, upsample) with a ``scale_factor``
    that gives whole output sizes on the static input shape called with those sizes instead:
    paddle2onnx aborts on a scale factor. Paddle interpolates alike either way then (the
    ratio in/out is 1/scale); anything else is passed on unchanged."""

    def resize(*args: Any, **kwargs: Any) -> Any:
        from paddle.nn.functional import common

        original = getattr(common, function_name)
        x = args[0] if args else kwargs.get("x", kwargs.get("input"))
        size = kwargs["size"] if "size" in kwargs else (args[1] if len(args) > 1 else None)
        scale = kwargs["scale_factor"] if "scale_factor" in kwargs else (args[2] if len(args) > 2 else None)
        if x is None or size is not None or scale is None or len(args) > 3:
            return original(*args, **kwargs)
        channels_last = str(kwargs.get("data_format") or "").endswith("C")
        spatial = list(x.shape[1:-1] if channels_last else x.shape[2:])
        scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * len(spatial)
        if (len(scales) != len(spatial) or any(not isinstance(d, int) or d < 0 for d in spatial)
                or any(not isinstance(f, (int, float)) for f in scales)):
            return original(*args, **kwargs)  # a scale given as a tensor: Paddle's own
        sizes = [d * float(f) for d, f in zip(spatial, scales)]
        if any(abs(v - round(v)) > 1e-9 for v in sizes):
            return original(*args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("x", "input", "size", "scale_factor")}
        return original(x, [int(round(v)) for v in sizes], None, **kwargs)

    return resize


def pad(x: Any, pad: Any, mode: str = "constant", value: float = 0.0, data_format: Any = None,
        pad_from_left_axis: bool = True, name: Any = None) -> Any:
    """Paddle's constant pad of the spatial axes (the Pad1D/2D/3D layers, ``F.pad`` with two
    values per spatial axis) as concatenated blocks of ``value``: paddle2onnx writes the pad
    value of its Pad node from uninitialized memory (1e-38 one run, inf the next). Every other
    call goes to Paddle's pad."""
    import paddle
    from paddle.nn.functional import common

    rank = len(x.shape)
    spatial = rank - 2
    channels_last = str(data_format or "").endswith("C")
    pads = list(pad) if isinstance(pad, (list, tuple)) else None
    if (mode != "constant" or pads is None or len(pads) != 2 * spatial or not 1 <= spatial <= 3
            or any(not isinstance(p, int) or p < 0 for p in pads) or any(d < 0 for d in x.shape)):
        return common.pad(x, pad, mode, value, data_format, pad_from_left_axis, name)
    axes = list(range(1, rank - 1)) if channels_last else list(range(2, rank))
    out = x
    # pads run from the last spatial axis: [left, right, top, bottom, front, back]
    for k, axis in enumerate(reversed(axes)):
        before, after = pads[2 * k], pads[2 * k + 1]
        parts = []
        for width in (before, after):
            shape = list(out.shape)
            shape[axis] = width
            parts.append(paddle.full(shape, value, dtype=out.dtype) if width > 0 else None)
        pieces = [p for p in (parts[0], out, parts[1]) if p is not None]
        out = paddle.concat(pieces, axis=axis) if len(pieces) > 1 else out
    return out


def pixel_unshuffle(x: Any, downscale_factor: int, data_format: str = "NCHW", name: Any = None) -> Any:
    """Paddle's pixel_unshuffle, which paddle2onnx has no converter for, as a reshape and a
    transpose: [N, C, H, W] -> [N, C r r, H / r, W / r], channel c r r + i r + j holding
    x[c, h r + i, w r + j]."""
    import paddle
    from paddle.nn.functional import vision

    if data_format != "NCHW" or any(d < 0 for d in x.shape):
        return vision.pixel_unshuffle(x, downscale_factor, data_format, name)
    n, c, h, w = x.shape
    r = downscale_factor
    blocks = paddle.reshape(x, [n, c, h // r, r, w // r, r])
    return paddle.reshape(paddle.transpose(blocks, [0, 1, 3, 5, 2, 4]), [n, c * r * r, h // r, w // r])


def rnn_steps(cell: Any, inputs: Any, initial_states: Any = None, sequence_length: Any = None,
              time_major: bool = False, is_reverse: bool = False, **kwargs: Any) -> Any:
    """``paddle.nn.RNN`` and ``BiRNN`` of cells (LSTMCell, GRUCell, SimpleRNNCell, a cell of the
    user's) traced step by step, as Paddle runs them eagerly: a Python loop over the time steps,
    which an export's static shapes fix. Their static-graph form is a While loop over tensor
    arrays, on which paddle2onnx aborts."""
    from paddle.nn.layer import rnn

    return rnn._rnn_dynamic_graph(cell, inputs, initial_states, sequence_length, time_major,
                                  is_reverse, **kwargs)


def channel_shuffle(x: Any, groups: int, data_format: str = "NCHW", name: Any = None) -> Any:
    """Paddle's channel_shuffle, which paddle2onnx has no converter for: [N, C, H, W] as
    [N, g, C / g, H, W], the two channel axes swapped."""
    import paddle
    from paddle.nn.functional import vision

    if data_format != "NCHW" or any(d < 0 for d in x.shape):
        return vision.channel_shuffle(x, groups, data_format, name)
    n, c, h, w = x.shape
    grouped = paddle.reshape(x, [n, groups, c // groups, h, w])
    return paddle.reshape(paddle.transpose(grouped, [0, 2, 1, 3, 4]), [n, c, h, w])


def masked_fill(x: Any, mask: Any, value: Any, name: Any = None) -> Any:
    """Paddle's masked_fill, which paddle2onnx has no converter for: a where."""
    import paddle

    fill = value if isinstance(value, (paddle.Tensor, paddle.pir.Value)) else paddle.full([], value, x.dtype)
    return paddle.where(mask, fill.astype(x.dtype), x)


def amax(x: Any, axis: Any = None, keepdim: bool = False, name: Any = None) -> Any:
    """Paddle's amax, which paddle2onnx has no converter for: max computes the same value, and
    the exported ReduceMax's gradient splits ties evenly, as amax's does."""
    import paddle

    return paddle.max(x, axis, keepdim)


def amin(x: Any, axis: Any = None, keepdim: bool = False, name: Any = None) -> Any:
    """Paddle's amin, as :func:`amax`."""
    import paddle

    return paddle.min(x, axis, keepdim)


def to_tensor_static(data: Any, dtype: Any = None, stop_gradient: bool = True) -> Any:
    """The static-graph half of paddle.to_tensor (which dy2static leaves in place: it rewrites
    calls of to_tensor itself), except that boolean data -- a mask written out in forward code
    -- is made as int64 and cast: paddle2onnx aborts on a boolean constant."""
    import numpy as np
    import paddle

    original = ORIGINALS[("paddle.tensor.creation", "_to_tensor_static")]
    if not isinstance(data, (paddle.Tensor, paddle.pir.Value)) and dtype in (None, "bool", paddle.bool):
        try:
            array = np.asarray(data)
        except Exception:  # not array-like: Paddle's own says what is wrong
            array = None
        if array is not None and array.dtype == np.bool_:
            return paddle.cast(original(array.astype(np.int64), None, stop_gradient), "bool")
    return original(data, dtype, stop_gradient)


#: what the replacements replace, while they do (for those that call it)
ORIGINALS: dict[tuple[str, str], Any] = {}

#: ``paddle.assign(x, output=y)`` calls of the traced forward, in order: (y's value, the value
#: written, the program's last op at the write; Paddle inserts parameters at the front of the
#: program when they are first read, so positions shift and only the op itself marks the spot)
WRITES: list[tuple[Any, Any, Any]] = []


def assign(x: Any, output: Any = None) -> Any:
    """paddle.assign; while a forward is traced, a write into an existing value (a buffer: a
    spectral norm's power iteration ``paddle.assign(normalize(...), u)``, or ``self.buf =
    value``, which Paddle's Layer turns into one) is recorded instead of emitted.

    The saved program writes the value in place and reads the old one after it, so the exported
    graph would compute with the buffer's value from before the write and never update it.
    :func:`carry_writes` rewires the reads after each write to the written value and gives the
    buffers' last values, which become graph outputs ``state:<buffer>``."""
    import paddle

    original = ORIGINALS[("paddle", "assign")]
    if output is None or not isinstance(output, paddle.pir.Value) or paddle.in_dynamic_mode():
        return original(x, output)
    from paddle.base.libpaddle.pir import get_current_insertion_point

    from lossgraph.errors import ExportError

    block = paddle.static.default_main_program().global_block()
    if get_current_insertion_point().block() != block:
        raise ExportError(
            "The forward pass writes a value in place (paddle.assign into a buffer or an attribute "
            "assignment) inside a branch or loop on tensor values; lossgraph carries such writes "
            "only outside control flow."
        )
    value = x if isinstance(x, paddle.pir.Value) else original(x)
    if value.dtype != output.dtype:
        value = paddle.cast(value, output.dtype)
    WRITES.append((output, value, block.ops[-1]))
    return output


def carry_writes(model: Any, buffers: list[str]) -> list[Any]:
    """Rewire every op of the traced program that reads a value after a recorded write to read
    the written value instead (latest write first, so a read after two writes gets the second),
    and return the last value written into each of ``buffers`` (state-dict names). Raises
    ExportError for a buffer the eager forward changed that the trace wrote otherwise."""
    import paddle

    from lossgraph.errors import ExportError

    writes = list(WRITES)
    WRITES.clear()
    ops = paddle.static.default_main_program().global_block().ops
    for old, new, anchor in reversed(writes):
        start = next((k for k, op in enumerate(ops) if op == anchor), None)
        if start is None:
            raise ExportError(
                "The forward pass writes a value in place at a point lossgraph cannot find in the "
                "traced program; lossgraph cannot carry that update into the graph."
            )
        start += 1
        for op in ops[start:]:
            for index in range(op.num_operands()):
                if op.operand_source(index).is_same(old):
                    op.operand(index).set_source(new)
    values = []
    for name in buffers:
        owner = model
        for part in name.split("."):
            owner = getattr(owner, part)
        last = next((new for old, new, _ in reversed(writes) if old.is_same(owner)), None)
        if last is None:
            raise ExportError(
                f"The forward pass changes buffer {name!r} in place other than by paddle.assign(value, "
                f"buffer) or attribute assignment; lossgraph cannot carry that update into the graph."
            )
        # a copy, in the buffer's shape: jit.save fetched the parameter itself for the written
        # value of a 0-D buffer, and paddle2onnx writes a 0-D copy as [1]
        values.append(ORIGINALS[("paddle", "assign")](last).reshape(list(last.shape)))
    return values
#: (module, or "module:Class" for a method, attribute) -> its convertible stand-in.
#: ``paddle.nn.functional`` re-exports from its submodules, and layers call through
#: ``paddle.nn.functional``; where both names are used, both are swapped.
def _adaptive(x: Any, output_size: Any, dims: int, reduce: Any) -> Any:
    import paddle

    from lossgraph.exporters.common import adaptive_pool

    return adaptive_pool(x, list(x.shape), output_size, len(x.shape) - dims,
                         lambda t, axis, a, b: paddle.slice(t, [axis], [a], [b]), reduce,
                         lambda parts, axis: paddle.concat(parts, axis))


def _even(x: Any, output_size: Any, dims: int) -> bool:
    """Whether every window of an adaptive pool is the same size (paddle2onnx converts only
    those; its uneven average pools are mended after conversion, ``exporters.adaptive_pool``),
    or a shape is unknown."""
    sizes = list(x.shape[-dims:])
    outs = list(output_size) if isinstance(output_size, (list, tuple)) else [output_size] * dims
    return any(d < 0 for d in sizes) or all(o is None or s % int(o) == 0 for s, o in zip(sizes, outs))


def _adaptive_max(dims: int) -> Any:
    name = f"adaptive_max_pool{dims}d"

    def pool(x: Any, output_size: Any, return_mask: bool = False, name_: Any = None, **kwargs: Any) -> Any:
        """Paddle's adaptive max pool with uneven windows, which paddle2onnx cannot convert, as
        maxima of its windows, axis by axis; even ones and masks go to Paddle's own."""
        import paddle

        if return_mask or _even(x, output_size, dims):
            return ORIGINALS[("paddle.nn.functional", name)](x, output_size, return_mask, **kwargs)
        return _adaptive(x, output_size, dims, lambda t, axis: paddle.max(t, axis, keepdim=True))

    return pool


def fold(x: Any, output_sizes: Any, kernel_sizes: Any, strides: Any = 1, paddings: Any = 0,
         dilations: Any = 1, name: Any = None) -> Any:
    """Paddle's fold (col2im), which paddle2onnx has no converter for, as the ConvTranspose of
    one-hot kernels that adds every column entry into its place (symmetric paddings; others go
    to Paddle's own)."""
    import paddle

    from lossgraph.exporters.common import fold_blocks, fold_one_hot, pairs

    size, kernel, step, pad, dil = (pairs(v) for v in (output_sizes, kernel_sizes, strides, paddings, dilations))
    if None in (size, kernel, step, pad, dil) or any(d < 0 for d in x.shape):
        return ORIGINALS[("paddle.nn.functional", "fold")](x, output_sizes, kernel_sizes, strides, paddings,
                                                           dilations, name)
    n, rows, _ = x.shape
    blocks = fold_blocks(size, kernel, step, pad, dil)
    if blocks is None:  # the blocks leave a margin the stride never reaches: Paddle's own
        return ORIGINALS[("paddle.nn.functional", "fold")](x, output_sizes, kernel_sizes, strides, paddings,
                                                           dilations, name)
    channels = rows // (kernel[0] * kernel[1])
    weight = paddle.to_tensor(fold_one_hot(channels, kernel)).astype(x.dtype)
    return paddle.nn.functional.conv2d_transpose(
        paddle.reshape(x, [n, rows, *blocks]), weight, stride=step, padding=pad, groups=channels, dilation=dil)


def affine_grid(theta: Any, out_shape: Any, align_corners: bool = True, name: Any = None) -> Any:
    """Paddle's affine_grid, which paddle2onnx has no converter for, for a 2-D grid: the pixel
    centres' normalized [x, y, 1] times theta transposed, [N, H, W, 2]. A 3-D grid or a shape
    held in a tensor goes to Paddle's own."""
    import numpy as np
    import paddle

    shape = list(out_shape) if isinstance(out_shape, (list, tuple)) else None
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape):
        return ORIGINALS[("paddle.nn.functional", "affine_grid")](theta, out_shape, align_corners, name)
    n, _, h, w = shape

    def centres(size: int) -> np.ndarray:
        if align_corners:
            return np.linspace(-1.0, 1.0, size) if size > 1 else np.zeros(1)
        return (2.0 * np.arange(size) + 1.0) / size - 1.0

    ys, xs = np.meshgrid(centres(h), centres(w), indexing="ij")
    base = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], axis=1)[None].astype(np.float32)
    grid = paddle.matmul(paddle.to_tensor(base).astype(theta.dtype), theta, transpose_y=True)
    return paddle.reshape(grid, [n, h, w, 2])


def lp_pool2d(x: Any, norm_type: float, kernel_size: Any, stride: Any = None, padding: Any = 0,
              ceil_mode: bool = False, data_format: str = "NCHW", name: Any = None) -> Any:
    """Paddle's lp_pool2d, which paddle2onnx has no converter for: the p-th root of each
    window's sum of x^p, the sum an average pool times the window's size (no padding, no
    ceil_mode; others go to Paddle's own)."""
    import paddle

    from lossgraph.exporters.common import pairs

    kernel = pairs(kernel_size)
    if kernel is None or ceil_mode or data_format != "NCHW" or pairs(padding) != [0, 0]:
        return ORIGINALS[("paddle.nn.functional", "lp_pool2d")](
            x, norm_type, kernel_size, stride, padding, ceil_mode, data_format, name)
    sums = paddle.nn.functional.avg_pool2d(paddle.pow(x, norm_type), kernel, stride if stride is not None else kernel,
                                           0, exclusive=False) * float(kernel[0] * kernel[1])
    return paddle.pow(sums, 1.0 / norm_type)


def rrelu(x: Any, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = True, name: Any = None) -> Any:
    """Paddle's rrelu, which paddle2onnx has no converter for: in eval mode a leaky ReLU of slope
    (lower + upper) / 2, as Paddle computes it; in training (random slopes) refused."""
    import paddle

    from lossgraph.exporters.common import rrelu_slope

    return paddle.nn.functional.leaky_relu(x, rrelu_slope(lower, upper, training))


def logcumsumexp(x: Any, axis: Any = None, dtype: Any = None, name: Any = None) -> Any:
    """Paddle's logcumsumexp, which paddle2onnx has no converter for: a log-step scan of
    logaddexp (each prefix's own maximum keeps it from underflowing)."""
    import paddle

    def logaddexp(a: Any, b: Any) -> Any:
        return paddle.maximum(a, b) + paddle.log1p(paddle.exp(-paddle.abs(a - b)))

    return _scan(x, axis, dtype, float("-inf"), logaddexp)


def _scan(x: Any, axis: Any, dtype: Any, identity: float, combine: Any) -> Any:
    """An inclusive scan of ``x`` along ``axis`` (all values flattened when None), in log2 steps
    (``common.prefix_scan``), ``identity`` coming in where the copies are shifted."""
    import paddle

    from lossgraph.exporters.common import prefix_scan

    if dtype is not None:
        x = x.astype(dtype)
    if axis is None:
        x, axis = paddle.flatten(x), 0
    axis %= len(x.shape)
    size = x.shape[axis]

    def shifted(t: Any, k: int) -> Any:
        head = paddle.slice(t, [axis], [0], [size - k])
        return paddle.concat([paddle.full_like(paddle.slice(t, [axis], [0], [k]), identity), head], axis)

    return prefix_scan(x, size, shifted, combine)


def cross(x: Any, y: Any, axis: int = 9, name: Any = None) -> Any:
    """Paddle's cross product, which paddle2onnx has no converter for, from rolled copies:
    x[1] y[2] - x[2] y[1], and so on round."""
    import paddle

    if axis == 9:  # Paddle's default: the first axis of size 3
        axis = next(i for i, d in enumerate(x.shape) if d == 3)
    after, before = paddle.to_tensor([1, 2, 0]), paddle.to_tensor([2, 0, 1])

    def turn(t: Any, order: Any) -> Any:
        return paddle.index_select(t, order, axis=axis)

    return turn(x, after) * turn(y, before) - turn(x, before) * turn(y, after)


def kron(x: Any, y: Any, name: Any = None) -> Any:
    """Paddle's Kronecker product of two matrices, which paddle2onnx has no converter for: the
    outer product of their entries, [m, p, n, q] as [m p, n q]; other ranks go to Paddle's own."""
    import paddle

    if len(x.shape) != 2 or len(y.shape) != 2 or any(d < 0 for d in [*x.shape, *y.shape]):
        return ORIGINALS[("paddle", "kron")](x, y, name)
    (m, n), (p, q) = x.shape, y.shape
    outer = paddle.reshape(x, [m, 1, n, 1]) * paddle.reshape(y, [1, p, 1, q])
    return paddle.reshape(outer, [m * p, n * q])


def _sorted_pick(x: Any, axis: int, position: int, keepdim: bool) -> tuple[Any, Any]:
    """The element at ``position`` of ``x`` sorted along ``axis``, and its index."""
    import paddle

    indices = paddle.argsort(x, axis=axis)
    values = paddle.take_along_axis(x, indices, axis)
    value = paddle.slice(values, [axis], [position], [position + 1])
    index = paddle.slice(indices, [axis], [position], [position + 1])
    return (value, index) if keepdim else (paddle.squeeze(value, axis), paddle.squeeze(index, axis))


def kthvalue(x: Any, k: int, axis: Any = None, keepdim: bool = False, name: Any = None) -> Any:
    """Paddle's kthvalue, which paddle2onnx has no converter for: the k-th of the sorted values."""

    if axis is None:  # Paddle's default: the last axis
        axis = -1
    return _sorted_pick(x, axis % len(x.shape), k - 1, keepdim)


def median(x: Any, axis: Any = None, keepdim: bool = False, mode: str = "avg", name: Any = None, **kwargs: Any) -> Any:
    """Paddle's median, which paddle2onnx has no converter for, from the sorted values: the
    mean of the two middle ones (``mode='avg'``, Paddle's default) or the lower (``'min'``,
    torch's), with its index."""
    import paddle

    if kwargs or mode not in ("avg", "min") or not isinstance(axis, int):  # over all values: Paddle's own
        return ORIGINALS[("paddle", "median")](x, axis, keepdim, mode, name, **kwargs)
    flat = axis is None
    if flat:
        x, axis = paddle.flatten(x), 0
    axis %= len(x.shape)
    size = x.shape[axis]
    lower = _sorted_pick(x, axis, (size - 1) // 2, keepdim and not flat)
    if mode == "min":
        return lower
    if size % 2:
        return lower[0]
    upper = _sorted_pick(x, axis, size // 2, keepdim and not flat)
    return (lower[0] + upper[0]) / 2


def cummax(x: Any, axis: Any = None, dtype: Any = "int64", name: Any = None) -> Any:
    """Paddle's cummax, which paddle2onnx has no converter for: each prefix's maximum, and the
    index of its last occurrence."""
    import paddle

    if axis is None:
        x, axis = paddle.flatten(x), 0
    axis %= len(x.shape)
    prefixes = [paddle.slice(x, [axis], [0], [i + 1]) for i in range(x.shape[axis])]
    values = paddle.stack([paddle.max(part, axis) for part in prefixes], axis)
    last = [i - paddle.argmax(paddle.flip(part, [axis]), axis) for i, part in enumerate(prefixes)]
    return values, paddle.stack(last, axis).astype(dtype)


def cumprod(x: Any, dim: Any = None, dtype: Any = None, name: Any = None, **kwargs: Any) -> Any:
    """Paddle's cumprod, which paddle2onnx has no converter for, as products of shifted copies
    (log2 of the axis's length of them)."""

    if kwargs.get("out") is not None:
        return ORIGINALS[("paddle", "cumprod")](x, dim, dtype=dtype, name=name, **kwargs)
    return _scan(x, dim, dtype, 1.0, lambda a, b: a * b)


def multi_label_margin_loss(input: Any, label: Any, reduction: str = "mean", name: Any = None) -> Any:
    """Paddle's multi_label_margin_loss, which gathers rows at data-dependent positions (where,
    cumprod; paddle2onnx converts neither), in one dense computation: for each sample, the hinge
    max(0, 1 - (x[y] - x[i])) of every target label y (those before the first -1) against every
    class i no label names, summed and divided by the number of classes."""
    import paddle

    if len(input.shape) != 2 or any(d < 0 for d in input.shape):
        return ORIGINALS[("paddle.nn.functional", "multi_label_margin_loss")](input, label, reduction, name)
    n, classes = input.shape
    ended = paddle.concat([(label == -1).astype("int64"), paddle.ones([n, 1], "int64")], 1)
    count = paddle.argmax(ended, 1, keepdim=True)
    valid = (paddle.arange(classes).unsqueeze(0) < count).astype(input.dtype)
    labels = paddle.clip(label, min=0).astype("int64")
    chosen = paddle.nn.functional.one_hot(labels, classes).astype(input.dtype) * valid.unsqueeze(-1)
    others = 1.0 - paddle.clip(chosen.sum(1), max=1.0)
    scores = paddle.take_along_axis(input, labels, 1)
    hinge = paddle.nn.functional.relu(1.0 - scores.unsqueeze(-1) + input.unsqueeze(1))
    loss = (hinge * valid.unsqueeze(-1) * others.unsqueeze(1)).sum((1, 2)) / classes
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def matmul(x: Any, y: Any, transpose_x: bool = False, transpose_y: bool = False, name: Any = None) -> Any:
    """Paddle's matmul with a 1-D operand "transposed" (a no-op: cross_entropy's soft labels
    times a class weight), on which paddle2onnx crashes: passed without the transpose."""
    original = ORIGINALS[("paddle", "matmul")]
    if transpose_y and len(y.shape) == 1:
        transpose_y = False
    if transpose_x and len(x.shape) == 1:
        transpose_x = False
    return original(x, y, transpose_x, transpose_y, name)


def gaussian_nll_loss(input: Any, label: Any, variance: Any, full: bool = False, epsilon: float = 1e-6,
                      reduction: str = "mean", name: Any = None) -> Any:
    """Paddle's gaussian_nll_loss as Paddle runs it eagerly: it clips the variance inside
    ``paddle.no_grad()``, so the variance gets no gradient at all (torch's passes the gradient
    through its clamp); traced, the no_grad block is lost. The clipped variance is detached
    here, which the export keeps. Its data-dependent check of the variances is left out (the
    eager run has checked the values)."""
    import math

    import paddle

    if list(variance.shape) != list(input.shape) and list(input.shape[:-1]) == list(variance.shape):
        variance = paddle.unsqueeze(variance, -1)
    variance = paddle.clip(variance, min=epsilon).detach()
    loss = 0.5 * (paddle.log(variance) + paddle.square(input - label) / variance)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    if reduction == "mean":
        return paddle.mean(loss)
    return paddle.sum(loss) if reduction == "sum" else loss


REPLACEMENTS = {
    ("paddle", "matmul"): matmul,
    ("paddle.nn.functional", "gaussian_nll_loss"): gaussian_nll_loss,
    ("paddle.nn.functional.loss", "gaussian_nll_loss"): gaussian_nll_loss,
    ("paddle.nn.functional", "lp_pool2d"): lp_pool2d,
    ("paddle.nn.functional", "multi_label_margin_loss"): multi_label_margin_loss,
    ("paddle.nn.functional.loss", "multi_label_margin_loss"): multi_label_margin_loss,
    **{(where, "cumprod"): cumprod for where in ("paddle", "paddle.tensor", "paddle.pir:Value", "paddle:Tensor")},
    **{(where, name): fn for name, fn in (("kthvalue", kthvalue), ("median", median), ("cummax", cummax))
       for where in ("paddle", "paddle.tensor", "paddle.pir:Value", "paddle:Tensor")},
    ("paddle.nn.functional", "rrelu"): rrelu,
    ("paddle.nn.functional.activation", "rrelu"): rrelu,
    **{(where, name): fn for name, fn in (("logcumsumexp", logcumsumexp), ("cross", cross), ("kron", kron))
       for where in ("paddle", "paddle.tensor", "paddle.pir:Value", "paddle:Tensor")},
    ("paddle.nn.functional", "affine_grid"): affine_grid,
    ("paddle.nn.functional.vision", "affine_grid"): affine_grid,
    ("paddle.nn.functional", "adaptive_max_pool1d"): _adaptive_max(1),
    ("paddle.nn.functional", "adaptive_max_pool2d"): _adaptive_max(2),
    ("paddle.nn.functional", "adaptive_max_pool3d"): _adaptive_max(3),
    ("paddle.nn.functional", "fold"): fold,
    ("paddle.nn.functional", "channel_shuffle"): channel_shuffle,
    ("paddle.tensor.creation", "_to_tensor_static"): to_tensor_static,
    **{(where, "assign"): assign for where in ("paddle", "paddle.tensor.creation")},
    ("paddle", "masked_fill"): masked_fill,
    ("paddle.tensor", "masked_fill"): masked_fill,
    ("paddle.pir:Value", "masked_fill"): masked_fill,
    ("paddle:Tensor", "masked_fill"): masked_fill,
    ("paddle", "amax"): amax,
    ("paddle.pir:Value", "amax"): amax,
    ("paddle:Tensor", "amax"): amax,
    ("paddle", "amin"): amin,
    ("paddle.pir:Value", "amin"): amin,
    ("paddle:Tensor", "amin"): amin,
    ("paddle.nn.functional", "pixel_unshuffle"): pixel_unshuffle,
    ("paddle.nn.functional", "pad"): pad,
    ("paddle.nn.functional", "interpolate"): _sized("interpolate"),
    ("paddle.nn.functional", "upsample"): _sized("upsample"),
    ("paddle.nn.functional", "celu"): celu,
    ("paddle.nn.functional.activation", "celu"): celu,
    ("paddle.nn.layer.rnn", "_rnn_static_graph"): rnn_steps,
    ("paddle.nn.functional", "softplus"): softplus,
    ("paddle.nn.functional.activation", "softplus"): softplus,
    ("paddle.nn.functional", "nll_loss"): nll_loss,
    ("paddle.nn.functional.loss", "nll_loss"): nll_loss,
    ("paddle.nn.functional", "label_smooth"): label_smooth,
    ("paddle.nn.functional.common", "label_smooth"): label_smooth,
}


def convertible_ops() -> Any:
    """Swap in the convertible implementations while the model is traced."""
    from lossgraph.exporters.common import swapped

    return swapped(REPLACEMENTS, ORIGINALS)
