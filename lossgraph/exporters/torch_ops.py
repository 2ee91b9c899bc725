"""Translations that replace torch.onnx's own where it is not faithful to eager PyTorch.

Passed to ``torch.onnx.export(custom_translation_table=...)``. Each entry says what the stock
translation gets wrong. :func:`traceable` swaps in, while the model is traced, torch functions
that torch.export cannot trace, each for one computing the same.
"""

from __future__ import annotations

from typing import Any


def _detect_is_causal_mask(mask: Any, is_causal: bool | None = None, size: int | None = None) -> bool:
    """torch.nn.Transformer's check of whether a mask is the causal one compares the mask's
    values (torch.equal), which torch.export cannot trace. Only a fast path hangs on it: the
    mask itself is applied either way, so the traced layer takes the mask as given."""
    return bool(is_causal)


def gaussian_nll_loss(input: Any, target: Any, var: Any, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean") -> Any:
    """torch's gaussian_nll_loss without its check that no variance is negative, a
    data-dependent branch torch.export cannot trace (the eager run at export has checked the
    values). The same formula: var clamped below at eps outside autograd (the gradient passes
    to var as if unclamped), 0.5 (log var + (input - target)^2 / var)."""
    import math

    import torch

    if not torch.is_tensor(var):
        var = var * torch.ones_like(input)
    elif var.size() != input.size() and input.size()[:-1] == var.size():
        var = torch.unsqueeze(var, -1)
    var = var + (var.clamp(min=eps) - var).detach()
    loss = 0.5 * (torch.log(var) + (input - target) ** 2 / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def _adaptive(x: Any, output_size: Any, dims: int, reduce: Any) -> Any:
    import torch

    from lossgraph.exporters.common import adaptive_pool

    return adaptive_pool(x, tuple(x.shape), output_size, x.dim() - dims,
                         lambda t, axis, a, b: t.narrow(axis, a, b - a), reduce,
                         lambda parts, axis: torch.cat(parts, axis))


def _adaptive_max(dims: int) -> Any:
    name = f"adaptive_max_pool{dims}d"

    def pool(input: Any, output_size: Any, return_indices: bool = False) -> Any:
        """torch's adaptive max pool, which the exporter has no translation for, as maxima of
        its windows (uneven ones included), axis by axis; with indices, torch's own."""
        if return_indices:
            return ORIGINALS[("torch.nn.functional", name)](input, output_size, return_indices)
        # max(dim) (not amax): a tie gives its gradient to one element, as torch's pool does
        return _adaptive(input, output_size, dims, lambda t, axis: t.max(axis, keepdim=True).values)

    pool.__name__ = name
    return pool


def adaptive_avg_pool3d(input: Any, output_size: Any) -> Any:
    """torch's adaptive_avg_pool3d, which the exporter has no translation for, as means of its
    windows, axis by axis."""
    return _adaptive(input, output_size, 3, lambda t, axis: t.mean(axis, keepdim=True))


def fold(input: Any, output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
         stride: Any = 1) -> Any:
    """torch's Fold (col2im), which exports as Col2Im (no gradient rule), as the ConvTranspose
    of one-hot kernels that adds every column entry into its place; an unbatched input goes
    to torch's own."""
    import torch

    from lossgraph.exporters.common import fold_blocks, fold_one_hot, pairs

    size, kernel, dil, pad, step = (pairs(v) for v in (output_size, kernel_size, dilation, padding, stride))
    if input.dim() != 3 or None in (size, kernel, dil, pad, step):
        return ORIGINALS[("torch.nn.functional", "fold")](input, output_size, kernel_size, dilation, padding, stride)
    n, rows, _ = input.shape
    blocks = fold_blocks(size, kernel, step, pad, dil)
    if blocks is None:  # the blocks leave a margin the stride never reaches: torch's own
        return ORIGINALS[("torch.nn.functional", "fold")](input, output_size, kernel_size, dilation, padding, stride)
    channels = rows // (kernel[0] * kernel[1])
    weight = torch.tensor(fold_one_hot(channels, kernel), dtype=input.dtype)
    return torch.nn.functional.conv_transpose2d(
        input.reshape(n, rows, *blocks), weight, stride=step, padding=pad, groups=channels, dilation=dil)


def rrelu(input: Any, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          inplace: bool = False) -> Any:
    """torch's rrelu, whose exported form has no translation: in eval mode a leaky ReLU of slope
    (lower + upper) / 2, as torch computes it; in training (random slopes) refused."""
    import torch

    from lossgraph.exporters.common import rrelu_slope

    return torch.nn.functional.leaky_relu(input, rrelu_slope(lower, upper, training))


def cdist(x1: Any, x2: Any, p: float = 2.0, compute_mode: str = "use_mm_for_euclid_dist_if_necessary") -> Any:
    """torch.cdist, which the exporter has no translation for, from the pairwise differences:
    the p-norm of x1[i] - x2[j]; a distance of zero passes no gradient, as in torch."""
    import torch

    if p < 1.0:  # no norm (p = 0 counts, p < 1 has no gradient at zero distance): torch's own
        return ORIGINALS[("torch", "cdist")](x1, x2, p, compute_mode)
    diff = (x1.unsqueeze(-2) - x2.unsqueeze(-3)).abs()
    if p == float("inf"):
        return diff.amax(-1)
    if p == 1.0:
        return diff.sum(-1)
    powered = diff.pow(p).sum(-1)
    positive = powered > 0
    return torch.where(positive, torch.where(positive, powered, torch.ones_like(powered)).pow(1.0 / p),
                       torch.zeros_like(powered))


def _sorted_pick(input: Any, dim: int, position: int, keepdim: bool) -> tuple[Any, Any]:
    """The element at ``position`` of ``input`` sorted along ``dim``, and its index."""
    import torch

    values, indices = torch.sort(input, dim=dim)
    value, index = values.narrow(dim, position, 1), indices.narrow(dim, position, 1)
    return (value, index) if keepdim else (value.squeeze(dim), index.squeeze(dim))


def kthvalue(input: Any, k: int, dim: int = -1, keepdim: bool = False) -> Any:
    """torch.kthvalue, which the exporter has no translation for: the k-th of the sorted values."""
    import torch

    return torch.return_types.kthvalue(_sorted_pick(input, dim, k - 1, keepdim))


def median(input: Any, dim: Any = None, keepdim: bool = False) -> Any:
    """torch.median, which the exporter has no translation for: the lower of the middle values
    of the sorted ones (of all values, without ``dim``)."""
    import torch

    if dim is None:
        flat = input.reshape(-1)
        return _sorted_pick(flat, 0, (flat.shape[0] - 1) // 2, False)[0]
    return torch.return_types.median(_sorted_pick(input, dim, (input.shape[dim] - 1) // 2, keepdim))


def cummax(input: Any, dim: int) -> Any:
    """torch.cummax, which the exporter has no translation for: each prefix's maximum, and the
    index of its last occurrence, as torch's."""
    import torch

    size = input.shape[dim]
    prefixes = [input.narrow(dim, 0, i + 1) for i in range(size)]
    values = torch.stack([part.amax(dim) for part in prefixes], dim)
    last = [i - part.flip(dim).argmax(dim) for i, part in enumerate(prefixes)]
    return torch.return_types.cummax((values, torch.stack(last, dim)))


def multilabel_margin_loss(input: Any, target: Any, size_average: Any = None, reduce: Any = None,
                           reduction: str = "mean") -> Any:
    """torch's multilabel_margin_loss, which the exporter mistranslates: for each sample, the
    hinge max(0, 1 - (x[y] - x[i])) of every target label y (the labels before the first -1)
    against every other class i, summed and divided by the number of classes."""
    import torch

    if size_average is not None or reduce is not None or input.dim() != 2:
        return ORIGINALS[("torch.nn.functional", "multilabel_margin_loss")](
            input, target, size_average, reduce, reduction)
    n, classes = input.shape
    ended = torch.cat([target == -1, torch.ones_like(target[:, :1], dtype=torch.bool)], 1)
    count = ended.to(torch.int64).argmax(1, keepdim=True)  # labels before the first -1
    valid = (torch.arange(classes).unsqueeze(0) < count).to(input.dtype)  # [n, j]
    labels = target.clamp(min=0)
    chosen = torch.nn.functional.one_hot(labels, classes).to(input.dtype) * valid.unsqueeze(-1)
    others = 1.0 - chosen.sum(1).clamp(max=1.0)  # [n, i]: classes no label names
    scores = torch.gather(input, 1, labels)  # [n, j]
    hinge = torch.relu(1.0 - scores.unsqueeze(-1) + input.unsqueeze(1))  # [n, j, i]
    loss = (hinge * valid.unsqueeze(-1) * others.unsqueeze(1)).sum((1, 2)) / classes
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def cumprod(input: Any, dim: int, *, dtype: Any = None, out: Any = None) -> Any:
    """torch.cumprod, which the exporter has no translation for, as products of shifted copies
    (log2 of the axis's length of them)."""
    import torch

    from lossgraph.exporters.common import prefix_products

    if out is not None:
        return ORIGINALS[("torch", "cumprod")](input, dim, dtype=dtype, out=out)
    if dtype is not None:
        input = input.to(dtype)
    dim %= input.dim()
    size = input.shape[dim]

    def shifted(x: Any, k: int) -> Any:
        ones = torch.ones_like(x.narrow(dim, 0, k))
        return torch.cat([ones, x.narrow(dim, 0, size - k)], dim)

    return prefix_products(input, size, shifted)


#: (module, attribute) -> its traceable stand-in
STAND_INS = {
    ("torch", "cumprod"): cumprod,
    ("torch:Tensor", "cumprod"): cumprod,
    ("torch", "cdist"): cdist,
    ("torch", "kthvalue"): kthvalue,
    ("torch:Tensor", "kthvalue"): kthvalue,
    ("torch", "median"): median,
    ("torch:Tensor", "median"): median,
    ("torch", "cummax"): cummax,
    ("torch:Tensor", "cummax"): cummax,
    ("torch.nn.functional", "multilabel_margin_loss"): multilabel_margin_loss,
    ("torch.nn.functional", "rrelu"): rrelu,
    ("torch.nn.modules.transformer", "_detect_is_causal_mask"): _detect_is_causal_mask,
    ("torch.nn.functional", "gaussian_nll_loss"): gaussian_nll_loss,
    ("torch.nn.functional", "adaptive_max_pool1d"): _adaptive_max(1),
    ("torch.nn.functional", "adaptive_max_pool2d"): _adaptive_max(2),
    ("torch.nn.functional", "adaptive_max_pool3d"): _adaptive_max(3),
    ("torch.nn.functional", "adaptive_avg_pool3d"): adaptive_avg_pool3d,
    ("torch.nn.functional", "fold"): fold,
}
#: what the stand-ins replaced, while they are in place
ORIGINALS: dict[tuple[str, str], Any] = {}


def traceable() -> Any:
    """Swap in the traceable stand-ins while the model is traced."""
    from lossgraph.exporters.common import swapped

    return swapped(STAND_INS, ORIGINALS)


def no_grad_kept() -> Any:
    """A mode that keeps ``torch.no_grad()`` blocks in the traced forward.

    torch.export records a no_grad block as a ``wrap_with_set_grad_enabled`` call that its
    decompositions inline, so the exported graph would let gradients through a value computed
    without them (a scale taken under no_grad, a power iteration, an EMA buffer updated from a
    weight): a silent wrong gradient. While this mode is on, each op run with grad disabled gets
    its inputs that require grad detached first, which the exporter writes as stop-gradient
    markers; the tensor an in-place op or ``out=`` writes into is left as it is (its writes must
    reach it), and so are ``detach`` and ``.data``. Grad disabled on entry (tracing under
    no_grad) marks nothing."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    kept = (torch.Tensor.detach, torch.Tensor.detach_, torch.detach, torch.Tensor.data.__get__)

    def written(func: Any, args: Any, kwargs: Any) -> set[int]:
        """The tensors ``func`` writes into: an in-place method's self, ``out=``."""
        name = getattr(func, "__name__", "")
        targets = set()
        in_place = (name.endswith("_") and not name.endswith("__")) or (
            name.startswith("__i") and name.endswith("__"))
        if in_place and args and isinstance(args[0], torch.Tensor):
            targets.add(id(args[0]))
        out = (kwargs or {}).get("out")
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                targets.add(id(tensor))
        return targets

    class NoGradKept(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.outer = torch.is_grad_enabled()

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if self.outer and not torch.is_grad_enabled() and func not in kept:
                targets = written(func, args, kwargs)

                def cut(value: Any) -> Any:
                    if isinstance(value, torch.Tensor) and value.requires_grad and id(value) not in targets:
                        return value.detach()
                    return value

                args, kwargs = tree_map(cut, (tuple(args), kwargs))
            return func(*args, **kwargs)

    return NoGradKept()


def translation_table() -> dict[Any, Any]:
    """The custom translations lossgraph registers with the torch exporter."""
    import torch

    aten = torch.ops.aten
    return {aten.cross_entropy_loss.default: cross_entropy_loss}


def cross_entropy_loss(
    self: Any,
    target: Any,
    weight: Any = None,
    reduction: int = 1,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Any:
    """aten::cross_entropy_loss with label smoothing.

    The stock translation drops ``label_smoothing`` (ONNX's SoftmaxCrossEntropyLoss has none), so
    ``F.cross_entropy(..., label_smoothing=0.1)`` exported silently as the unsmoothed loss. This
    follows ATen's ``cross_entropy_loss_label_smoothing``: (1 - e) * nll + e / C * smooth, where
    smooth sums -w[c] * log p[c] over classes, ignored targets count zero, and the weighted mean
    divides by the total weight of the non-ignored targets.
    """
    from onnxscript import opset18 as op

    names = {0: "none", 1: "mean", 2: "sum"}
    if label_smoothing == 0.0:
        result, _ = op.SoftmaxCrossEntropyLoss(
            self, target, weight, reduction=names[reduction], ignore_index=ignore_index
        )
        return result
    log_p = op.LogSoftmax(self, axis=1)
    nll = op.NegativeLogLikelihoodLoss(
        log_p, target, weight, reduction=names[reduction], ignore_index=ignore_index
    )
    one_axis = op.Constant(value_ints=[1])
    if weight is not None:
        rank = len(self.shape) if self.shape is not None else 2
        shape = op.Constant(value_ints=[1, -1] + [1] * (rank - 2))
        weighted = op.Mul(log_p, op.Reshape(weight, shape))
    else:
        weighted = log_p
    smooth = op.Neg(op.ReduceSum(weighted, one_axis, keepdims=0))
    ignored = op.Equal(target, op.CastLike(op.Constant(value_int=ignore_index), target))
    zero = op.CastLike(op.Constant(value_float=0.0), smooth)
    smooth = op.Where(ignored, zero, smooth)
    if reduction == 2:
        smooth = op.ReduceSum(smooth, keepdims=0)
    elif reduction == 1:
        if weight is not None:
            safe_target = op.Where(ignored, op.CastLike(op.Constant(value_int=0), target), target)
            target_weight = op.Where(ignored, zero, op.Gather(weight, safe_target))
            denominator = op.ReduceSum(target_weight, keepdims=0)
        else:
            kept = op.Cast(op.Not(ignored), to=1)
            denominator = op.CastLike(op.ReduceSum(kept, keepdims=0), smooth)
        smooth = op.Div(op.ReduceSum(smooth, keepdims=0), denominator)
    classes = op.CastLike(op.Gather(op.Shape(self), op.Constant(value_int=1)), smooth)
    keep = op.CastLike(op.Constant(value_float=1.0 - label_smoothing), nll)
    eps = op.CastLike(op.Constant(value_float=label_smoothing), smooth)
    return op.Add(op.Mul(keep, nll), op.Div(op.Mul(eps, smooth), classes))
