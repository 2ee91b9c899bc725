"""Reverse-mode automatic differentiation over ONNX graphs.

:class:`GradBuilder` appends to a copy of a forward graph the nodes that compute the gradient of
seeded values (a loss) with respect to chosen values (trainable initializers, graph inputs, or
any intermediate). The work that every rule would otherwise repeat is done here, once:

- only values on a path from a differentiated value to a seed take part ("active" values);
- gradients are symbolic zeros (``None``) until something contributes; none is materialized
  unless an op needs it (e.g. Split with an unused output);
- contributions from several consumers (fan-out) are summed in one ``Sum`` node, or, where
  each is a GEMM product (a weight that several convolutions use), computed as one GEMM
  over the concatenated factors when that moves fewer elements;
- broadcasting ops return gradients in the output's shape and are un-broadcast here;
- nodes marked ``lossgraph.stop_gradient`` (``.detach()`` on either side) pass no gradient.

Backward nodes are named ``<forward node>/grad/<n>`` and carry the forward node's scope and
``lossgraph.grad_of``, so a backward divergence leads back to its forward node. Rules only emit
ops that have rules themselves, so a backward graph can be differentiated again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lossgraph.autodiff.custom_vjp import CustomVjp, vjp_function
from lossgraph.autodiff.registry import NON_DIFFERENTIABLE, RULES, load_rules
from lossgraph.errors import InternalError, UnsupportedOpError
from lossgraph.graph import SCOPE_KEY, SOURCE_KEY, STOP_GRADIENT_KEY, copy_model, node_meta
from lossgraph.runtime import ValueType, constant_values, infer_types

GRAD_OF_KEY = "lossgraph.grad_of"


@dataclass
class GradResult:
    """The extended model and, for every differentiated value, the name of its gradient
    (``None``: the seeds do not depend on it, the gradient is zero)."""

    model: onnx.ModelProto
    grads: dict[str, str | None]


class GradBuilder:
    """Appends backward nodes to a copy of ``model``.

    ``feeds`` (graph inputs by name) are used only where static shape inference falls short.
    """

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None):
        load_rules()
        self.model = copy_model(model)
        self.graph = self.model.graph
        self.opset = next(
            (o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 17
        )
        self.types: dict[str, ValueType] = infer_types(self.model, feeds)
        self.consts = constant_values(self.model, self.types)
        self.producers = {out: node for node in self.graph.node for out in node.output if out}
        self._taken = {v for node in self.graph.node for v in (*node.input, *node.output)}
        self._taken |= {v.name for v in self.graph.input} | {t.name for t in self.graph.initializer}
        self._taken |= {node.name for node in self.graph.node}
        self._counter: dict[str, int] = {}
        #: gradient contributions computed as reshape(A @ B^T), by value (see _merged_products)
        self.products: dict[str, _Product] = {}
        #: carried custom backward passes, by node name
        self.custom_vjps = {
            node.name: vjp for node in self.graph.node if (vjp := CustomVjp.of(node)) is not None
        }

    # --- naming and emission ---------------------------------------------------------------

    def fresh(self, base: str) -> str:
        """A value or node name not used in the graph yet."""
        k = self._counter.get(base, 0)
        while True:
            name = f"{base}/{k}"
            k += 1
            if name not in self._taken:
                self._counter[base] = k
                self._taken.add(name)
                return name

    def emit(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_outputs: int,
        attrs: Mapping[str, Any],
        origin: onnx.NodeProto | None,
    ) -> list[str]:
        """Append one node; it is named and tagged after the forward node it comes from."""
        base = f"{_node_label(origin)}/grad" if origin is not None else "lossgraph/grad"
        name = self.fresh(base)
        outputs = [f"{name}:{i}" for i in range(n_outputs)]
        self._taken.update(outputs)
        node = helper.make_node(op_type, list(inputs), outputs, name=name, **attrs)
        if origin is not None:
            node.metadata_props.add(key=GRAD_OF_KEY, value=_node_label(origin))
            for key in (SCOPE_KEY, SOURCE_KEY):
                value = node_meta(origin, key)
                if value is not None:
                    node.metadata_props.add(key=key, value=value)
        self.graph.node.append(node)
        for out in outputs:
            self.producers[out] = node
        return outputs

    def constant(self, value: np.ndarray, origin: onnx.NodeProto | None) -> str:
        value = np.asarray(value)
        out = self.emit("Constant", [], 1, {"value": numpy_helper.from_array(value)}, origin)[0]
        self.consts[out] = value
        self.types[out] = ValueType(helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        return out

    # --- which values take part -------------------------------------------------------------

    def _active(self, seeds: Iterable[str], wrt: Iterable[str]) -> set[str]:
        """Values that depend on a ``wrt`` value and that a seed depends on, through
        differentiable edges only."""
        requires = {v for v in wrt if self._is_float(v)}
        for node in self.graph.node:
            if self._blocks(node):
                continue
            if any(inp in requires for inp in self._edges(node)):
                # an op without a rule may carry the gradient in any output (a sequence of
                # tensors, say): the backward pass then names it instead of dropping the gradient
                ruled = node.op_type in RULES
                requires.update(o for o in node.output if o and (not ruled or self._is_float(o)))
        contributes = set(seeds)
        for node in reversed(self.graph.node):
            if self._blocks(node) or not any(o in contributes for o in node.output):
                continue
            contributes.update(self._edges(node))
        return requires & contributes

    def _edges(self, node: onnx.NodeProto) -> list[str]:
        """The values a node passes gradient to: its differentiable inputs, or the arguments
        of a carried custom backward."""
        vjp = self.custom_vjps.get(node.name)
        if vjp is not None:
            return list(vjp.args)
        rule = RULES.get(node.op_type)
        nondiff = rule.nondiff if rule else ()
        return [inp for i, inp in enumerate(node.input) if inp and i not in nondiff]

    def _blocks(self, node: onnx.NodeProto) -> bool:
        return node.op_type in NON_DIFFERENTIABLE or node_meta(node, STOP_GRADIENT_KEY) == "1"

    def _is_float(self, name: str) -> bool:
        value_type = self.types.get(name)
        return value_type is not None and value_type.is_float

    # --- the backward pass --------------------------------------------------------------------

    def backward(self, seeds: Mapping[str, str], wrt: Sequence[str]) -> dict[str, str | None]:
        """Gradients of the seeded values w.r.t. ``wrt``. ``seeds`` maps each seeded value to
        the name of its incoming gradient (e.g. the loss to a constant one)."""
        missing = [w for w in wrt if w not in self.types]
        if missing:
            raise InternalError(f"cannot differentiate w.r.t. unknown value(s) {missing}")
        active = self._active(seeds, wrt)
        contributions: dict[str, list[str]] = {v: [g] for v, g in seeds.items()}
        for node in list(self.graph.node)[::-1]:  # a snapshot: emitted nodes are appended
            if self._blocks(node) or not any(o in contributions for o in node.output):
                continue
            if not any(inp in active for inp in self._edges(node)):
                continue
            dys = [self._total(o, contributions) if o in contributions else None for o in node.output]
            self._differentiate(node, dys, active, contributions)
        return {w: self._total(w, contributions) if w in contributions else None for w in wrt}

    def _differentiate(
        self,
        node: onnx.NodeProto,
        dys: list[str | None],
        active: set[str],
        contributions: dict[str, list[str]],
    ) -> None:
        if node.name in self.custom_vjps:
            self._custom_backward(node, dys[0], active, contributions)
            return
        rule = RULES.get(node.op_type)
        if node.domain not in ("", "ai.onnx") or rule is None:
            raise UnsupportedOpError(
                f"No gradient rule for op {node.op_type!r} (domain {node.domain!r}, opset "
                f"{self.opset}) at node {_node_label(node)!r}. Rules exist for: "
                f"{', '.join(sorted(RULES))}."
            )
        wanted = [
            bool(inp) and inp in active and i not in rule.nondiff for i, inp in enumerate(node.input)
        ]
        if not any(wanted):
            return
        ctx = GradContext(self, node, wanted)
        results = list(rule.fn(ctx, dys))
        if any(r is not None for r in results[len(node.input) :]):
            raise InternalError(
                f"rule {node.op_type} returned {len(results)} gradients for {len(node.input)} inputs"
            )
        results = (results + [None] * len(node.input))[: len(node.input)]
        for i, (inp, grad) in enumerate(zip(node.input, results)):
            if grad is None or not wanted[i]:
                continue
            if rule.broadcasting:
                grad = ctx.unbroadcast(grad, self.types[node.output[0]].shape, ctx.shape(inp))
            contributions.setdefault(inp, []).append(grad)

    def _custom_backward(
        self, node: onnx.NodeProto, dy: str, active: set[str], contributions: dict[str, list[str]]
    ) -> None:
        """A carried custom backward: its local function's nodes, inlined with the output's
        gradient in the placeholder's place, give the arguments' gradients."""
        vjp = self.custom_vjps[node.name]
        function = vjp_function(self.model, vjp)
        flat = self.emit("Reshape", [dy, self.constant(np.asarray([-1], np.int64), node)], 1, {}, node)[0]
        pad = self.constant(np.zeros([1], dtype=self.types[node.output[0]].numpy_dtype), node)
        placeholder = self.emit("Concat", [pad, flat], 1, {"axis": 0}, node)[0]
        names = dict(zip(function.input, [placeholder, *vjp.captures]))
        for body_node in function.node:
            inputs = [names.get(v, v) if v else "" for v in body_node.input]
            outputs = self.emit(body_node.op_type, inputs, len(body_node.output), {}, node)
            self.graph.node[-1].attribute.extend(body_node.attribute)
            self.graph.node[-1].domain = body_node.domain
            names.update((old, new) for old, new in zip(body_node.output, outputs) if old)
        for arg, grad in zip(vjp.args, function.output):
            if arg not in active:
                continue
            shape = self.constant(np.asarray(self.types[arg].shape, np.int64), node)
            contributions.setdefault(arg, []).append(
                self.emit("Reshape", [names[grad], shape], 1, {}, node)[0]
            )

    def _total(self, value: str, contributions: dict[str, list[str]]) -> str:
        """The summed gradient of a value: one ``Sum`` node for any fan-out, or one GEMM over
        the concatenated factors where every part is a GEMM product (:meth:`_merged_products`)."""
        parts = contributions[value]
        if len(parts) > 1:
            origin = self.producers.get(value)
            total = self._merged_products(parts) or self.emit("Sum", parts, 1, {}, origin)[0]
            contributions[value] = [total]
        return contributions[value][0]

    def _merged_products(self, parts: list[str]) -> str | None:
        """sum_i reshape(A_i @ B_i^T) as reshape([A_1 ... A_n] @ [B_1 ... B_n]^T), the factors
        concatenated along their inner dimension, where every part is such a product (a weight
        that several convolutions use: :meth:`GradContext.gemm_nt`) and copying the factors
        costs fewer element passes than the Sum over the products. DiscoGAN's generators use
        their 512x256x4x4 kernels twice per cycle, on 4x4 maps: each product (2.1M elements)
        is 6x the size of its factors. The merged nodes are named and tagged after the first
        use's forward node."""
        products = [self.products.get(p) for p in parts]
        if any(p is None for p in products) or len({(p.rows, p.cols, p.shape) for p in products}) > 1:
            return None
        first = products[0]
        inner = sum(p.inner for p in products)
        if inner * (first.rows + first.cols) > (len(parts) + 1) * first.rows * first.cols:
            return None
        dead = {name for p in products for name in p.nodes}
        kept = [node for node in self.graph.node if node.name not in dead]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        for part, product in zip(parts, products):
            del self.products[part]
            self.producers.pop(part, None)
            self.producers.pop(product.gemm, None)
        origin = first.origin
        a = self.emit("Concat", [p.a for p in products], 1, {"axis": 1}, origin)[0]
        b = self.emit("Concat", [p.b for p in products], 1, {"axis": 1}, origin)[0]
        shape = self.constant(np.asarray(first.shape, dtype=np.int64), origin)
        gemm = self.emit("Gemm", [a, b], 1, {"transB": 1}, origin)[0]
        return self.emit("Reshape", [gemm, shape], 1, {}, origin)[0]


