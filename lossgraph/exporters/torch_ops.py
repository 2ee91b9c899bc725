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
        return _adaptive(input, output_size, dims, lambda t, axis: t.amax(axis, keepdim=True))

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

    from lossgraph.exporters.common import fold_one_hot, pairs

    size, kernel, dil, pad, step = (pairs(v) for v in (output_size, kernel_size, dilation, padding, stride))
    if input.dim() != 3 or None in (size, kernel, dil, pad, step):
        return ORIGINALS[("torch.nn.functional", "fold")](input, output_size, kernel_size, dilation, padding, stride)
    n, rows, _ = input.shape
    blocks = [(size[k] + 2 * pad[k] - dil[k] * (kernel[k] - 1) - 1) // step[k] + 1 for k in range(2)]
    channels = rows // (kernel[0] * kernel[1])
    weight = torch.tensor(fold_one_hot(channels, kernel), dtype=input.dtype)
    return torch.nn.functional.conv_transpose2d(
        input.reshape(n, rows, *blocks), weight, stride=step, padding=pad, groups=channels, dilation=dil)


#: (module, attribute) -> its traceable stand-in
STAND_INS = {
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
