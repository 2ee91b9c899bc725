"""The package's floors, read from its import statements (``ast``, every import in a module,
those inside functions too): a module never imports from a floor above its own, the exporters
and the verifier never import each other, and no two modules import each other except the
gradient rules and their registry (rules register themselves with the registry the builder
reads)."""

from __future__ import annotations

import ast
from pathlib import Path

import lossgraph

PACKAGE = Path(lossgraph.__file__).parent

#: lowest first: graph, errors, safe file writing and progress messages, then the ONNX Runtime floor and seeded
#: inputs, then the autodiff and the optimizers, then the verifier, then the exporters, the CLI and the package
FLOORS = [
    ("lossgraph.errors", "lossgraph.spec", "lossgraph.graph", "lossgraph.files", "lossgraph.progress"),
    ("lossgraph.runtime", "lossgraph.inputs"),
    ("lossgraph.autodiff", "lossgraph.optim"),
    ("lossgraph.verify",),
    ("lossgraph.exporters", "lossgraph.cli", "lossgraph"),
]
#: pairs of parts on floors that allow the import, which still must not import one another
APART = [("lossgraph.exporters", "lossgraph.verify"), ("lossgraph.autodiff", "lossgraph.optim")]
#: the one circle allowed: the gradient rules register with the registry the builder reads
REGISTRY = {"lossgraph.autodiff.builder", "lossgraph.autodiff.registry", "lossgraph.autodiff.rules"}


def _modules() -> dict[str, set[str]]:
    """Module name -> the lossgraph modules it imports."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                imports |= {f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base
                            for a in node.names}
            elif isinstance(node, ast.Import):
                imports |= {a.name for a in node.names}
        out[name] = {m for m in imports if m == "lossgraph" or m.startswith("lossgraph.")}
    return out


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _part(module: str) -> str:
    """The longest floor entry that ``module`` is or lies in."""
    entries = [e for floor in FLOORS for e in floor if module == e or module.startswith(e + ".")]
    return max(entries, key=len)


def _floor(module: str) -> int:
    part = _part(module)
    return next(i for i, floor in enumerate(FLOORS) if part in floor)


def test_every_module_has_a_floor():
    assert {_part(m) for m in _modules()} >= {"lossgraph.runtime", "lossgraph.inputs"}


def test_no_import_reaches_a_higher_floor():
    upward = sorted(
        f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
        for module, targets in _modules().items()
        for target in targets
        if _floor(target) > _floor(module)
    )
    assert not upward, "\n".join(upward)


def test_parts_kept_apart_do_not_import_each_other():
    crossing = sorted(
        f"{module} imports {target}"
        for module, targets in _modules().items()
        for target in targets
        for a, b in APART
        if {_part(module), _part(target)} == {a, b}
    )
    assert not crossing, "\n".join(crossing)


def test_no_circle_but_the_rule_registry():
    graph = _modules()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            for target in graph.get(module, ()):
                if target == goal:
                    return True
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return False

    circles = sorted(
        f"{a} <-> {b}"
        for a, targets in graph.items()
        for b in targets
        if a < b and reaches(b, a)
        and not (_registry(a) and _registry(b))
    )
    assert not circles, "\n".join(circles)


def _registry(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in REGISTRY)


def test_the_walk_sees_imports_inside_functions():
    # verify/hints.py imports describe_dropouts inside a function
    assert "lossgraph.inputs" in _modules()["lossgraph.verify.hints"]
    assert _floor("lossgraph.verify.pipeline") > _floor("lossgraph.runtime.session")
    assert _floor("lossgraph.autodiff.builder") < _floor("lossgraph.verify.localize")
