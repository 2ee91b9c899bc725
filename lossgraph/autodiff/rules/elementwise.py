"""Element-wise ops. Broadcasting rules return gradients in the output's shape; the builder
un-broadcasts. Subgradients follow the framework op each node was exported from: by default
PyTorch's and Paddle's shared ones (relu'(0) = 0, abs'(0) = 0, leaky_relu'(0) = slope, clamp
passes the gradient at its bounds, max/min split the gradient evenly between ties), and where an
exporter marked the node (``lossgraph.graph.TIE_KEY``) that op's own: hardtanh and relu6 pass
nothing at their bounds, torch's clamp with tensor bounds gives a tie to x whole, Paddle's
leaky_relu has slope 1 at 0."""

from __future__ import annotations

import math

from lossgraph.autodiff.registry import grad_rule, non_differentiable
from lossgraph.graph import TIE_KEY, node_meta


def tie(ctx) -> str | None:
    """The node's tie convention, as its exporter marked it (None: the op's default rule)."""
    return node_meta(ctx.node, TIE_KEY)

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
    """slope alpha + (1 - alpha) * [x > 0]: alpha at x = 0, as PyTorch; [x >= 0] where the node
    is marked ``positive`` (Paddle's leaky_relu: slope 1 at 0)."""
    x = ctx.inputs[0]
    alpha = ctx.attr("alpha", 0.01)
    if tie(ctx) == "positive":
        at_least_zero = ctx.op("GreaterOrEqual", x, ctx.scalar(0.0, x))
        positive = ctx.op("CastLike", at_least_zero, x)
    else:
        positive = ctx.op("CastLike", _positive(ctx, x), x)
    slope = ctx.add(ctx.mul(positive, ctx.scalar(1.0 - alpha, x)), ctx.scalar(alpha, x))
    return [ctx.mul(dys[0], slope)]


@grad_rule("Elu")
def elu_grad(ctx, dys):
    x, y = ctx.inputs[0], ctx.outputs[0]
    alpha = ctx.scalar(ctx.attr("alpha", 1.0), x)
    negative = ctx.mul(dys[0], ctx.add(y, alpha))  # alpha*exp(x) = y + alpha for x <= 0
    return [ctx.where(_positive(ctx, x), dys[0], negative)]


@grad_rule("Selu")
def selu_grad(ctx, dys):
    """gamma where x > 0, gamma alpha exp(x) at and below 0 (torch and Paddle)."""
    x = ctx.inputs[0]
    gamma = ctx.scalar(ctx.attr("gamma", 1.0507009873554805), x)
    alpha = ctx.scalar(ctx.attr("alpha", 1.6732632423543772), x)
    negative = ctx.mul(ctx.mul(gamma, alpha), ctx.op("Exp", x))
    return [ctx.mul(dys[0], ctx.where(_positive(ctx, x), gamma, negative))]


@grad_rule("Celu")
def celu_grad(ctx, dys):
    """1 where x > 0, exp(x / alpha) at and below 0 (equal at 0)."""
    x = ctx.inputs[0]
    alpha = ctx.scalar(ctx.attr("alpha", 1.0), x)
    negative = ctx.op("Exp", ctx.div(x, alpha))
    return [ctx.mul(dys[0], ctx.where(_positive(ctx, x), ctx.scalar(1.0, x), negative))]


@grad_rule("PRelu", broadcasting=True)
def prelu_grad(ctx, dys):
    """x where x > 0, slope * x else: dx = slope at and below 0 (torch and Paddle),
    dslope = x where x <= 0."""
    (dy,) = dys
    x, slope = ctx.inputs
    positive = _positive(ctx, x)
    dx = ctx.mul(dy, ctx.where(positive, ctx.scalar(1.0, x), slope)) if ctx.wants(0) else None
    dslope = ctx.where(positive, ctx.scalar(0.0, x), ctx.mul(dy, x)) if ctx.wants(1) else None
    return [dx, dslope]


@grad_rule("ThresholdedRelu")
def thresholded_relu_grad(ctx, dys):
    """x where x > alpha, 0 else: 1 above alpha, nothing at it."""
    x = ctx.inputs[0]
    return [ctx.masked(dys[0], ctx.op("Greater", x, ctx.scalar(ctx.attr("alpha", 1.0), x)))]


