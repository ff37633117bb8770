"""``dcbench show``: draw a synthetic set as an image grid; for a run directory, also its learning curves."""

from __future__ import annotations

from pathlib import Path

import click

from dcbench_tesla.cli.common import PATH, Bounded, command


@command("show")
@click.argument("target", metavar="FILE_OR_RUN_DIR", type=PATH)
@click.option(
    "--output",
    type=PATH,
    default=None,
    help="A .png file (for a set file) or a directory [next to the input: images.png, curves.png].",
)
@click.option(
    "--max-per-class", type=Bounded(int, 1, 10_000), default=10, show_default=True, help="Images shown per class."
)
@click.option(
    "--max-classes", type=Bounded(int, 1, 100_000), default=None, help="Classes shown (the first ones) [all]."
)
@click.option(
    "--view",
    type=click.Choice(["sigma", "raw"]),
    default="sigma",
    show_default=True,
    help="sigma: each channel's mean +- 2.5 std stretched to [0, 1] (the papers' view); raw: pixels clipped to [0, 1].",
)
def show_command(target: Path, output: Path | None, max_per_class: int, max_classes: int | None, view: str) -> None:
    """Draw a synthetic set as an image grid; for a run directory, also its learning curves (redrawn each time)."""
    from dcbench_tesla.show import show

    show(target, output, max_per_class, max_classes, view, echo=click.echo)
