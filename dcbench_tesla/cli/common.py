"""What every subcommand shares: the one error adapter, bounded option types, the list and ``--set`` parsers.

Importing this module imports click only (no torch), so ``dcbench --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dcbench_tesla.checks import (  # the bounds, said in the help of the options that use them
    MAX_EPOCHS,
    MAX_EVAL_LR,
    MAX_IPC,
    MAX_ITERATIONS,
    MAX_MODELS,
    MAX_SEED,
    MAX_THREADS,
)
from dcbench_tesla.errors import UserError


class CliError(click.ClickException):
    """A user mistake as one line on stderr (``Error: ...``) and its exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def as_cli_error(exc: BaseException) -> CliError:
    """The one adapter: a UserError, a bad parameter or Ctrl-C as a one-line CLI error.

    A message that quotes a multi-line text (a library's exception) is joined into one line.
    """
    if isinstance(exc, UserError):
        return CliError(" ".join(line.strip() for line in str(exc).splitlines() if line.strip()), exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted (Ctrl-C); nothing half-written is left behind", 130)
    if isinstance(exc, click.UsageError):
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return CliError(exc.format_message() + where, 2)
    raise TypeError(f"not a user-facing error: {type(exc).__name__}")


class DcbenchCommand(click.Command):
    """A command whose user mistakes end as one line and exit code 2 (130 for Ctrl-C)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:  # noqa: D102
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise as_cli_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:  # noqa: D102
        try:
            return super().invoke(ctx)
        except (UserError, KeyboardInterrupt) as exc:
            raise as_cli_error(exc) from None


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``click.command`` with :class:`DcbenchCommand` (every subcommand is declared with this)."""
    return click.command(name, cls=DcbenchCommand, **kwargs)


class Bounded(click.ParamType):
    """An int or a finite float within ``[low, high]`` (``low`` excluded when ``open_low``).

    Args:
        kind: ``int`` or ``float``.
        low: Smallest value.
        high: Largest value.
        open_low: Exclude ``low`` itself (for "positive" floats).
    """

    def __init__(self, kind: type, low: float, high: float, open_low: bool = False) -> None:
        self.kind, self.low, self.high, self.open_low = kind, low, high, open_low
        self.name = "integer" if kind is int else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:  # noqa: D102
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if self.kind is float and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        below = number <= self.low if self.open_low else number < self.low
        if below or number > self.high:
            low = f"above {self._show(self.low)}" if self.open_low else f"at least {self._show(self.low)}"
            self.fail(f"must be {low} and at most {self._show(self.high)}, got {value}", param, ctx)
        return number

    def _show(self, bound: float) -> str:
        return str(int(bound)) if self.kind is int else f"{bound:g}"


SEED = Bounded(int, 0, MAX_SEED)
IPC = Bounded(int, 1, MAX_IPC)
ITERATIONS = Bounded(int, 0, MAX_ITERATIONS)
MODELS_PER_ARCH = Bounded(int, 1, MAX_MODELS)
EPOCHS = Bounded(int, 1, MAX_EPOCHS)
THREADS = Bounded(int, 1, MAX_THREADS)
EVERY = Bounded(int, 0, MAX_ITERATIONS)
EVAL_LR = Bounded(float, 0.0, MAX_EVAL_LR, open_low=True)
IMAGE_SIZE = Bounded(int, 4, 512)
WEIGHT = Bounded(float, 0.0, 1.0)
PATH = click.Path(path_type=Path)


def parse_list(value: str | None, flag: str) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (duplicates dropped, order kept); None stays None.

    Raises:
        UserError: an empty list.
    """
    if value is None:
        return None
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not items:
        raise UserError(f"{flag} expects a comma-separated list, got {value!r}")
    return items


def parse_ints(value: str | None, flag: str, low: int = 1, high: int = MAX_IPC) -> list[int] | None:
    """``"1,10,50"`` -> ``[1, 10, 50]``.

    Raises:
        UserError: an entry that is not an integer within ``low..high``.
    """
    items = parse_list(value, flag)
    if items is None:
        return None
    try:
        numbers = [int(v) for v in items]
    except ValueError:
        numbers = []
    if not numbers or any(not low <= n <= high for n in numbers):
        kind = "positive integers" if low == 1 else "integers"
        raise UserError(f"{flag} expects a comma-separated list of {kind} ({low}..{high}), got {value!r}")
    return numbers


def parse_set(pairs: tuple[str, ...] | list[str], scoped: bool = False) -> dict[str, str]:
    """Parse repeated ``--set KEY=VALUE`` flags (``METHOD.KEY=VALUE`` too when ``scoped``).

    Dashes in keys become underscores (``--set lr-img=5`` is ``lr_img``); a scope keeps its name.

    Raises:
        UserError: a pair without ``=`` or without a key.
    """
    parsed: dict[str, str] = {}
    example = "--set mtt.lr_img=100" if scoped else "--set lr_img=100"
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        scope, dot, name = key.rpartition(".") if scoped else ("", "", key)
        if not sep or not name or (dot and not scope) or (not scoped and "." in key):
            form = "KEY=VALUE or METHOD.KEY=VALUE" if scoped else "KEY=VALUE"
            raise UserError(f"--set expects {form}, got {pair!r} (for example {example})")
        parsed[f"{scope}{dot}{name.replace('-', '_')}"] = value.strip()
    return parsed


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--device``."""
    return click.option("--device", default=None, help="cpu, cuda or cuda:N [cuda when present].")(func)


def threads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--threads``."""
    return click.option(
        "--threads", type=THREADS, default=None, help=f"Torch intra-op threads (1..{MAX_THREADS}) [torch's default]."
    )(func)


def data_root_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-root``."""
    return click.option(
        "--data-root",
        type=PATH,
        default=None,
        help="Directory holding dataset folders, or a dataset's own folder/file [$DCBENCH_DATA].",
    )(func)


def image_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--image-size``."""
    return click.option(
        "--image-size", type=IMAGE_SIZE, default=None, help="Image side (4..512) for datasets that resize [32]."
    )(func)


def evaluation_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--eval-models``, ``--protocol``, ``--num-eval``, ``--eval-epochs``."""
    options = [
        click.option(
            "--eval-models", default=None, help="Comma-separated architectures to evaluate on [dataset default]."
        ),
        click.option(
            "--protocol", default=None, help="Evaluation protocol (see 'dcbench ls protocols') [dataset default]."
        ),
        click.option(
            "--num-eval",
            type=MODELS_PER_ARCH,
            default=None,
            help=f"Models trained per architecture (1..{MAX_MODELS}) [protocol's: 5].",
        ),
        click.option(
            "--eval-epochs",
            type=EPOCHS,
            default=None,
            help=f"Epochs per evaluation model (1..{MAX_EPOCHS}) [protocol's].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def eval_lr_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--eval-lr``."""
    return click.option(
        "--eval-lr",
        type=EVAL_LR,
        default=None,
        help=f"Evaluation lr (0 < lr <= {MAX_EVAL_LR:g}) [the set's learned step size when its method "
        "evaluates with it, else the method's fixed lr, else the protocol's].",
    )(func)


def yes_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--yes``."""
    return click.option(
        "--yes", is_flag=True, help="Run even when the estimated cost is far above the dataset's config cards."
    )(func)


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-progress``."""
    return click.option("--no-progress", is_flag=True, help="Hide progress bars.")(func)


def executor_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--executor`` (default ``$DCBENCH_EXECUTOR``, else local) and ``--ray-address``.

    The command opens the executor with :func:`executor_from_flags` around its work.
    """
    options = [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            envvar="DCBENCH_EXECUTOR",
            show_envvar=True,
            help="Where the tasks run (experts, cells, profile points, evaluation models): local (this "
            "process, one after another) or ray (a Ray cluster; pip install 'dcbench-tesla[ray]') [local].",
        ),
        click.option(
            "--ray-address",
            default=None,
            metavar="ADDR",
            help="With --executor ray: 'auto' joins the cluster started on this machine with 'ray start', "
            "HOST:PORT joins that one [start a local Ray instance].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def executor_from_flags(kw: dict[str, Any], log_dir: Path | None = None) -> Any:
    """The executor ``--executor``/``--ray-address`` ask for, as a context manager that makes it ambient.

    Pops both flags from ``kw``; the tasks use ``kw["threads"]`` (``--threads``) when there is one.

    Raises:
        UserError: ``--ray-address`` without Ray, or Ray not installed.
    """
    from dcbench_tesla.executors import open_executor

    return open_executor(kw.pop("executor"), kw.pop("ray_address"), threads=kw.get("threads"), log_dir=log_dir)


def fair_evaluation_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-real`` and ``--ddrs-weight`` (the label-robust scores beside every result)."""
    options = [
        click.option(
            "--real/--no-real",
            default=None,
            help="Evaluate the whole training pool with hard labels (acc_real_hard: HLR and DDRS need it; "
            "computed once per dataset, model and protocol, then cached) [only when already cached: the "
            "header says what computing it costs].",
        ),
        click.option(
            "--ddrs-weight",
            type=WEIGHT,
            default=0.5,
            show_default=True,
            help="w of DDRS = (e^a - e^-1)/(e - e^-1), a = w IOR - (1 - w) HLR (0..1).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
