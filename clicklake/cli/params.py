"""Parameter types shared by the commands."""

from __future__ import annotations

import math
import os

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


def utf8(value: str, option: str) -> str:
    """`value` when it is text: bytes that are no UTF-8 (a Latin-1 argument) reach Python as
    surrogates, which the lake's keys and files cannot hold (a UnicodeEncodeError traceback)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter(f"{value!r} holds bytes that are not UTF-8",
                                 param_hint=option) from None
    return value


def check_root(root: str, option: str = "--root") -> None:
    """A local root must be a folder or not exist yet under a folder: a file on its way gave a
    NotADirectoryError traceback at the first write."""
    utf8(root, option)
    if root.startswith("s3://"):
        from clicklake.platform.storage import check_s3_root

        try:
            check_s3_root(root)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
        return
    path = os.path.abspath(root)
    if os.path.islink(path) and not os.path.exists(path):
        raise click.BadParameter(f"{path} is a link to {os.readlink(path)}, which does not "
                                 "exist", param_hint=option)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
    if not os.path.isdir(path):
        raise click.BadParameter(f"{path} is a file, not a folder", param_hint=option)


def parse_start(text: str, option: str = "--start", whole_hour: bool = True) -> int:
    """An instant from ISO-8601 or epoch ms, between 2000 and 2100 (further off, the calendar
    functions overflow), a whole UTC hour unless not `whole_hour`."""
    from clicklake.platform.timeutil import HOUR_MS, MIN_INSTANT_MS, iso, parse_instant

    try:
        ms = parse_instant(text)
    except (ValueError, OverflowError, OSError):
        raise click.BadParameter(f"{text[:40]!r} is not an ISO-8601 instant or epoch ms",
                                 param_hint=option) from None
    if not MIN_INSTANT_MS <= ms < _YEAR_2100_MS:
        raise click.BadParameter(f"{text[:40]!r} is not between 2000 and 2100",
                                 param_hint=option)
    if whole_hour and ms % HOUR_MS:
        raise click.BadParameter(f"{iso(ms)} is not a whole UTC hour", param_hint=option)
    return ms


_YEAR_2100_MS = 4_102_444_800_000


def check_span(start_ms: int, hours: int, option: str) -> None:
    """Hours from `start_ms` must end by 2100: the raw layer refuses later event times."""
    from clicklake.platform.timeutil import HOUR_MS, iso

    if start_ms + hours * HOUR_MS > _YEAR_2100_MS:
        raise click.BadParameter(f"{hours} h from {iso(start_ms)} run past 2100 (event times "
                                 "from 2100 on are refused as bad values)", param_hint=option)

