"""Element-wise ops. Broadcasting rules return gradients in the output's shape; the builder
un-broadcasts. Subgradients follow PyTorch: relu'(0) = 0, abs'(0) = 0, leaky_relu'(0) = slope,
clamp passes the gradient at its bounds, max/min split the gradient evenly between ties."""

from __future__ import annotations

from lossgraph.autodiff.registry import grad_rule, non_differentiable

non_differentiable(
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round", "BitShift", "BitwiseAnd", "BitwiseOr",
    "BitwiseXor", "BitwiseNot", "Mod",
)


@grad_rule("Identity")
def identity_grad(ctx, dys):
    return [dys[0]]


@grad_rule("Add", broadcasting=True)
def add_grad(ctx, dys):
    (dy,) = dys
    return [dy, dy]


@grad_rule("Sub", broadcasting=True)
def sub_grad(ctx, dys):
    (dy,) = dys
    return [dy, ctx.neg(dy) if ctx.wants(1) else None]


@grad_rule("Mul", broadcasting=True)
def mul_grad(ctx, dys):
    (dy,) = dys
    a, b = ctx.inputs
    return [ctx.mul(dy, b) if ctx.wants(0) else None, ctx.mul(dy, a) if ctx.wants(1) else None]


@grad_rule("Div", broadcasting=True)
def div_grad(ctx, dys):
    (dy,) = dys
    a, b = ctx.inputs
    da = ctx.div(dy, b) if ctx.wants(0) else None
    # d(a/b)/db = -a/b^2 = -y/b
    db = ctx.neg(ctx.div(ctx.mul(dy, ctx.outputs[0]), b)) if ctx.wants(1) else None
    return [da, db]


@grad_rule("Neg")
def neg_grad(ctx, dys):
    return [ctx.neg(dys[0])]


@grad_rule("Abs")
def abs_grad(ctx, dys):
    # Sign(0) = 0: abs'(0) = 0 as in PyTorch
    return [ctx.mul(dys[0], ctx.op("Sign", ctx.inputs[0]))]


@grad_rule("Exp")
def exp_grad(ctx, dys):
    return [ctx.mul(dys[0], ctx.outputs[0])]


@grad_rule("Log")
def log_grad(ctx, dys):
    return [ctx.div(dys[0], ctx.inputs[0])]


@grad_rule("Sqrt")
def sqrt_grad(ctx, dys):
    y = ctx.outputs[0]
    return [ctx.div(dys[0], ctx.mul(ctx.scalar(2.0, y), y))]


@grad_rule("Reciprocal")
def reciprocal_grad(ctx, dys):
    y = ctx.outputs[0]
    return [ctx.neg(ctx.mul(dys[0], ctx.mul(y, y)))]


@grad_rule("Pow", broadcasting=True)
def pow_grad(ctx, dys):
    """d(a^b)/da = b a^(b-1) (0 where b == 0); d(a^b)/db = a^b log(a) (0 where a == 0 and
    b >= 0), PyTorch's masking."""
    (dy,) = dys
    a, b = ctx.inputs
    y = ctx.outputs[0]
    b_float = b if ctx.elem_type(b) == ctx.elem_type(a) else ctx.op("CastLike", b, a)
    zero = ctx.scalar(0.0, a)
    da = db = None
    if ctx.wants(0):
        power = ctx.op("Pow", a, ctx.sub(b_float, ctx.scalar(1.0, a)))
        da = ctx.mul(dy, ctx.mul(b_float, power))
        da = ctx.where(ctx.op("Equal", b_float, zero), ctx.op("CastLike", zero, da), da)
    if ctx.wants(1):
        db = ctx.mul(dy, ctx.mul(y, ctx.op("Log", a)))
        masked = ctx.op("And", ctx.op("Equal", a, zero), ctx.op("GreaterOrEqual", b_float, zero))
        db = ctx.where(masked, zero, db)
    return [da, db]


def _positive(ctx, x: str) -> str:
    return ctx.op("Greater", x, ctx.scalar(0.0, x))


@grad_rule("Relu")
def relu_grad(ctx, dys):
    return [ctx.masked(dys[0], _positive(ctx, ctx.inputs[0]))]


@grad_rule("LeakyRelu")
def leaky_relu_grad(ctx, dys):
    """slope alpha + (1 - alpha) * [x > 0]: alpha at x = 0, as PyTorch."""
    x = ctx.inputs[0]
    alpha = ctx.attr("alpha", 0.01)
    positive = ctx.op("CastLike", _positive(ctx, x), x)
    slope = ctx.add(ctx.mul(positive, ctx.scalar(1.0 - alpha, x)), ctx.scalar(alpha, x))
    return [ctx.mul(dys[0], slope)]


