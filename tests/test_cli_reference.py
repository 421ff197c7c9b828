"""docs/cli.md is every command's current `--help`."""

from __future__ import annotations

from pathlib import Path

from clicklake.cli import COMMANDS
from clicklake.cli.reference import render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_the_command_reference_is_current():
    page = render()
    assert PAGE.read_text() == page, (
        "docs/cli.md is out of date: python -m clicklake.cli.reference > docs/cli.md")
    for name in COMMANDS:
        assert f"## clicklake {name}\n" in page


def test_the_page_does_not_depend_on_how_a_command_was_first_run():
    """click keeps the first help option it builds for a command: `serve` run by itself (its
    own context) first made the page lose `-h` in a full test run. A fresh process runs each
    command by itself first, then renders the page."""
    import subprocess
    import sys

    script = (
        "import importlib\n"
        "from click.testing import CliRunner\n"
        "from clicklake.cli import COMMANDS\n"
        "from clicklake.cli.reference import render\n"
        "for target in COMMANDS.values():\n"
        "    module, _, attr = target.partition(':')\n"
        "    command = getattr(importlib.import_module(module), attr)\n"
        "    assert '-h, --help' in CliRunner().invoke(command, ['-h']).output, target\n"
        "print(render(), end='')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out == PAGE.read_text()
