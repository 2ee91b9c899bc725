"""ONNX's loss ops. SoftmaxCrossEntropyLoss is LogSoftmax over the class axis followed by
NegativeLogLikelihoodLoss; both share one backward."""

from __future__ import annotations

from lossgraph.autodiff.registry import grad_rule
from lossgraph.autodiff.rules.nn import log_softmax_backward


def _reduction(ctx) -> str:
    return ctx.attr("reduction", "mean")


def nll_input_grad(ctx, dy: str, log_probs: str, target: str, weight: str | None) -> str:
    """Gradient w.r.t. the log-probabilities [N, C, d...] of NLL(log_probs, target, weight):
    -w[t] * coefficient at the target class, zero elsewhere and for ignored targets."""
    shape = ctx.shape(log_probs)
    target_shape = ctx.shape(target)
    ignore = ctx.attr("ignore_index")
    if ignore is not None:
        valid = ctx.op("Not", ctx.op("Equal", target, ctx.scalar(ignore, target)))
        safe_target = ctx.where(valid, target, ctx.scalar(0, target))
    else:
        valid, safe_target = None, target
    if weight is not None:
        target_weight = ctx.op("Gather", weight, safe_target, axis=0)
    else:
        target_weight = ctx.expand(ctx.scalar(1.0, log_probs), target_shape)
    if valid is not None:
        target_weight = ctx.where(valid, target_weight, ctx.scalar(0.0, log_probs))
    reduction = _reduction(ctx)
    if reduction == "none":
        per_item = dy
    elif reduction == "sum":
        per_item = ctx.expand(dy, target_shape)
    else:
        total = ctx.reduce_sum(target_weight, list(range(len(target_shape))), keepdims=False)
        per_item = ctx.expand(ctx.div(dy, total), target_shape)
    coefficient = ctx.neg(ctx.mul(per_item, target_weight))
    zeros = ctx.zeros(shape, log_probs)
    unsqueeze = ctx.ints([1])
    return ctx.op(
        "ScatterElements",
        zeros,
        ctx.op("Unsqueeze", safe_target, unsqueeze),
        ctx.op("Unsqueeze", coefficient, unsqueeze),
        axis=1,
    )


@grad_rule("NegativeLogLikelihoodLoss", nondiff=(1,))
def nll_grad(ctx, dys):
    log_probs, target = ctx.inputs[:2]
    weight = ctx.input(2)
    d_input = nll_input_grad(ctx, dys[0], log_probs, target, weight) if ctx.wants(0) else None
    if weight is not None and ctx.wants(2):
        raise_weight_grad(ctx)
    return [d_input, None, None]


def raise_weight_grad(ctx) -> None:
    from lossgraph.errors import UnsupportedOpError

    raise UnsupportedOpError(
        f"No gradient w.r.t. the class weights of {ctx.node.op_type} (node {ctx.node.name!r}); "
        f"class weights are treated as constants."
    )


@grad_rule("SoftmaxCrossEntropyLoss", nondiff=(1,))
def softmax_cross_entropy_grad(ctx, dys):
    scores, target = ctx.inputs[:2]
    weight = ctx.input(2)
    if weight is not None and ctx.wants(2):
        raise_weight_grad(ctx)
    log_probs = ctx.ensure_output(1, ctx.elem_type(scores), ctx.shape(scores))
    grad = None
    if dys[0] is not None:
        grad = nll_input_grad(ctx, dys[0], log_probs, target, weight)
    if len(dys) > 1 and dys[1] is not None:
        grad = dys[1] if grad is None else ctx.add(grad, dys[1])
    if grad is None:
        return [None, None, None]
    return [log_softmax_backward(ctx, grad, log_probs, 1), None, None]
