"""The README's two set-up commands stay true: CI runs the second verbatim."""

from conftest import ROOT


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert text.split("\n\n", 1)[1].startswith("```bash\n")
    commands = setup_commands()
    assert len(commands) == 2
    assert "lossgraph check examples/discogan/discogan_torch.py examples/discogan/discogan_paddle.py" in commands[0]
    assert commands[1].endswith("&& pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup_commands()[1] in ci.splitlines()
