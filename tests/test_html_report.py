"""The HTML report: one self-contained file from ``verify --html`` or ``lossgraph report``,
with the per-step plot, the divergence in its graph neighbourhood and the noise-floor verdict;
rendered in headless Chromium where one is installed."""

import json
import re
import shutil
import subprocess

import pytest
from conftest import EXAMPLES, LOSSES, one_line_error

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, exported):
    """A diverging pair's JSON and HTML reports (HingeEmbeddingLoss margin 0.5 vs 1.0)."""
    from click.testing import CliRunner

    from lossgraph.cli import main

    folder = tmp_path_factory.mktemp("html")
    result = CliRunner().invoke(main, [
        "verify", str(exported(f"{LOSSES}/losses_torch.py:hinge_embedding")),
        str(exported(f"{LOSSES}/losses_paddle_planted.py:hinge_margin")),
        "--json", str(folder / "report.json"), "--html", str(folder / "report.html"),
    ])
    assert result.exit_code == 1, result.stdout
    return folder


def test_html_report_has_plot_divergence_neighbourhood_and_noise_floor(diverged):
    page = (diverged / "report.html").read_text()
    report = json.loads((diverged / "report.json").read_text())
    assert page.startswith("<!DOCTYPE html>") and "DIVERGED" in page
    assert page.count('class="step-plot"') == 1
    assert page.count('class="neighbourhood"') == 2  # reference and candidate
    div = report["first_divergence"]
    assert div["reference_node"] in page and div["op_type"] in page
    assert "likely cause" in page and "A constant differs" in page
    assert 'id="noise-floor"' in page and "semantic" in page
    around = div["neighbourhood"]["reference"]
    assert around["center"] == div["reference_node"]
    assert any(n["status"] == "origin" for n in around["nodes"])
    assert {n["layer"] for n in around["nodes"]} >= {-1, 0, 1}


def test_html_report_is_self_contained(diverged):
    page = (diverged / "report.html").read_text()
    assert "<script" not in page
    external = re.findall(r'(?:src|href)\s*=\s*"([^"]+)"', page)
    assert external == [], external
    assert set(re.findall(r"https?://[^\"' ]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_report_command_renders_the_saved_json(cli, diverged, tmp_path):
    out = tmp_path / "again.html"
    result = cli("report", diverged / "report.json", "--html", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == (diverged / "report.html").read_text()


def test_passing_report_renders(cli, exported, tmp_path):
    graph = exported(f"{LOSSES}/losses_torch.py:mse")
    result = cli("verify", graph, graph, "--steps", "2", "--html", tmp_path / "ok.html")
    assert result.exit_code == 0
    page = (tmp_path / "ok.html").read_text()
    assert "PASSED" in page and "First divergence" not in page
    assert page.count("<circle") >= 2  # one point per step and series


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not a JSON file"),
    ('{"passed": true}', "is not a lossgraph verify report"),
])
def test_report_bad_input(cli, tmp_path, content, message):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    assert message in one_line_error(cli("report", path, "--html", tmp_path / "out.html"))


def _report(exported, folder, reference: str, candidate: str, *args: str) -> tuple[int, object]:
    """verify's exit code and the HTML report it writes into ``folder``."""
    from click.testing import CliRunner

    from lossgraph.cli import main

    page = folder / "report.html"
    result = CliRunner().invoke(main, ["verify", str(exported(str(EXAMPLES / reference))),
                                       str(exported(str(EXAMPLES / candidate))), *args, "--html", str(page)])
    return result.exit_code, page


#: the three reports a reader meets: a pass whose differences above the tolerance are all float32
#: noise, a forward divergence (with the graph neighbourhood) and an optimizer-update divergence
RENDERED = {
    "passing_with_noise": (("bugs/bugs_torch.py:classifier", "bugs/bugs_paddle.py:classifier",
                            "--steps", "3", "--tol", "1e-9"), 0,
                           ["PASSED", "float32 rounding noise", "First difference above the tolerance"], ["FAIL", "DIVERGED"]),
    "forward": (("losses/losses_torch.py:hinge_embedding", "losses/losses_paddle_planted.py:hinge_margin"), 1,
                ["DIVERGED", "forward pass", "likely cause", "Graph neighbourhood"], ["PASSED"]),
    "update": (("bugs/bugs_torch.py:classifier", "bugs/bugs_paddle.py:classifier_adam_epsilon", "--steps", "3"), 1,
               ["DIVERGED", "optimizer update", "likely cause: Optimizer settings differ"], ["PASSED"]),
}


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (.ci/run installs it)")
@pytest.mark.parametrize("case", list(RENDERED))
def test_html_renders_in_headless_chromium(exported, tmp_path, case):
    """Each kind of report renders in a real browser: the DOM Chromium builds says what the
    report says (noise as noise, no FAIL under a PASSED) and the screenshot is a drawn page."""
    args, code, present, absent = RENDERED[case]
    exit_code, page = _report(exported, tmp_path, *args)
    assert exit_code == code
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120,
    ).stdout
    assert dom.count("<svg") >= 1 and all(text in dom for text in present), dom[:2000]
    assert not any(text in dom for text in absent), [text for text in absent if text in dom]
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True,
    )
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_an_update_divergence_names_the_optimizer_and_the_parameter():
    """"adam in scope fc: reference node fc.weight" read as if adam were an op of module fc."""
    from lossgraph.verify.report import PHASE_WORDS, _where_parts

    where = "".join(text for text, _ in _where_parts(
        {"phase": "update", "op_type": "adam", "scope": "fc", "reference_node": "fc.weight:exp_avg",
         "candidate_node": "fc.w:exp_avg"}))
    assert where == "adam update of fc.weight:exp_avg (candidate fc.w:exp_avg) in module fc"
    assert PHASE_WORDS["update"] == "optimizer update"
