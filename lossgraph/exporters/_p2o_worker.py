"""Runs paddle2onnx in its own process: ``python -m lossgraph.exporters._p2o_worker JSON PARAMS OUT``.

paddle2onnx aborts the whole process (SIGABRT) on an op it cannot convert, and the list of such
ops it means to print is lost with it. So the worker first decomposes the program as paddle2onnx
does (``dist_prim_all``), checks every op against paddle2onnx's registry itself, and reports the
unsupported ones on a line the parent reads (``UNSUPPORTED_PREFIX``, exit code 3) before paddle2onnx
gets a chance to abort. Any other failure still happens here, not in the caller's process.
"""

from __future__ import annotations

import json
import sys

UNSUPPORTED_PREFIX = "LOSSGRAPH-UNSUPPORTED-OPS: "
STOP_GRADIENT_PREFIX = "LOSSGRAPH-STOP-GRADIENT: "
EXIT_UNSUPPORTED = 3

#: paddle2onnx's ``convert_pir_op_name``: PIR op names registered under their legacy names.
LEGACY_NAMES = {
    "matmul": "matmul_v2", "batch_norm_": "batch_norm", "topk": "top_k_v2",
    "repeat_interleave_with_tensor_index": "repeat_interleave", "expand": "expand_v2",
    "assign_value_": "assign_value", "flatten": "flatten_contiguous_range",
    "unsqueeze": "unsqueeze2", "arange": "range", "argmax": "arg_max",
    "floor_divide": "elementwise_floordiv", "subtract": "elementwise_sub",
    "multiply": "elementwise_mul", "divide": "elementwise_div", "remainder": "elementwise_mod",
    "minimum": "elementwise_min", "maximum": "elementwise_max", "min": "reduce_min",
    "max": "reduce_max", "mean": "reduce_mean", "sum": "reduce_sum", "prod": "reduce_prod",
    "any": "reduce_any", "all": "reduce_all", "numel": "size", "hardswish": "hard_swish",
    "hardsigmoid": "hard_sigmoid", "add": "elementwise_add", "add_n": "sum",
    "grid_sample": "grid_sampler", "nonzero": "where_index",
}
#: The saved program's dialect prefix of ``pd_op`` ops ("1.matmul"); builtin ops are "0.*".
PD_OP_DIALECT = "1"
#: Ops paddle2onnx handles outside its registry.
STRUCTURAL_OPS = {"data", "fetch", "if", "while", "parameter", "combine", "slice", "split",
                  "constant", "yield"}


def program_ops(model_json: str) -> list[str]:
    """The op names (``pd_op.matmul``, ...) of a saved PIR program, in order."""
    with open(model_json) as f:
        program = json.load(f)
    names = []
    for block in program["program"]["regions"][0]["blocks"]:
        for op in block["ops"]:
            names.append(str(op.get("#", "")))
    return names


def unsupported_ops(model_json: str) -> list[str]:
    """Ops of the program that paddle2onnx has no converter for."""
    from paddle2onnx import paddle2onnx_cpp2py_export as c_p2o

    registered = set(c_p2o.get_all_supported_operators_pir())
    missing = []
    for raw in program_ops(model_json):
        dialect, _, name = raw.partition(".")
        if dialect != PD_OP_DIALECT or name in STRUCTURAL_OPS:
            continue  # parameters ("p") and builtin ops need no converter
        legacy = LEGACY_NAMES.get(name, name)
        if legacy not in registered and f"pd_op.{name}" not in missing:
            missing.append(f"pd_op.{name}")
    return missing


def _stop_gradient_flags(op: dict) -> list[bool]:
    """Whether each output of ``op`` is marked stop_gradient. A parameter op (``p``) writes its
    output attributes positionally, ``[persistable, stop_gradient, trainable]``: a trainable
    parameter is ``[1, 0, 1]``, a buffer or frozen parameter ``[1, 1, 0]``."""
    attributes = op.get("OA")
    if op.get("#") == "p" and isinstance(attributes, list) and len(attributes) >= 2 and all(
        isinstance(a, int) for a in attributes
    ):
        return [bool(attributes[1])]
    for attr in op.get("OA", []) if isinstance(op.get("OA"), list) else []:
        if isinstance(attr, dict) and attr.get("N") == "stop_gradient":
            return [bool(item.get("D")) for item in attr["AT"]["D"]]
    return []


def stop_gradient_points(model_json: str) -> list[str]:
    """paddle2onnx's names (``p2o.pd_op.<op>.<k>.<j>``) of the values where the program stops
    gradients: outputs marked stop_gradient although an input of their op is not (a
    ``.detach()`` or ``x.stop_gradient = True`` in the loss)."""
    with open(model_json) as f:
        program = json.load(f)
    flags: dict[int, bool] = {}
    counters: dict[str, int] = {}
    points = []
    for block in program["program"]["regions"][0]["blocks"]:
        for op in block["ops"]:
            kind = str(op.get("#", ""))
            outs = op.get("O", [])
            outs = outs if isinstance(outs, list) else [outs]
            stops = _stop_gradient_flags(op)
            for index, out in enumerate(outs):
                if isinstance(out, dict) and "%" in out:
                    flags[out["%"]] = stops[index] if index < len(stops) else kind == "p"
            dialect, _, name = kind.partition(".")
            if dialect != PD_OP_DIALECT or name in STRUCTURAL_OPS:
                continue
            counter = counters.get(name, 0)
            counters[name] = counter + 1
            inputs = [i["%"] for i in op.get("I", []) if isinstance(i, dict) and "%" in i]
            if not any(flags.get(i) is False for i in inputs):
                continue
            for index, stop in enumerate(stops):
                if stop and index < len(outs) and _is_float(outs[index]):
                    points.append(f"p2o.pd_op.{name}.{counter}.{index}")
    return points


