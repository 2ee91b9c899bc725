"""The JSON Schema of a saved verify report, as far as ``lossgraph report`` reads it: a report
someone edited is checked against it before it is rendered, and the one-line error names the
first field that does not fit (``$.tolerance.atol: 'tight' is not of type 'number'``).

Fields lossgraph writes but the renderer does not read are left open; extra fields are allowed
(a report from a newer lossgraph still renders)."""

from __future__ import annotations

from typing import Any

_NUMBER = {"type": "number"}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_TEXT = {"type": "string"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _mapping(values: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": values}


def _maybe(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (as one type list, so that an error names the type expected)."""
    return {**schema, "type": [schema["type"], "null"]}


#: one compared value: a module output, gradient, parameter or optimizer state
_VERDICT = {"enum": ["pass", "noise", "fail", "semantic"]}
_VALUE = _object({}, {"max_abs_diff": _MAYBE_NUMBER, "max_rel_diff": _MAYBE_NUMBER,
                      "required_tol": _MAYBE_NUMBER, "verdict": _VERDICT})
_LOSS = _object({"reference": _NUMBER, "candidate": _NUMBER, "abs_diff": _MAYBE_NUMBER, "passed": {}},
                {"required_tol": _MAYBE_NUMBER, "rel_diff": _MAYBE_NUMBER, "verdict": _VERDICT})
_STEP = _object(
    {"step": {"type": "integer"}},
    {
        "losses": _mapping(_LOSS),
        "module_outputs": _mapping(_VALUE),
        "gradients": _mapping(_VALUE),
        "parameters": _mapping(_VALUE),
        "optimizer_state": _mapping(_VALUE),
    },
)
_STATISTICS = _object({"shape": {}}, {key: _NUMBER for key in ("min", "max", "mean", "std")})
_NEIGHBOURHOOD = _object({}, {
    "nodes": {"type": "array", "items": _object(
        {"layer": {"type": "integer"}, "name": _TEXT, "op_type": {}},
        {"scope": {"type": ["string", "null"]}},
    )},
    "edges": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}},
})
_DIVERGENCE = _object(
    {"step": {}, "phase": {}},
    {
        "max_abs_diff": _MAYBE_NUMBER,
        "source": _maybe(_object({})),
        "statistics": _maybe(_object(
            {"what": {}, "reference": _STATISTICS, "candidate": _STATISTICS},
            {"inputs": _mapping(_STATISTICS), "max_rel_diff": _MAYBE_NUMBER,
             "required_tol": _MAYBE_NUMBER},
        )),
        "neighbourhood": _maybe(_object({}, {"reference": _maybe(_NEIGHBOURHOOD),
                                             "candidate": _maybe(_NEIGHBOURHOOD)})),
    },
)
_NOISE_FLOOR = _object({}, {
    "items": {"type": "array", "items": _object(
        {"step": {"type": "integer"}, "what": {}, "float32": _NUMBER, "float64": _MAYBE_NUMBER,
         "verdict": {}},
        {"float64_nudged": _MAYBE_NUMBER},
    )},
    "max_float32_diff": _MAYBE_NUMBER,
    "max_float64_diff": _MAYBE_NUMBER,
})
_NATIVE = _mapping({"type": "array", "items": _object(
    {"step": {}, "losses": _mapping(_VALUE), "parameters": _VALUE},
)})
_PARAMETER_MAP = _object({}, {
    "pairs": {"type": "array", "items": _object({"reference": {}, "candidate": {}})},
    "unmapped_reference": {"type": "array", "items": _TEXT},
    "unmapped_candidate": {"type": "array", "items": _TEXT},
})
_GRAPH = _object({"path": {}, "framework": {}})

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    **_object(
        {
            "passed": {"type": "boolean"},
            "tolerance": _object({"atol": _NUMBER, "rtol": _NUMBER}),
            "reference": _GRAPH,
            "candidate": _GRAPH,
            "steps": {"type": "array", "items": _STEP},
        },
        {
            "verdict": {"type": ["string", "null"]},
            "first_divergence": _maybe(_DIVERGENCE),
            "noise_floor": _maybe(_NOISE_FLOOR),
            "native": _maybe(_NATIVE),
            "parameter_map": _maybe(_PARAMETER_MAP),
            "warnings": {"type": "array"},
        },
    ),
}


def report_problem(report: Any) -> str | None:
    """The first place ``report`` does not fit :data:`REPORT_SCHEMA`, as one line
    (``$.steps[0].losses.total.reference: 'x' is not of type 'number'``), or None."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(REPORT_SCHEMA).iter_errors(report))
    if error is None:
        return None
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{error.json_path}: {message}"
