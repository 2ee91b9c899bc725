"""docs/support-matrix.md, generated from the layer catalog (examples/catalog/support_matrix.py):
it lists every catalog entry with the state the catalog's tests check, and the table of
defaults that differ as lossgraph/verify/conventions.py holds it."""

import sys

import pytest
from conftest import EXAMPLES
from test_layer_catalog import KNOWN_FALSE_DIVERGED, REFUSED

sys.path.insert(0, str(EXAMPLES / "catalog"))
import layers_torch  # noqa: E402
import support_matrix  # noqa: E402

DOCUMENT = support_matrix.OUT.read_text()


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOCUMENT.splitlines():
        if line.startswith("| `") and line.count(" | ") >= 6:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_catalog_entry_has_its_row():
    names = [n for family in support_matrix.FAMILIES for n in getattr(layers_torch, family)]
    assert sorted(_rows()) == sorted(names)


def test_each_row_says_what_the_catalog_tests_check():
    for name, cells in _rows().items():
        forward, gradients, training = cells[3:6]
        if name in REFUSED:
            assert (forward, gradients, training) == ("-", "-", "-") and "refused" in cells[6], cells
        elif name in KNOWN_FALSE_DIVERGED:
            assert training == support_matrix.FAIL, cells
        else:
            assert (forward, gradients, training) == ("yes", "yes", "yes"), cells


def test_the_conventions_table_is_the_one_lossgraph_holds():
    assert "\n".join(support_matrix.conventions_table()) in DOCUMENT


@pytest.mark.parametrize("name", ["relu", "cumprod"])
def test_the_generator_writes_the_committed_row(name):
    row = support_matrix.rows([name])
    assert [r.markdown() for rs in row.values() for r in rs] == [
        line for line in DOCUMENT.splitlines() if line.startswith(f"| `{name}` |")]
