"""``dcbench eval``: evaluate a saved synthetic-set file with the protocol its metadata implies."""

from __future__ import annotations

from typing import Any

import click

from dcbench_tesla.cli.common import (
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
    parse_list,
    progress_option,
    threads_option,
)


@command("eval")
@click.argument("file", type=PATH)
@evaluation_options
@eval_lr_option
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help=f"Seed of the models and the baseline draw (0..{MAX_SEED})."
)
@data_root_option
@click.option(
    "--output", type=PATH, default=None, help="Evaluation JSON [next to FILE: <stem>.eval-<protocol>-seed<S>.json]."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--no-baseline", is_flag=True, help="Skip the random real subset (hard labels and the set's own rule).")
@fair_evaluation_options
@device_option
@threads_option
@progress_option
@executor_options
def eval_command(**kw: Any) -> None:
    """Evaluate a saved synthetic-set FILE with the protocol its metadata implies.

    With --executor ray the evaluation models run on a Ray cluster (logs next to --output).
    """
    from dcbench_tesla.run.evaluate_file import evaluate_file

    output = kw["output"]
    logs = output.with_name(output.name + ".logs") if output is not None else None
    with executor_from_flags(kw, log_dir=logs):
        evaluate_file(
            kw["file"],
            models=parse_list(kw["eval_models"], "--eval-models"),
            protocol=kw["protocol"],
            num_models=kw["num_eval"],
            epochs=kw["eval_epochs"],
            lr=kw["eval_lr"],
            seed=kw["seed"],
            data_root=kw["data_root"],
            output=kw["output"],
            device=kw["device"],
            threads=kw["threads"],
            baseline=not kw["no_baseline"],
            overwrite=kw["overwrite"],
            progress=not kw["no_progress"],
            real=kw["real"],
            ddrs_weight=kw["ddrs_weight"],
        )
