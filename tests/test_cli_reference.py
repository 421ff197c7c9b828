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
