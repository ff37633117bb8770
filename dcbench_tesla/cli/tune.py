"""``dcbench tune``: search a method's options on one (dataset, IPC) with Optuna, scored on validation only."""

from __future__ import annotations

import copy
from typing import Any

import click

from dcbench_tesla.cli.common import MAX_SEED, Bounded, command, executor_from_flags
from dcbench_tesla.cli.run import run_command, run_request

#: ``run`` flags a trial does not take: tune resumes its own trials, and trials evaluate only their set.
NOT_FOR_TRIALS = ("resume", "no_baseline", "real", "ddrs_weight", "whole_dataset")
#: ``run`` flags whose meaning changes for a study.
TUNE_HELP = {
    "output": "Study directory (study.db, trials/<n>/, trials.csv, history.png, best.toml); the same command "
    "again continues the study [tunes/<method>-<dataset>-ipc<N>-seed<S>].",
    "overwrite": "Discard the study in --output and start again.",
    "eval_every": "Score one model on the validation split every N iterations and report it to the pruner "
    "[a quarter of the iterations].",
    "seed": f"Seed of every trial's run and of the sampler (0..{MAX_SEED}).",
}


def _run_params() -> list[click.Parameter]:
    params = []
    for param in run_command.params:
        if param.name in NOT_FOR_TRIALS:
            continue
        if param.name in TUNE_HELP:
            param = copy.copy(param)
            param.help = TUNE_HELP[param.name]
            param.show_default = param.name == "seed"
        params.append(param)
    return params


@command("tune")
@click.option(
    "--trials",
    type=Bounded(int, 1, 100_000),
    default=20,
    show_default=True,
    help="Finished (complete or pruned) trials the study should hold; a re-run adds only the missing ones.",
)
@click.option(
    "--timeout", type=Bounded(float, 0.0, 1e9, open_low=True), default=None, help="Start no trial after SECONDS."
)
@click.option(
    "--space",
    multiple=True,
    metavar="KEY=LOW:HIGH[:log] | KEY=a,b,c",
    help="A searched option (repeatable) [lr_img, lr_lr, lr_teacher, syn_steps, max_start_epoch, expert_epochs, "
    "batch_syn around the method's card, those it has].",
)
@click.option(
    "--parallel",
    type=Bounded(int, 1, 1000),
    default=1,
    show_default=True,
    help="Trials run at a time as tasks of the executor (side by side with --executor ray).",
)
def tune_command(**kw: Any) -> None:
    """Search a method's options on one (dataset, IPC) with Optuna (TPE, median pruning), on validation only.

    Every trial is a normal run directory under OUTPUT/trials/<n>/, taking every 'dcbench run' flag
    given here plus the sampled options, and is scored on the validation split (the test split is
    never read). Writes trials.csv, history.png and best.toml, a card for 'dcbench run --config'.
    Needs Optuna: pip install 'dcbench-tesla[tune]'. With --executor ray and --parallel N, N trials run
    side by side on the cluster.
    """
    from dcbench_tesla.run.tune import TuneRequest, require_optuna, tune

    require_optuna()
    fixed = {**kw, "resume": False, "no_baseline": True, "real": False, "ddrs_weight": 0.5, "whole_dataset": False}
    request = TuneRequest(
        base=run_request(fixed), trials=kw["trials"], timeout_s=kw["timeout"], space=list(kw["space"]),
        parallel=kw["parallel"],
    )  # fmt: skip
    with executor_from_flags(kw, log_dir=request.output / "logs"):
        tune(request)


tune_command.params[:0] = _run_params()
