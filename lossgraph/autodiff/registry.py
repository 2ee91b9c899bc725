"""The table of gradient rules, filled by ``@grad_rule`` next to each rule.

A rule ``fn(ctx, dys) -> list`` receives the gradients of the node's outputs (``None`` where an
output has no gradient: a symbolic zero) and returns one entry per input: a value name, or
``None`` for "no gradient". Inputs that are never differentiable (shapes, indices, axes) are
declared with ``nondiff=``; ops whose outputs never carry gradients (comparisons, shapes, index
ops) are declared with :func:`non_differentiable`. Registering an op twice fails at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lossgraph.errors import InternalError

if TYPE_CHECKING:
    from lossgraph.autodiff.builder import GradContext

RuleFn = Callable[["GradContext", list], list]


@dataclass(frozen=True)
class GradRule:
    """How to differentiate one op type."""

    op_type: str
    fn: RuleFn
    nondiff: tuple[int, ...] = ()  # input positions that never receive a gradient
    broadcasting: bool = False  # results have the output's (broadcast) shape; the builder reduces


RULES: dict[str, GradRule] = {}
#: Ops whose outputs never carry a gradient (comparisons, shape and index computations, RNG,
#: and piecewise-constant functions whose derivative is zero almost everywhere).
NON_DIFFERENTIABLE: set[str] = set()


def grad_rule(
    op_type: str, nondiff: tuple[int, ...] = (), broadcasting: bool = False
) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the gradient rule of ``op_type`` (default ONNX domain)."""

    def register(fn: RuleFn) -> RuleFn:
        if op_type in RULES or op_type in NON_DIFFERENTIABLE:
            raise InternalError(f"gradient rule for {op_type!r} registered twice")
        RULES[op_type] = GradRule(op_type, fn, tuple(nondiff), broadcasting)
        return fn

    return register


def non_differentiable(*op_types: str) -> None:
    """Declare ops whose outputs carry no gradient."""
    for op_type in op_types:
        if op_type in RULES or op_type in NON_DIFFERENTIABLE:
            raise InternalError(f"gradient rule for {op_type!r} registered twice")
        NON_DIFFERENTIABLE.add(op_type)


def load_rules() -> None:
    """Import every rule family (registration happens at import)."""
    from lossgraph.autodiff.rules import (  # noqa: F401
        elementwise,
        indexing,
        losses,
        nn,
        reduce,
        shape,
    )


def known_ops() -> frozenset[str]:
    """Every op type the autodiff can pass through: those with a rule and those declared
    non-differentiable (all rule families loaded)."""
    load_rules()
    return frozenset(RULES) | frozenset(NON_DIFFERENTIABLE)
