"""``dcbench run``: distil a synthetic set, evaluate it, and write a run directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from dcbench_tesla.cli.common import (
    EVERY,
    IPC,
    ITERATIONS,
    MAX_IPC,
    MAX_SEED,
    PATH,
    SEED,
    command,
    data_root_option,
    device_option,
    eval_lr_option,
    evaluation_options,
    executor_from_flags,
    executor_options,
    fair_evaluation_options,
    image_size_option,
    parse_list,
    parse_set,
    progress_option,
    threads_option,
    yes_option,
)
from dcbench_tesla.data import DEFAULT_DATASET

if TYPE_CHECKING:
    from dcbench_tesla.run.request import RunRequest


@command("run")
@click.option("--method", required=True, help="Method id (see 'dcbench ls methods').")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="Dataset (see 'dcbench ls datasets').")
@click.option("--ipc", type=IPC, default=10, show_default=True, help=f"Synthetic images per class (1..{MAX_IPC}).")
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help=f"Seed of every random draw of the run (0..{MAX_SEED})."
)
@click.option("--output", type=PATH, default=None, help="Run directory [runs/<method>-<dataset>-ipc<N>-seed<S>].")
@click.option("--overwrite", is_flag=True, help="Replace the files of an existing run directory.")
@click.option("--config", "config_file", type=PATH, default=None, help="JSON/TOML file of method options.")
@click.option(
    "--set", "set_pairs", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable), e.g. --set lr_img=100."
)
@click.option("--iterations", type=ITERATIONS, default=None, help="Outer distillation iterations (method option).")
@click.option("--zca/--no-zca", default=None, help="ZCA-whiten the data [the method's config card decides].")
@data_root_option
@image_size_option
@evaluation_options
@eval_lr_option
@click.option(
    "--no-baseline",
    is_flag=True,
    help="Skip the random real subset evaluated beside the result (hard labels and the set's own label rule).",
)
@fair_evaluation_options
@click.option("--whole-dataset", is_flag=True, help="Also train on the whole training set (upper bound).")
@device_option
@threads_option
@progress_option
@click.option(
    "--checkpoint-every",
    type=EVERY,
    default=100,
    show_default=True,
    help="Save the full state every N iterations (0: only on SIGINT/SIGTERM).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --output from its checkpoint.")
@yes_option
@click.option(
    "--eval-every",
    type=EVERY,
    default=0,
    show_default=True,
    help="Log the validation accuracy of one model trained on the current set every N iterations (watching only).",
)
@executor_options
def run_command(**kw: Any) -> None:
    """Distil a synthetic set, evaluate it, and write a run directory.

    With --executor ray the evaluation models (and experts still to train) run on a Ray cluster.
    """
    from dcbench_tesla.run.runner import run

    request = run_request(kw)
    with executor_from_flags(kw, log_dir=(request.output or request.default_output()) / "logs"):
        run(request)


def run_request(kw: dict[str, Any]) -> RunRequest:
    """The run request of ``dcbench run``'s parsed flags (also the fixed part of every ``dcbench tune`` trial)."""
    from dcbench_tesla.run.request import RunRequest

    return RunRequest(
        method=kw["method"],
        dataset=kw["dataset"],
        ipc=kw["ipc"],
        seed=kw["seed"],
        output=kw["output"],
        overwrite=kw["overwrite"],
        options=parse_set(kw["set_pairs"]),
        config_file=kw["config_file"],
        iterations=kw["iterations"],
        zca=kw["zca"],
        data_root=kw["data_root"],
        image_size=kw["image_size"],
        eval_models=parse_list(kw["eval_models"], "--eval-models"),
        protocol=kw["protocol"],
        num_eval_models=kw["num_eval"],
        eval_epochs=kw["eval_epochs"],
        eval_lr=kw["eval_lr"],
        baseline=not kw["no_baseline"],
        whole_dataset=kw["whole_dataset"],
        device=kw["device"],
        threads=kw["threads"],
        progress=not kw["no_progress"],
        checkpoint_every=kw["checkpoint_every"],
        resume=kw["resume"],
        eval_every=kw["eval_every"],
        yes=kw["yes"],
        real=kw["real"],
        ddrs_weight=kw["ddrs_weight"],
    )
