"""The `clicklake` command. Each subcommand lives in its own module and is imported only when used,
so `clicklake --help` stays fast and a heavy import (Dagster, XGBoost) is paid only by its command."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "demo": "clicklake.cli.demo:demo",
    "generate": "clicklake.cli.generate:generate",
    "import": "clicklake.cli.importer:import_log",
    "lookup": "clicklake.cli.lookup:lookup",
    "serve": "clicklake.cli.serve:serve",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clicklake")
def main() -> None:
    """clicklake: streaming ad-click prediction on Dagster.

    Generate or import event streams into a Firehose-style landing zone, build the lake,
    the time-travel lookup table and labeled datasets, train and serve click models.
    """


__all__ = ["main"]