@dataclass(frozen=True)
class _Product:
    """reshape(A @ B^T, shape) with A [rows, inner] and B [cols, inner], and its two nodes."""

    a: str
    b: str
    rows: int
    cols: int
    inner: int
    shape: tuple[int, ...]
    gemm: str
    nodes: tuple[str, str]
    origin: onnx.NodeProto = field(compare=False)


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


class GradContext:
    """What a rule sees: its forward node, shapes and types, and helpers that emit nodes."""

    def __init__(self, builder: GradBuilder, node: onnx.NodeProto, wanted: list[bool]):
        self.b = builder
        self.node = node
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self._wanted = wanted

    # --- facts about the forward node ------------------------------------------------------

    @property
    def opset(self) -> int:
        return self.b.opset

    def wants(self, i: int) -> bool:
        """Whether input ``i`` needs a gradient (rules skip expensive work otherwise)."""
        return i < len(self._wanted) and self._wanted[i]

    def input(self, i: int) -> str | None:
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None

    def shape(self, name: str) -> tuple[int, ...]:
        value_type = self.b.types.get(name)
        if value_type is None:
            raise UnsupportedOpError(
                f"The static shape of {name!r} (at node {_node_label(self.node)!r}) is unknown; "
                f"the gradient of {self.node.op_type} needs it."
            )
        return value_type.shape

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def elem_type(self, name: str) -> int:
        return self.b.types[name].elem_type

    def np_dtype(self, name: str) -> np.dtype:
        return self.b.types[name].numpy_dtype

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's value (a string attribute as ``str``), or ``default``."""
        for attr in self.node.attribute:
            if attr.name == name:
                value = helper.get_attribute_value(attr)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def const_value(self, name: str | None) -> np.ndarray | None:
        """The value of a constant input (axes, shapes, pads), or None."""
        if not name:
            return None
        return self.b.consts.get(name)

    def axes(self, input_index: int, attr_name: str = "axes") -> list[int] | None:
        """Axes given as an input (newer opsets) or an attribute; None when absent."""
        name = self.input(input_index)
        if name is not None:
            value = self.const_value(name)
            if value is None:
                raise UnsupportedOpError(
                    f"{self.node.op_type} node {_node_label(self.node)!r} takes computed axes; "
                    f"lossgraph differentiates only constant axes."
                )
            return [int(a) for a in np.asarray(value).reshape(-1)]
        value = self.attr(attr_name)
        return None if value is None else [int(a) for a in value]

    # --- emission ------------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """Emit one node; returns its output name (or the list of names if ``outputs > 1``)."""
        names = self.b.emit(op_type, [i or "" for i in inputs], outputs, attrs, self.node)
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: Any = None) -> str:
        return self.b.constant(np.asarray(value, dtype=dtype), self.node)

    def scalar(self, value: float, like: str) -> str:
        """A 0-d constant with the element type of ``like``."""
        return self.const(np.asarray(value, dtype=self.np_dtype(like)))

    def ints(self, values: Iterable[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def ensure_output(self, index: int, elem_type: int, shape: Sequence[int]) -> str:
        """The name of the forward node's ``index``-th output, adding it (of the given type) if
        the node lacks it (e.g. MaxPool's indices, Dropout's mask)."""
        while len(self.node.output) <= index:
            self.node.output.append("")
        if not self.node.output[index]:
            name = self.b.fresh(f"{_node_label(self.node)}/output{index}")
            self.node.output[index] = name
            self.b.producers[name] = self.node
            self.b.types[name] = ValueType(elem_type, tuple(shape))
        self.outputs = list(self.node.output)
        return self.node.output[index]

    # --- small math --------------------------------------------------------------------------

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.op("Div", a, b)

    def neg(self, a: str) -> str:
        return self.op("Neg", a)

    def where(self, cond: str, a: str, b: str) -> str:
        return self.op("Where", cond, a, b)

    def masked(self, x: str, cond: str) -> str:
        """``x`` where ``cond`` holds, else 0 — as ``x * cast(cond)``: ONNX Runtime's Where is
        an order of magnitude slower than a multiplication on large tensors."""
        return self.mul(x, self.op("CastLike", cond, x))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.ints(shape))

    def gemm_nt(self, a: str, b: str, rows: int, cols: int, inner: int, shape: Sequence[int]) -> str:
        """reshape(a @ b^T, shape) for a [rows, inner] and b [cols, inner]; recorded so that a
        fan-out of such products becomes one GEMM (GradBuilder._merged_products)."""
        gemm = self.op("Gemm", a, b, transB=1)
        out = self.reshape(gemm, shape)
        nodes = (self.b.producers[gemm].name, self.b.producers[out].name)
        self.b.products[out] = _Product(a, b, rows, cols, inner, tuple(shape), gemm, nodes, self.node)
        return out

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", x, perm=list(perm))

    def expand(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Expand", x, self.ints(shape))

    def cast(self, x: str, elem_type: int) -> str:
        return self.op("Cast", x, to=elem_type)

    def zeros(self, shape: Sequence[int], like: str) -> str:
        return self.expand(self.scalar(0.0, like), shape)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        """A reduction over ``axes`` in the form the graph's opset wants (axes as an input from
        opset 18, or 13 for ReduceSum; as an attribute before)."""
        axes = list(axes)
        keep = 1 if keepdims else 0
        if op_type == "ReduceSum" and self.opset >= 13 or self.opset >= 18:
            return self.op(op_type, x, self.ints(axes), keepdims=keep)
        return self.op(op_type, x, axes=axes, keepdims=keep)

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = False) -> str:
        return self.reduce("ReduceSum", x, axes, keepdims)

    def unbroadcast(self, grad: str, grad_shape: Sequence[int], target: Sequence[int]) -> str:
        """Sum ``grad`` (of ``grad_shape``) down to a value of shape ``target``."""
        grad_shape, target = tuple(grad_shape), tuple(target)
        if grad_shape == target:
            return grad
        lead = len(grad_shape) - len(target)
        axes = list(range(lead)) + [
            lead + i for i, dim in enumerate(target) if dim == 1 and grad_shape[lead + i] != 1
        ]
        if axes:
            grad = self.reduce_sum(grad, axes, keepdims=True)
        return self.reshape(grad, target)


def build_gradients(
    model: onnx.ModelProto,
    loss: str,
    wrt: Sequence[str],
    feeds: Mapping[str, np.ndarray] | None = None,
    output_prefix: str = "grad:",
) -> GradResult:
    """The model extended with outputs ``grad:<name>`` = d(loss)/d(name) for every ``wrt``
    value the loss depends on (others have a zero gradient and get no output)."""
    builder = GradBuilder(model, feeds)
    loss_type = builder.types.get(loss)
    if loss_type is None or not loss_type.is_float:
        raise UnsupportedOpError(f"Cannot differentiate {loss!r}: it is not a float value.")
    seed = builder.constant(np.ones(loss_type.shape, dtype=loss_type.numpy_dtype), None)
    grads = builder.backward({loss: seed}, list(wrt))
    named: dict[str, str | None] = {}
    for value, grad in grads.items():
        if grad is None:
            named[value] = None
            continue
        out = f"{output_prefix}{value}"
        node = helper.make_node("Identity", [grad], [out], name=f"{output_prefix}{value}")
        builder.graph.node.append(node)
        value_type = builder.types[value]
        builder.graph.output.append(
            helper.make_tensor_value_info(out, value_type.elem_type, list(value_type.shape))
        )
        named[value] = out
    return GradResult(builder.model, named)


