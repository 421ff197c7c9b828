"""Parameter types shared by the commands."""

from __future__ import annotations

import math

import click

# Every command's contexts, also when one is invoked by itself (not through `clicklake`): click
# keeps the first help option it builds for a command, so a group-only setting gave `-h` or not
# depending on how the command was first run.
CONTEXT = {"help_option_names": ["-h", "--help"]}


class FiniteFloat(click.FloatRange):
    """`click.FloatRange` that also refuses nan and ±inf (FloatRange lets nan through: every
    comparison with it is false), with a usage error instead of a traceback later."""

    name = "finite float"

    def _describe_range(self) -> str:
        if self.min is None and self.max is None:
            return "finite"  # FloatRange would print "x<=None"
        return super()._describe_range()

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