@grad_rule("Shrink")
def shrink_grad(ctx, dys):
    """hardshrink / softshrink: 1 where x < -lambd or x > lambd, nothing at the bounds."""
    x = ctx.inputs[0]
    lambd = ctx.attr("lambd", 0.5)
    outside = ctx.op("Or", ctx.op("Less", x, ctx.scalar(-lambd, x)),
                     ctx.op("Greater", x, ctx.scalar(lambd, x)))
    return [ctx.masked(dys[0], outside)]


@grad_rule("Softsign")
def softsign_grad(ctx, dys):
    """x / (1 + |x|): 1 / (1 + |x|)^2."""
    x = ctx.inputs[0]
    denominator = ctx.add(ctx.scalar(1.0, x), ctx.op("Abs", x))
    return [ctx.div(dys[0], ctx.mul(denominator, denominator))]


@grad_rule("Mish")
def mish_grad(ctx, dys):
    """x tanh(softplus(x)): t + x (1 - t^2) sigmoid(x), t = tanh(softplus(x))."""
    x = ctx.inputs[0]
    t = ctx.op("Tanh", ctx.op("Softplus", x))
    one = ctx.scalar(1.0, x)
    slope = ctx.add(t, ctx.mul(ctx.mul(x, ctx.sub(one, ctx.mul(t, t))), ctx.op("Sigmoid", x)))
    return [ctx.mul(dys[0], slope)]


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


@grad_rule("Gelu")
def gelu_grad(ctx, dys):
    """GELU (opset 20), exact: Phi(x) + x phi(x); ``approximate="tanh"``: with
    u = sqrt(2/pi) (x + 0.044715 x^3) and t = tanh(u), 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx."""
    x = ctx.inputs[0]
    one = ctx.scalar(1.0, x)
    half = ctx.scalar(0.5, x)
    if ctx.attr("approximate", "none") == "tanh":
        c = ctx.scalar(math.sqrt(2.0 / math.pi), x)
        k = ctx.scalar(0.044715, x)
        x2 = ctx.mul(x, x)
        t = ctx.op("Tanh", ctx.mul(c, ctx.add(x, ctx.mul(k, ctx.mul(x2, x)))))
        du = ctx.mul(c, ctx.add(one, ctx.mul(ctx.scalar(3 * 0.044715, x), x2)))
        slope = ctx.add(ctx.mul(half, ctx.add(one, t)),
                        ctx.mul(ctx.mul(half, x), ctx.mul(ctx.sub(one, ctx.mul(t, t)), du)))
    else:
        cdf = ctx.mul(half, ctx.add(one, ctx.op("Erf", ctx.mul(x, ctx.scalar(math.sqrt(0.5), x)))))
        pdf = ctx.mul(ctx.scalar(1.0 / math.sqrt(2.0 * math.pi), x),
                      ctx.op("Exp", ctx.mul(ctx.scalar(-0.5, x), ctx.mul(x, x))))
        slope = ctx.add(cdf, ctx.mul(x, pdf))
    return [ctx.mul(dys[0], slope)]


@grad_rule("Sin")
def sin_grad(ctx, dys):
    return [ctx.mul(dys[0], ctx.op("Cos", ctx.inputs[0]))]


@grad_rule("Cos")
def cos_grad(ctx, dys):
    return [ctx.neg(ctx.mul(dys[0], ctx.op("Sin", ctx.inputs[0])))]


@grad_rule("Tan")
def tan_grad(ctx, dys):
    y = ctx.outputs[0]
    return [ctx.mul(dys[0], ctx.add(ctx.scalar(1.0, y), ctx.mul(y, y)))]


@grad_rule("Sinh")
def sinh_grad(ctx, dys):
    return [ctx.mul(dys[0], ctx.op("Cosh", ctx.inputs[0]))]


@grad_rule("Cosh")
def cosh_grad(ctx, dys):
    return [ctx.mul(dys[0], ctx.op("Sinh", ctx.inputs[0]))]


def _over_root(ctx, dy: str, radicand: str) -> str:
    return ctx.div(dy, ctx.op("Sqrt", radicand))


@grad_rule("Asin")
def asin_grad(ctx, dys):
    x = ctx.inputs[0]
    return [_over_root(ctx, dys[0], ctx.sub(ctx.scalar(1.0, x), ctx.mul(x, x)))]


