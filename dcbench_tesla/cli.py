"""The ``dcbench`` command line.

Every user mistake raises :class:`~dcbench_tesla.errors.UserError`; the group turns
it into one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dcbench_tesla.config import parse_set_flags
from dcbench_tesla.errors import UserError


class _CliUserError(click.ClickException):
    exit_code = 2


class DcbenchGroup(click.Group):
    """A click group that reports UserError as a clean message with exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:  # noqa: D102
        try:
            return super().invoke(ctx)
        except UserError as exc:
            error = _CliUserError(str(exc))
            error.exit_code = exc.exit_code
            raise error from None


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"expected a comma-separated list, got {value!r}")
    return items


@click.group(cls=DcbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcbench-tesla")
def main() -> None:
    """dcbench: benchmark dataset distillation (random, DM, MTT, TESLA) and what it costs."""


@main.command()
@click.option("--method", required=True, help="Method id (see 'dcbench ls methods').")
@click.option("--dataset", default="digits", show_default=True, help="Dataset (see 'dcbench ls datasets').")
@click.option("--ipc", type=int, default=10, show_default=True, help="Synthetic images per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw of the run.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory [runs/<method>-<dataset>-ipc<N>-seed<S>].",
)
@click.option("--overwrite", is_flag=True, help="Replace the files of an existing run directory.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON/TOML file of method options.",
)
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option (repeatable), e.g. --set lr_img=100.",
)
@click.option("--iterations", type=int, default=None, help="Outer distillation iterations (method option).")
@click.option("--zca/--no-zca", default=None, help="ZCA-whiten the data [the method's config card decides].")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory holding dataset folders [$DCBENCH_DATA].",
)
@click.option("--eval-models", default=None, help="Comma-separated architectures to evaluate on [dataset default].")
@click.option("--protocol", default=None, help="Evaluation protocol [short on digits, paper elsewhere].")
@click.option("--num-eval", type=int, default=None, help="Models trained per architecture [5].")
@click.option("--eval-epochs", type=int, default=None, help="Epochs per evaluation model [protocol's].")
@click.option("--eval-lr", type=float, default=None, help="Evaluation lr [learned lr, or the method's fixed lr].")
@click.option("--no-baseline", is_flag=True, help="Skip the random real subset evaluated beside the result.")
@click.option("--whole-dataset", is_flag=True, help="Also train on the whole training set (upper bound).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N [cuda when present].")
@click.option("--threads", type=int, default=None, help="Torch intra-op threads.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option(
    "--checkpoint-every",
    type=int,
    default=100,
    show_default=True,
    help="Save the full state every N iterations (0: only on SIGINT/SIGTERM).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --output from its checkpoint.")
@click.option(
    "--eval-every",
    type=int,
    default=0,
    show_default=True,
    help="Log the test accuracy of one model trained on the current set every N iterations (watching only).",
)
def run(**kw: Any) -> None:
    """Distil a synthetic set, evaluate it, and write a run directory."""
    from dcbench_tesla.runner import RunRequest
    from dcbench_tesla.runner import run as run_method

    request = RunRequest(
        method=kw["method"],
        dataset=kw["dataset"],
        ipc=kw["ipc"],
        seed=kw["seed"],
        output=kw["output"],
        overwrite=kw["overwrite"],
        options=parse_set_flags(kw["set_pairs"]),
        config_file=kw["config_file"],
        iterations=kw["iterations"],
        zca=kw["zca"],
        data_root=kw["data_root"],
        eval_models=_csv(kw["eval_models"]),
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
    )
    run_method(request)


@main.command(name="eval")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--eval-models", default=None, help="Comma-separated architectures [dataset default].")
@click.option("--protocol", default=None, help="Evaluation protocol [short on digits, paper elsewhere].")
@click.option("--num-eval", type=int, default=None, help="Models per architecture [5].")
@click.option("--eval-epochs", type=int, default=None, help="Epochs per model [protocol's].")
@click.option("--eval-lr", type=float, default=None, help="lr [the set's learned lr, else 0.01].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the evaluation JSON here.")
@click.option("--device", default=None)
@click.option("--threads", type=int, default=None)
def eval_command(**kw: Any) -> None:
    """Evaluate a saved synthetic-set FILE with the protocol its metadata implies."""
    from dcbench_tesla.evaluate_file import evaluate_file

    evaluate_file(
        kw["file"],
        models=_csv(kw["eval_models"]),
        protocol=kw["protocol"],
        num_models=kw["num_eval"],
        epochs=kw["eval_epochs"],
        lr=kw["eval_lr"],
        seed=kw["seed"],
        data_root=kw["data_root"],
        output=kw["output"],
        device=kw["device"],
        threads=kw["threads"],
    )


@main.command(name="ls")
@click.argument("kind", required=False, type=click.Choice(["methods", "datasets", "models", "engines", "protocols"]))
def ls_command(kind: str | None) -> None:
    """List registered methods, datasets, models, gradient engines and protocols."""
    from dcbench_tesla.listing import listing

    click.echo(listing(kind))


@main.command(name="experts")
@click.option("--dataset", required=True, help="Dataset (see 'dcbench ls datasets').")
@click.option("--model", default=None, help="Model registry name [the dataset's default model].")
@click.option(
    "--num-experts",
    type=int,
    default=None,
    help="Experts to train [100 on CIFAR and Tiny ImageNet, 50 on imagenet64, 5 on digits].",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Training epochs per expert [50; read from the files with --import].",
)
@click.option("--lr", type=float, default=None, help="SGD learning rate [0.01].")
@click.option("--batch-size", type=int, default=None, help="Training batch size [256].")
@click.option(
    "--zca/--no-zca",
    default=False,
    show_default=True,
    help="ZCA-whiten the data (must match the runs that use the experts).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed; expert i is seeded from (seed, i).")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory holding dataset folders [$DCBENCH_DATA].",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Store directory [the cache 'dcbench run' reads: $DCBENCH_CACHE/experts/...].",
)
@click.option("--device", default=None, help="cpu, cuda or cuda:N [cuda when present].")
@click.option("--threads", type=int, default=None, help="Torch intra-op threads.")
@click.option(
    "--import",
    "imports",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Import an upstream MTT/TESLA replay_buffer_<n>.pt file or folder instead of training (repeatable).",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def experts(**kw: Any) -> None:
    """Train expert trajectories for trajectory matching (resumable), or import upstream ones."""
    from dcbench_tesla.experts.command import experts_command

    progress = not kw.pop("no_progress")
    experts_command(**kw, progress=progress, notice=click.echo)


def _add_subcommands() -> None:
    """Commands that live next to the code they drive."""
    from dcbench_tesla.bench_cli import bench
    from dcbench_tesla.profiling.cli import plot_command, profile_command
    from dcbench_tesla.show import show

    main.add_command(bench)
    main.add_command(profile_command)
    main.add_command(plot_command)
    main.add_command(show)


_add_subcommands()
