"""Write docs/support-matrix.md from the layer catalog: every torch.nn layer, function and loss
of ``layers_torch.py`` against its port in ``layers_paddle.py``, exported on both sides and
verified with ``--grads --steps 2``; a row says whether the forward pass, the gradients and
the training steps agree, and why not where they do not. The table of defaults that differ
between the libraries (``lossgraph.verify.conventions``) follows.

    python examples/catalog/support_matrix.py               # all of it: about 10 minutes
    python examples/catalog/support_matrix.py relu fold     # print those rows only
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "docs" / "support-matrix.md"
#: the catalog's tables, in the order the matrix lists them, with a heading each
FAMILIES = {
    "LAYERS": "Layers on vectors (after a Linear)",
    "SPATIAL": "Layers on feature maps (after a Conv2d)",
    "TRAINING": "Layers in training mode (batch statistics, dropout masks)",
    "FUNCTIONS": "Tensor functions in forward code",
    "LOSSES": "Losses against a float target",
    "CLASS_LOSSES": "Losses against class ids",
}
PASS, FAIL, NOT_RUN = "yes", "**no**", "-"
#: what the catalog leaves out, and why (the matrix lists it too)
OUTSIDE = (
    ("`nn.Embedding(max_norm=...)`", "torch's renormalization in place is carried (the gradient passes it, "
     "the optimizer steps from the renormalized rows: `tests/test_embedding.py`); Paddle's Embedding has "
     "no max_norm, so there is no pair"),
    ("`nn.Embedding(padding_idx=...)`", "verified in `tests/test_embedding.py` (torch keeps the row and gives it "
     "no gradient, Paddle outputs zeros for it)"),
    ("`FractionalMaxPool2d`", "draws its windows at random in each framework: no common result to compare"),
    ("`nn.CTCLoss`", "refused in one line: torch.export cannot trace its data-dependent shapes "
     "(`tests/test_cli_errors.py`)"),
    ("`RReLU` in training mode", "refused in one line on both sides: its slopes are drawn at random"),
    ("`grid_sample(mode='bicubic')`, 5-D `grid_sample`", "refused in one line (lowered are linear and nearest "
     "on 4-D inputs)"),
    ("`nn.LSTM`, `nn.GRU`, `nn.MultiheadAttention`, `nn.Transformer*`", "verified in real models: `examples/transformer` (`tests/test_transformer.py`), "
     "`tests/test_recurrent.py`"),
)


@dataclass
class Row:
    name: str
    torch: str
    paddle: str
    forward: str
    gradients: str
    training: str
    notes: str

    def markdown(self) -> str:
        cells = [f"`{self.name}`", _code(self.torch), _code(self.paddle), self.forward, self.gradients,
                 self.training, self.notes]
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def catalog_sources(path: Path) -> dict[str, tuple[str, str]]:
    """Each catalog entry of a module: name -> (its expression without ``lambda ...:``, the
    comment lines just above it)."""
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.parse(text).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id in FAMILIES for t in node.targets)):
            continue
        for key, value in zip(node.value.keys, node.value.values):
            source = " ".join(ast.get_source_segment(text, value).split())
            if isinstance(value, ast.Lambda):
                source = source.split(":", 1)[1].strip()
            comments, line = [], key.lineno - 2
            while line >= 0 and lines[line].strip().startswith("#"):
                comments.insert(0, lines[line].strip().lstrip("#").strip())
                line -= 1
            out[key.value] = (source, " ".join(comments))
    return out


def verify_row(name: str, torch_source: str, paddle_source: str, note: str, folder: Path) -> Row:
    """Export the entry on both sides and verify it; the row says what agreed."""
    import lossgraph as lg
    from lossgraph.errors import LossgraphError

    graphs = []
    for side in ("torch", "paddle"):
        out = folder / f"{name}_{side}.onnx"
        try:
            lg.export(f"{HERE}/layers_{side}.py:{name}", out)
        except LossgraphError as exc:
            reason = str(exc).splitlines()[0].split(": ", 1)[-1]
            return Row(name, torch_source, paddle_source, NOT_RUN, NOT_RUN, NOT_RUN,
                       f"refused by the {side} export: {reason}")
        graphs.append(out)
    result = lg.verify(*graphs, grads=True, steps=2)
    if result.passed:
        return Row(name, torch_source, paddle_source, PASS, PASS, PASS, note)
    found = result.first_divergence
    early = found.step == 0
    forward = FAIL if early and found.phase == "forward" else PASS
    gradients = NOT_RUN if forward == FAIL else (FAIL if early and found.phase == "backward" else PASS)
    why = f"step {found.step} {found.phase} at {found.op_type or found.scope}: {found.hint or 'no hint'}"
    return Row(name, torch_source, paddle_source, forward, gradients, FAIL, why)


def rows(names: list[str] | None = None) -> dict[str, list[Row]]:
    """The matrix's rows by family (only ``names``, when given)."""
    sys.path.insert(0, str(HERE))
    import layers_torch

    torch_sources = catalog_sources(HERE / "layers_torch.py")
    paddle_sources = catalog_sources(HERE / "layers_paddle.py")
    out: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for family in FAMILIES:
            for name in getattr(layers_torch, family):
                if names and name not in names:
                    continue
                torch_source, _ = torch_sources[name]
                paddle_source, note = paddle_sources[name]
                row = verify_row(name, torch_source, paddle_source, note, Path(folder))
                out.setdefault(family, []).append(row)
                print(row.markdown(), flush=True)
    return out