@grad_rule("Acos")
def acos_grad(ctx, dys):
    x = ctx.inputs[0]
    return [ctx.neg(_over_root(ctx, dys[0], ctx.sub(ctx.scalar(1.0, x), ctx.mul(x, x))))]


@grad_rule("Asinh")
def asinh_grad(ctx, dys):
    x = ctx.inputs[0]
    return [_over_root(ctx, dys[0], ctx.add(ctx.mul(x, x), ctx.scalar(1.0, x)))]


@grad_rule("Acosh")
def acosh_grad(ctx, dys):
    x = ctx.inputs[0]
    return [_over_root(ctx, dys[0], ctx.sub(ctx.mul(x, x), ctx.scalar(1.0, x)))]


@grad_rule("Atan")
def atan_grad(ctx, dys):
    x = ctx.inputs[0]
    return [ctx.div(dys[0], ctx.add(ctx.scalar(1.0, x), ctx.mul(x, x)))]


@grad_rule("Atanh")
def atanh_grad(ctx, dys):
    x = ctx.inputs[0]
    return [ctx.div(dys[0], ctx.sub(ctx.scalar(1.0, x), ctx.mul(x, x)))]


@grad_rule("Clip", nondiff=(1, 2))
def clip_grad(ctx, dys):
    """clamp/clip: the gradient passes where min <= x <= max (bounds included); where the node is
    marked ``open`` (hardtanh, relu6), only where min < x < max."""
    x = ctx.inputs[0]
    inside = None
    tests = ((1, "Greater"), (2, "Less")) if tie(ctx) == "open" else (
        (1, "GreaterOrEqual"), (2, "LessOrEqual"))
    for index, op in tests:
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
    """Max/Min over several inputs: each input equal to the result gets dy / (number of ties);
    where the node is marked ``first`` (torch's clamp with tensor bounds), the first input equal
    to the result gets dy whole."""
    (dy,) = dys
    y = ctx.outputs[0]
    if tie(ctx) == "first":
        return _first_takes_ties(ctx, dy, y)
    masks = [ctx.op("CastLike", ctx.op("Equal", x, y), y) for x in ctx.inputs]
    count = masks[0] if len(masks) == 1 else ctx.op("Sum", *masks)
    share = ctx.div(dy, count)
    return [ctx.mul(share, mask) if ctx.wants(i) else None for i, mask in enumerate(masks)]


def _first_takes_ties(ctx, dy: str, y: str) -> list:
    taken = None  # where an earlier input already equals the result
    grads = []
    for i, x in enumerate(ctx.inputs):
        equal = ctx.op("Equal", x, y)
        mine = equal if taken is None else ctx.op("And", equal, ctx.op("Not", taken))
        grads.append(ctx.masked(dy, mine) if ctx.wants(i) else None)
        taken = equal if taken is None else ctx.op("Or", taken, equal)
    return grads


@grad_rule("HardSigmoid")
def hard_sigmoid_grad(ctx, dys):
    """alpha where 0 < alpha*x + beta < 1, else 0 (torch and Paddle: nothing at the bounds)."""
    x = ctx.inputs[0]
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    h = ctx.add(ctx.mul(x, ctx.scalar(alpha, x)), ctx.scalar(beta, x))
    inside = ctx.op("And", ctx.op("Greater", h, ctx.scalar(0.0, x)),
                    ctx.op("Less", h, ctx.scalar(1.0, x)))
    return [ctx.masked(ctx.mul(dys[0], ctx.scalar(alpha, x)), inside)]


@grad_rule("HardSwish")
def hard_swish_grad(ctx, dys):
    """x * hardsigmoid(x) (alpha 1/6, beta 1/2): 0 where h <= 0, 1 where h >= 1 (x >= 3 gives 1
    in torch and Paddle alike), 2 alpha x + beta between."""
    x = ctx.inputs[0]
    alpha, beta = 1.0 / 6.0, 0.5
    h = ctx.add(ctx.mul(x, ctx.scalar(alpha, x)), ctx.scalar(beta, x))
    ramp = ctx.add(ctx.mul(x, ctx.scalar(2.0 * alpha, x)), ctx.scalar(beta, x))
    slope = ctx.where(ctx.op("GreaterOrEqual", h, ctx.scalar(1.0, x)), ctx.scalar(1.0, x), ramp)
    return [ctx.masked(ctx.mul(dys[0], slope), ctx.op("Greater", h, ctx.scalar(0.0, x)))]


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
