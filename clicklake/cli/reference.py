"""docs/cli.md: every command's `--help`, as the commands print it.

    python -m clicklake.cli.reference > docs/cli.md

`tests/test_cli_reference.py` fails when the file is out of date with the commands."""

from __future__ import annotations

import click

from clicklake.cli import COMMANDS, main

WIDTH = 100  # fixed, so the page does not depend on the terminal it is made in


def _help(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH,
                        max_content_width=WIDTH, help_option_names=["-h", "--help"])
    return command.get_help(ctx)


def render() -> str:
    root = click.Context(main, info_name="clicklake", terminal_width=WIDTH,
                         max_content_width=WIDTH, help_option_names=["-h", "--help"])
    intro = ("Every command and option, as `--help` prints them (made by `python -m "
             "clicklake.cli.reference > docs/cli.md`; a test keeps this page current).\n")
    parts = ["# Commands\n", intro, "## clicklake\n", "```text", _help(main, "clicklake"),
             "```\n"]
    for name in sorted(COMMANDS):
        command = main.get_command(root, name)
        parts += [f"## clicklake {name}\n", "```text", _help(command, name, root), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
