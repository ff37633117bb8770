"""The ``dcbench`` command line: one module per subcommand, loaded only when it runs.

Every user mistake raises :class:`~dcbench_tesla.errors.UserError` (or is a bad option value); the
one adapter in :mod:`dcbench_tesla.cli.common` turns it into one line on stderr and exit code 2.
``dcbench --help`` imports click and these small modules only (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from dcbench_tesla.cli.common import as_cli_error

#: Subcommand name -> module under ``dcbench_tesla.cli`` holding a click command of that name.
SUBCOMMANDS = {
    "run": "run",
    "eval": "eval",
    "bench": "bench",
    "tune": "tune",
    "experts": "experts",
    "profile": "profile",
    "plot": "profile",
    "show": "show",
    "ls": "ls",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: D102
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: D102
        module = SUBCOMMANDS.get(cmd_name)
        if module is None:
            return None
        found = getattr(importlib.import_module(f"dcbench_tesla.cli.{module}"), f"{cmd_name}_command")
        return found

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:  # noqa: D102
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise as_cli_error(exc) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcbench-tesla")
def main() -> None:
    """dcbench: benchmark dataset distillation (random, DM, MTT, TESLA) and what it costs."""


__all__ = ["main"]
