"""``dcbench profile`` and ``dcbench plot``: peak memory and time per matching-step count, and its figures."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from dcbench_tesla.cli.common import (
    IPC,
    MAX_SEED,
    PATH,
    SEED,
    Bounded,
    command,
    device_option,
    executor_from_flags,
    executor_options,
    parse_list,
    parse_set,
    threads_option,
)
from dcbench_tesla.errors import UserError

__all__ = ["parse_steps", "plot_command", "profile_command"]


def parse_steps(value: str) -> list[int]:
    """Parse ``"1,10,20"`` and inclusive ranges ``"10:100:10"`` (``start:stop[:step]``), sorted.

    Raises:
        UserError: on anything but positive integers.
    """
    steps: set[int] = set()
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        parts = item.split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise UserError(
                f"--steps: {item!r} is not a positive integer or a range start:stop[:step] (e.g. 1,10:100:10)"
            ) from None
        if any(n > MAX_STEPS for n in numbers[:2]):
            raise UserError(f"--steps: {item!r} goes beyond {MAX_STEPS} steps")
        if len(numbers) == 1:
            steps.add(numbers[0])
        elif len(numbers) in (2, 3):
            start, stop, stride = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
            if stride <= 0 or stop < start:
                raise UserError(f"--steps: range {item!r} needs start <= stop and a positive step")
            steps.update(range(start, stop + 1, stride))
        else:
            raise UserError(f"--steps: {item!r} has too many ':' (use start:stop[:step])")
    if not steps:
        raise UserError(f"--steps needs at least one value, got {value!r}")
    if min(steps) < 1:
        raise UserError(f"--steps must be positive integers, got {min(steps)}")
    return sorted(steps)


def _check_methods(methods: list[str], options: dict[str, str]) -> None:
    from dcbench_tesla.config import build_options
    from dcbench_tesla.method import distiller_class, spec

    for method in methods:
        config = distiller_class(spec(method)).Config
        if not {"syn_steps", "batch_syn"} <= {f.name for f in dataclasses.fields(config)}:
            raise UserError(
                f"method {method!r} has no syn_steps/batch_syn options: the profiler sweeps methods "
                "whose cost grows with matching steps (see 'dcbench ls methods')"
            )
        build_options(config, {**spec(method).kwargs, **options}, owner=f"method {method!r}")


#: Largest matching-step count ``--steps`` accepts.
MAX_STEPS = 100_000
_OUR_FILES = (
    "profile.csv",
    "profile.md",
    "provenance.json",
    "sweep.json",
    "figure2_*.png",
    "figure3*.png",
    "points/*.json",
    "logs/*.log",
)


def _check_output(output: Path, overwrite: bool, settings: dict[str, Any]) -> bool:
    """Check ``--output`` can take this sweep; True when it holds an interrupted sweep of the same settings.

    Raises:
        UserError: not a directory, another sweep's results, or files that are not a sweep (without
            ``overwrite``).
    """
    from dcbench_tesla.files import user_files
    from dcbench_tesla.profiling.sweep import SWEEP_NAME

    if output.exists() and not output.is_dir():
        raise UserError(f"--output {str(output)!r} exists and is not a directory")
    if overwrite or not user_files(output):  # (temporaries of a killed write do not count)
        return False
    try:
        earlier = json.loads((output / SWEEP_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise UserError(f"--output {str(output)!r} is not empty; pass --overwrite to replace its files") from None
    if not isinstance(earlier, dict) or earlier.get("settings") != json.loads(json.dumps(settings)):
        raise UserError(
            f"--output {str(output)!r} holds a sweep of other settings ({SWEEP_NAME}); choose another --output, "
            "or pass --overwrite to replace its files"
        )
    return True


def _clear_previous(output: Path) -> None:
    """Remove the files an earlier profile wrote here (only ours), so no stale figure survives."""
    for pattern in _OUR_FILES:
        for path in output.glob(pattern):
            path.unlink()


def _command_line(ctx: click.Context, values: dict[str, Any]) -> str:
    """The command as it ran (every option that was given), for the provenance."""
    parts = ["dcbench", ctx.info_name or "profile"]
    for param in ctx.command.params:
        value = values.get(param.name)
        if value is None or value is False or ctx.get_parameter_source(param.name) == ParameterSource.DEFAULT:
            continue
        flag = max(param.opts, key=len)
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def default_output(datasets: list[str], device: str) -> Path:
    """``profiles/<datasets>-<device>``."""
    return Path("profiles") / f"{'_'.join(datasets)}-{device.replace(':', '')}"


@command("profile")
@click.option("--methods", default="mtt,tesla,tesla-exact", show_default=True, help="Comma-separated method ids.")
@click.option("--dataset", default=None, help="Dataset whose shape, classes and model are used [cifar100].")
@click.option("--datasets", default=None, help="Several datasets, comma-separated (instead of --dataset).")
@click.option("--steps", default="1,10,20", show_default=True, help="Inner steps: 1,10,20 or ranges 10:100:10.")
@click.option(
    "--batch-syn",
    type=Bounded(int, 1, 100_000),
    default=100,
    show_default=True,
    help="Synthetic images per inner step.",
)
@click.option("--ipc", type=IPC, default=10, show_default=True, help="Synthetic images per class.")
@click.option(
    "--iterations",
    type=Bounded(int, 1, 10_000),
    default=10,
    show_default=True,
    help="Measured outer iterations per point.",
)
@click.option(
    "--warmup", type=Bounded(int, 0, 10_000), default=2, show_default=True, help="Unmeasured iterations before them."
)
@device_option
@threads_option
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help=f"Seed of the random stand-ins and of reset (0..{MAX_SEED}).",
)
@click.option(
    "--table-steps",
    type=Bounded(int, 1, 100_000),
    default=None,
    help="Steps of Table 5 / Figure 3 [50 if swept, else the largest].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=Bounded(float, 0.0, 1e7, open_low=True),
    default=None,
    help="Per-point time limit, seconds.",
)
@click.option("--output", type=PATH, default=None, help="Output directory [profiles/<datasets>-<device>].")
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option for every point (repeatable), e.g. --set snapshot_policy=checkpoint.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace the files in a non-empty --output (the same command resumes without it)."
)
@executor_options
def profile_command(**kw: Any) -> None:
    """Sweep methods x dataset shapes x inner steps; write CSV, Markdown tables and figures.

    Every point runs in a fresh process on random stand-in data and experts of the dataset's
    shape (memory and time do not depend on pixel values), so no dataset files or trained experts
    are needed. With --executor ray the points run side by side on a Ray cluster, each still in a
    fresh process on its worker, with a whole GPU of its own on CUDA (task logs in OUTPUT/logs/).
    """
    from dcbench_tesla.checks import resolve_device
    from dcbench_tesla.data import dataset_spec
    from dcbench_tesla.files import write_json_atomic
    from dcbench_tesla.profiling.standins import RANDOM_STANDIN_NOTE
    from dcbench_tesla.profiling.sweep import SWEEP_NAME, plan_points, run_sweep

    methods = parse_list(kw["methods"], "--methods")
    if kw["dataset"] and kw["datasets"]:
        raise UserError("give --dataset or --datasets, not both")
    datasets = parse_list(kw["datasets"] or kw["dataset"] or "cifar100", "--datasets")
    options = parse_set(kw["set_pairs"])
    _check_methods(methods, options)
    specs = [dataset_spec(name) for name in datasets]  # unknown names: UserError with suggestions
    steps = parse_steps(kw["steps"])
    for spec in specs:
        if not spec.fixed_shape:
            raise UserError(
                f"dataset {spec.name!r} has no fixed image shape; the profiler needs one (see 'dcbench ls datasets')"
            )
    for spec in specs:
        images = spec.num_classes * kw["ipc"]
        if kw["batch_syn"] > images:
            raise UserError(
                f"--batch-syn {kw['batch_syn']} is larger than the synthetic set of {spec.name} "
                f"({spec.num_classes} classes x ipc {kw['ipc']} = {images} images); lower it or raise --ipc"
            )
    device = str(resolve_device(kw["device"]))
    output: Path = kw["output"] or default_output(datasets, device)

    points = plan_points(
        methods,
        datasets,
        steps,
        batch_syn=kw["batch_syn"],
        ipc=kw["ipc"],
        iterations=kw["iterations"],
        warmup=kw["warmup"],
        device=device,
        seed=kw["seed"],
        threads=kw["threads"],
        options=options,
    )
    settings = {
        "options": options,
        "methods": methods,
        "datasets": datasets,
        "steps": steps,
        "batch_syn": kw["batch_syn"],
        "ipc": kw["ipc"],
        "iterations": kw["iterations"],
        "warmup": kw["warmup"],
        "device": device,
        "threads": kw["threads"],
        "seed": kw["seed"],
    }
    resume = _check_output(output, kw["overwrite"], settings)
    command = _command_line(click.get_current_context(), kw)
    if kw["overwrite"] and output.is_dir():
        _clear_previous(output)
    write_json_atomic(output / SWEEP_NAME, {"settings": settings, "command": command})
    state = "resuming the interrupted sweep in" if resume else "into"
    click.echo(f"profiling {len(points)} points {state} {output} (each in a fresh process)")
    click.echo(RANDOM_STANDIN_NOTE)
    with executor_from_flags(kw):
        frame = run_sweep(
            points,
            output,
            command=command,
            settings=settings,
            timeout_s=kw["timeout_s"],
            echo=click.echo,
            table_steps=kw["table_steps"],
            resume=resume,
        )
    counts = frame["status"].value_counts().to_dict()
    click.echo(f"done: {counts}; see {output / 'profile.md'}")


@command("plot")
@click.argument("directory", required=False, type=PATH)
@click.option(
    "--csv",
    "csv_path",
    type=PATH,
    default=None,
    help="A profile CSV [DIRECTORY/profile.csv].",
)
@click.option(
    "--output",
    type=PATH,
    default=None,
    help="Where to write [DIRECTORY, or next to --csv].",
)
@click.option(
    "--table-steps",
    type=Bounded(int, 1, 100_000),
    default=None,
    help="Steps of Table 5 / Figure 3 [50 if swept, else the largest].",
)
@click.option("--linear-y", is_flag=True, help="Memory on a linear axis in Figure 2 [log scale].")
def plot_command(
    directory: Path | None, csv_path: Path | None, output: Path | None, table_steps: int | None, linear_y: bool
) -> None:
    """Redraw the figures and Markdown tables of a profile from its CSV."""
    import json

    from dcbench_tesla.profiling.report import load_csv, write_reports
    from dcbench_tesla.profiling.sweep import CSV_NAME, PROVENANCE_NAME

    if csv_path is None:
        if directory is None:
            raise UserError("give a profile DIRECTORY or --csv FILE")
        csv_path = directory / CSV_NAME
    if not csv_path.is_file():
        raise UserError(f"no profile CSV at {str(csv_path)!r}; run 'dcbench profile --output DIR' first")
    output = output or directory or csv_path.parent
    try:
        frame = load_csv(csv_path)
    except Exception as exc:
        raise UserError(f"cannot read {str(csv_path)!r} as a profile CSV: {type(exc).__name__}: {exc}") from None
    missing = {"method", "dataset", "steps", "status", "device", "batch_syn", "ipc"} - set(frame.columns)
    if missing:
        raise UserError(f"{str(csv_path)!r} is not a profile CSV: missing columns {sorted(missing)}")
    provenance_path = csv_path.parent / PROVENANCE_NAME
    provenance = json.loads(provenance_path.read_text(encoding="utf-8")) if provenance_path.is_file() else None
    written = write_reports(frame, output, provenance, table_steps=table_steps, log_y=not linear_y)
    click.echo(f"wrote {written['markdown']} and {len(written['figures'])} figures")