#: the program's names of float element types
_FLOAT_TYPES = ("0.t_f16", "0.t_bf16", "0.t_f32", "0.t_f64")


def _is_float(value: object) -> bool:
    """Whether a program value is a float tensor (a gradient stops only where one could flow:
    a comparison's or an argmax's result needs no marker)."""
    try:
        return value["TT"]["D"][0]["#"] in _FLOAT_TYPES  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return False


#: Ops kept whole instead of decomposed into primitives: their decompositions (relu into
#: ``maximum(x, 0)``, relu6 into maximum and minimum, leaky_relu into ``maximum(x, a*x)``,
#: hardswish and hardsigmoid into Max/Min chains) lose the op's gradient at its kinks (Paddle's
#: relu'(0) is 0, maximum's tie gives half), and paddle2onnx has a converter for each.
KEPT_WHOLE = ("pd_op.relu", "pd_op.relu6", "pd_op.leaky_relu", "pd_op.hardswish",
              "pd_op.hardsigmoid")


#: Kept-whole ops whose attributes the parent needs: paddle2onnx 2.1.0 writes LeakyRelu with a
#: garbage alpha and hardtanh as Clip(-1, 1) whatever its bounds, so the parent sets them from
#: the program; relu6 and hardtanh mark their Clip's bounds as passing no gradient.
ATTRIBUTES_PREFIX = "LOSSGRAPH-OP-ATTRIBUTES: "
ATTRIBUTES_OF = ("leaky_relu", "hardtanh", "relu6")
#: Adaptive pooling, with its input and output shapes: paddle2onnx writes it as a pool of stride
#: ``in // out`` and kernel ``in - (out - 1) * stride``, exact only where ``out`` divides ``in``
#: (upsampling gets stride 0, which crashes ONNX's shape inference).
POOLS = ("pool2d", "pool3d", "max_pool2d_with_index", "max_pool3d_with_index")


def _shape(value: dict) -> list[int] | None:
    try:
        return [int(d) for d in value["TT"]["D"][1]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _attributes(op: dict) -> dict:
    out = {}
    for attr in op.get("A", []) if isinstance(op.get("A"), list) else []:
        if isinstance(attr, dict) and isinstance(attr.get("AT"), dict) and "N" in attr:
            out[attr["N"]] = attr["AT"].get("D")
    return out


def op_attributes(model_json: str) -> dict[str, dict]:
    """paddle2onnx's name (``p2o.pd_op.<op>.<k>.0``) of each output of the ops in
    ``ATTRIBUTES_OF`` -> the op's type and attributes."""
    with open(model_json) as f:
        program = json.load(f)
    counters: dict[str, int] = {}
    found = {}
    shapes: dict[int, list[int] | None] = {}
    for block in program["program"]["regions"][0]["blocks"]:
        for op in block["ops"]:
            outs = op.get("O", [])
            for out in outs if isinstance(outs, list) else [outs]:
                if isinstance(out, dict) and "%" in out:
                    shapes[out["%"]] = _shape(out)
            dialect, _, name = str(op.get("#", "")).partition(".")
            if dialect != PD_OP_DIALECT or name in STRUCTURAL_OPS:
                continue
            counter = counters.get(name, 0)
            counters[name] = counter + 1
            attrs = _attributes(op)
            if name in POOLS and attrs.get("adaptive"):
                ins = [i["%"] for i in op.get("I", []) if isinstance(i, dict) and "%" in i]
                attrs["in_shape"] = shapes.get(ins[0]) if ins else None
                attrs["out_shape"] = _shape(outs[0]) if isinstance(outs, list) and outs else None
                if name.startswith("max_"):
                    attrs["pooling_type"] = "max"
            elif name not in ATTRIBUTES_OF:
                continue
            found[f"p2o.pd_op.{name}.{counter}.0"] = {"op": name, **attrs}
    return found


def main(argv: list[str]) -> int:
    model_json, params, out, opset = argv
    import paddle2onnx
    from paddle.base import core
    from paddle2onnx.convert import decompose_program

    core._set_prim_forward_blacklist(*KEPT_WHOLE)

    decomposed = decompose_program(model_json)
    missing = unsupported_ops(decomposed)
    if missing:
        print(UNSUPPORTED_PREFIX + ",".join(missing), flush=True)
        return EXIT_UNSUPPORTED
    print(STOP_GRADIENT_PREFIX + ",".join(stop_gradient_points(decomposed)), flush=True)
    print(ATTRIBUTES_PREFIX + json.dumps(op_attributes(decomposed)), flush=True)
    paddle2onnx.export(
        model_json,
        params,
        out,
        opset_version=int(opset),
        auto_upgrade_opset=True,
        dist_prim_all=True,
        enable_onnx_checker=True,
        enable_optimize=False,
        optimize_tool="none",  # the default (Polygraphy) folds parameters into derived constants
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
