"""``dcbench experts``: train expert trajectories (resumable), or import upstream ones."""

from __future__ import annotations

from typing import Any

import click

from dcbench_tesla.cli.common import (
    EPOCHS,
    EVAL_LR,
    MAX_SEED,
    PATH,
    SEED,
    Bounded,
    command,
    data_root_option,
    device_option,
    executor_from_flags,
    executor_options,
    image_size_option,
    progress_option,
    threads_option,
    yes_option,
)


@command("experts")
@click.option("--dataset", required=True, help="Dataset (see 'dcbench ls datasets').")
@click.option("--model", default=None, help="Model registry name [the dataset's default model].")
@click.option(
    "--num-experts",
    type=Bounded(int, 1, 10_000),
    default=None,
    help="Experts to train (1..10000) [what the dataset's config cards read, else the dataset's default].",
)
@click.option(
    "--epochs",
    type=EPOCHS,
    default=None,
    help="Training epochs per expert [the cards', else 50; read from the files with --import].",
)
@click.option("--lr", type=EVAL_LR, default=None, help="SGD learning rate [the cards', else 0.01].")
@click.option(
    "--batch-size", type=Bounded(int, 1, 1_000_000), default=None, help="Training batch size [the cards', else 256]."
)
@click.option(
    "--zca/--no-zca",
    default=False,
    show_default=True,
    help="ZCA-whiten the data (must match the runs that use the experts).",
)
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help=f"Base seed (0..{MAX_SEED}); expert i is seeded from (seed, i).",
)
@data_root_option
@image_size_option
@click.option(
    "--output",
    type=PATH,
    default=None,
    help="Store directory [the cache 'dcbench run' reads: $DCBENCH_CACHE/experts/...].",
)
@device_option
@threads_option
@click.option(
    "--import",
    "imports",
    multiple=True,
    type=PATH,
    help="Import an upstream MTT/TESLA replay_buffer_<n>.pt file or folder instead of training (repeatable).",
)
@progress_option
@yes_option
@executor_options
def experts_command(**kw: Any) -> None:
    """Train expert trajectories for trajectory matching (resumable), or import upstream ones.

    With --executor ray every expert is a task on a Ray cluster (logs in the store's logs/ folder).
    """
    from dcbench_tesla.experts.command import experts_command as train_or_import

    progress = not kw.pop("no_progress")
    with executor_from_flags(kw):
        train_or_import(**kw, progress=progress, notice=click.echo)