@grad_rule("Elu")
def elu_grad(ctx, dys):
    x, y = ctx.inputs[0], ctx.outputs[0]
    alpha = ctx.scalar(ctx.attr("alpha", 1.0), x)
    negative = ctx.mul(dys[0], ctx.add(y, alpha))  # alpha*exp(x) = y + alpha for x <= 0
    return [ctx.where(_positive(ctx, x), dys[0], negative)]


@grad_rule("Sigmoid")
def sigmoid_grad(ctx, dys):
    y = ctx.outputs[0]
    return [ctx.mul(dys[0], ctx.mul(y, ctx.sub(ctx.scalar(1.0, y), y)))]


@grad_rule("Tanh")
def tanh_grad(ctx, dys):
    y = ctx.outputs[0]
    return [ctx.mul(dys[0], ctx.sub(ctx.scalar(1.0, y), ctx.mul(y, y)))]


@grad_rule("Softplus")
def softplus_grad(ctx, dys):
    return [ctx.mul(dys[0], ctx.op("Sigmoid", ctx.inputs[0]))]


@grad_rule("Erf")
def erf_grad(ctx, dys):
    x = ctx.inputs[0]
    slope = ctx.op("Exp", ctx.neg(ctx.mul(x, x)))
    return [ctx.mul(dys[0], ctx.mul(ctx.scalar(2.0 / 3.141592653589793**0.5, x), slope))]


@grad_rule("Sin")
def sin_grad(ctx, dys):
    return [ctx.mul(dys[0], ctx.op("Cos", ctx.inputs[0]))]


@grad_rule("Cos")
def cos_grad(ctx, dys):
    return [ctx.neg(ctx.mul(dys[0], ctx.op("Sin", ctx.inputs[0])))]


@grad_rule("Clip", nondiff=(1, 2))
def clip_grad(ctx, dys):
    """PyTorch's clamp: the gradient passes where min <= x <= max (bounds included)."""
    x = ctx.inputs[0]
    inside = None
    for index, op in ((1, "GreaterOrEqual"), (2, "LessOrEqual")):
        bound = ctx.input(index)
        if bound is None:
            continue
        test = ctx.op(op, x, bound)
        inside = test if inside is None else ctx.op("And", inside, test)
    if inside is None:
        return [dys[0]]
    return [ctx.masked(dys[0], inside)]


@grad_rule("Where", nondiff=(0,), broadcasting=True)
def where_grad(ctx, dys):
    (dy,) = dys
    cond = ctx.inputs[0]
    return [
        None,
        ctx.masked(dy, cond) if ctx.wants(1) else None,
        ctx.masked(dy, ctx.op("Not", cond)) if ctx.wants(2) else None,
    ]


def _extremum_grad(ctx, dys):
    """Max/Min over several inputs: each input equal to the result gets dy / (number of ties)."""
    (dy,) = dys
    y = ctx.outputs[0]
    masks = [ctx.op("CastLike", ctx.op("Equal", x, y), y) for x in ctx.inputs]
    count = masks[0] if len(masks) == 1 else ctx.op("Sum", *masks)
    share = ctx.div(dy, count)
    return [ctx.mul(share, mask) if ctx.wants(i) else None for i, mask in enumerate(masks)]


grad_rule("Max", broadcasting=True)(_extremum_grad)
grad_rule("Min", broadcasting=True)(_extremum_grad)


@grad_rule("Sum", broadcasting=True)
def sum_grad(ctx, dys):
    return [dys[0]] * len(ctx.inputs)


@grad_rule("Mean", broadcasting=True)
def mean_grad(ctx, dys):
    share = ctx.div(dys[0], ctx.scalar(float(len(ctx.inputs)), ctx.outputs[0]))
    return [share] * len(ctx.inputs)


@grad_rule("Cast")
def cast_grad(ctx, dys):
    x = ctx.inputs[0]
    if not ctx.b.types[x].is_float:
        return [None]
    return [ctx.cast(dys[0], ctx.elem_type(x))]


@grad_rule("CastLike", nondiff=(1,))
def cast_like_grad(ctx, dys):
    x = ctx.inputs[0]
    if not ctx.b.types[x].is_float:
        return [None, None]
    return [ctx.op("CastLike", dys[0], x), None]