def conventions_table() -> list[str]:
    from lossgraph.verify.conventions import CONVENTIONS

    lines = ["| layer | argument | torch | Paddle | a port |", "|---|---|---|---|---|"]
    for c in CONVENTIONS:
        cells = [c.layer, c.argument, c.torch, c.paddle, c.port]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def document(by_family: dict[str, list[Row]]) -> str:
    import lossgraph

    count = sum(len(r) for r in by_family.values())
    passed = sum(r.training == PASS for rs in by_family.values() for r in rs)
    lines = [
        "# Support matrix",
        "",
        "Generated by `python examples/catalog/support_matrix.py` from the layer catalog "
        f"(`examples/catalog`, lossgraph {lossgraph.__version__}): each torch layer, function or "
        "loss in a small model (a Linear or Conv2d, the layer, a square-mean loss, Adam) against "
        "its Paddle port, both exported and verified with `--grads --steps 2`. *forward*: the "
        "losses and every module output agree at step 0; *gradients*: every parameter's gradient "
        "at step 0; *training*: both Adam steps (parameters, optimizer state, the second forward). "
        "The Paddle column is the port that computes the same (arguments whose defaults differ "
        "are passed); the notes say why where it is not the obvious one. `tests/test_layer_catalog.py` "
        "checks every row (`tests/test_support_matrix.py` that this file lists them all).",
        "",
        f"{passed} of {count} pairs train the same.",
        "",
    ]
    for family, title in FAMILIES.items():
        if family not in by_family:
            continue
        lines += [f"## {title}", "", "| entry | torch | Paddle | forward | gradients | training | notes |",
                  "|---|---|---|---|---|---|---|", *(r.markdown() for r in by_family[family]), ""]
    lines += ["## Not in the catalog", "", "| layer | state |", "|---|---|",
              *(f"| {what} | {why} |" for what, why in OUTSIDE), ""]
    lines += ["## Defaults and conventions that differ", "",
              "The hints name these when the first divergence sits on such a layer "
              "(`lossgraph/verify/conventions.py`).", "", *conventions_table(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="entries to print (default: write the whole matrix)")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args()
    by_family = rows(args.names or None)
    if not args.names:
        args.output.write_text(document(by_family))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
